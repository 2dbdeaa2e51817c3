"""Lineage (tables ``artifacts``, ``runs``, ``used``, ``generated``): recording runs and the
recursive queries up the graph (what an artifact came from) and down it (what came of it).
What a message or a notification records is decided in :mod:`aggregator.provenance`."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from aggregator.store.models import (
    ArtifactRow,
    GeneratedRow,
    NewArtifact,
    NewRun,
    RunRow,
    UsedRow,
)
from aggregator.store.schema import Connection

Direction = Literal["upstream", "downstream"]

_CLOSURE = {
    "upstream": """
        WITH RECURSIVE closure(artifact_id) AS (
            SELECT ?
            UNION
            SELECT u.artifact_id FROM closure
            JOIN generated g ON g.artifact_id = closure.artifact_id
            JOIN used u ON u.run_id = g.run_id
        )""",
    "downstream": """
        WITH RECURSIVE closure(artifact_id) AS (
            SELECT ?
            UNION
            SELECT g.artifact_id FROM closure
            JOIN used u ON u.artifact_id = closure.artifact_id
            JOIN generated g ON g.run_id = u.run_id
        )""",
}
# upstream: the runs that generated the closure's artifacts; downstream: the runs that used them
_LINK = {"upstream": "generated", "downstream": "used"}
_CHUNK = 500


def _meta(value: dict[str, Any] | None) -> str:
    return json.dumps(value, sort_keys=True) if value else "{}"


def add_artifacts(conn: Connection, artifacts: Sequence[NewArtifact]) -> None:
    """Record artifacts (idempotent: the first record of an id is kept)."""
    conn.executemany(
        "INSERT INTO artifacts (id, kind, created_ts, meta_json) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (id) DO NOTHING",
        [(a.id, a.kind, a.created_ts, _meta(a.meta)) for a in artifacts],
    )


def add_runs(conn: Connection, runs: Sequence[NewRun]) -> list[int]:
    """Record runs with what each used and generated (those artifacts must exist); returns
    their ids. What they used and generated goes in one statement each, for all of them."""
    run_ids: list[int] = []
    used: list[tuple[int, str, str]] = []
    generated: list[tuple[int, str]] = []
    metas: dict[int, str] = {}  # the runs of one frame share one meta dict: serialise it once
    for run in runs:
        meta = metas.get(id(run.meta))
        if meta is None:
            meta = metas[id(run.meta)] = _meta(run.meta)
        cur = conn.execute(
            "INSERT INTO runs (kind, lineage_id, agent_id, code_version, at_ts, meta_json) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (run.kind, run.lineage_id, run.agent_id, run.code_version, run.at_ts, meta),
        )
        run_id = int(cur.lastrowid or 0)
        run_ids.append(run_id)
        used += [(run_id, aid, role) for aid, role in run.used]
        generated += [(run_id, aid) for aid in run.generated]
    conn.executemany(
        "INSERT INTO used (run_id, artifact_id, role) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        used,
    )
    if generated:
        conn.executemany(
            "INSERT INTO generated (run_id, artifact_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
            generated,
        )
    return run_ids


def add_run(conn: Connection, run: NewRun) -> int:
    """Record one run (see :func:`add_runs`); returns its id."""
    (run_id,) = add_runs(conn, [run])
    return run_id


def artifact_exists(conn: Connection, artifact_id: str) -> bool:
    return (
        conn.execute("SELECT 1 FROM artifacts WHERE id = ?", (artifact_id,)).fetchone() is not None
    )


def ids_with_prefix(conn: Connection, prefix: str, *, limit: int) -> list[str]:
    """Artifact ids that start with ``prefix`` (an index range scan), in order, at most
    ``limit``."""
    rows = conn.execute(
        "SELECT id FROM artifacts WHERE id >= ? AND id < ? ORDER BY id LIMIT ?",
        (prefix, prefix + "\U0010ffff", limit),
    )
    return [str(r[0]) for r in rows]


def closure_ids(conn: Connection, artifact_id: str, *, direction: Direction) -> set[str]:
    """The artifact and every artifact upstream or downstream of it."""
    sql = _CLOSURE[direction] + " SELECT artifact_id FROM closure"
    return {str(r[0]) for r in conn.execute(sql, (artifact_id,))}


def closure_prefix(
    conn: Connection, artifact_id: str, *, direction: Direction, count: int
) -> list[str]:
    """The first ``count`` artifacts of the closure in the order the walk reaches them (the
    artifact first; an artifact always after one it came from, upstream or down). The walk
    stops there: a page of a huge graph costs what the page holds."""
    sql = (
        _CLOSURE[direction].replace("\n        )", "\n            LIMIT ?\n        )", 1)
        + " SELECT artifact_id FROM closure"
    )
    return [str(r[0]) for r in conn.execute(sql, (artifact_id, count))]


def runs_generating(conn: Connection, artifact_ids: Sequence[str], *, limit: int) -> list[RunRow]:
    """The runs that generated these artifacts, by id, at most ``limit``."""
    runs: dict[int, RunRow] = {}
    for start in range(0, len(artifact_ids), _CHUNK):
        chunk = list(artifact_ids[start : start + _CHUNK])
        marks = ",".join("?" * len(chunk))
        rows = conn.execute(
            "SELECT DISTINCT r.id, r.kind, r.lineage_id, r.agent_id, r.code_version, r.at_ts, "
            f"r.meta_json FROM runs r JOIN generated g ON g.run_id = r.id "
            f"WHERE g.artifact_id IN ({marks}) ORDER BY r.id LIMIT ?",
            [*chunk, limit + 1],
        )
        for r in rows:
            runs[r[0]] = RunRow(
                id=r[0],
                kind=r[1],
                lineage_id=r[2],
                agent_id=r[3],
                code_version=r[4],
                at_ts=r[5],
                meta=json.loads(r[6]),
            )
    return [runs[k] for k in sorted(runs)][: limit + 1]


def artifacts(conn: Connection, artifact_ids: Sequence[str]) -> list[ArtifactRow]:
    """These artifacts, in the order given."""
    found: dict[str, ArtifactRow] = {}
    for start in range(0, len(artifact_ids), _CHUNK):
        chunk = list(artifact_ids[start : start + _CHUNK])
        marks = ",".join("?" * len(chunk))
        for r in conn.execute(
            f"SELECT id, kind, created_ts, meta_json FROM artifacts WHERE id IN ({marks})", chunk
        ):
            found[r[0]] = ArtifactRow(id=r[0], kind=r[1], created_ts=r[2], meta=json.loads(r[3]))
    return [found[a] for a in artifact_ids if a in found]


def closure_runs(conn: Connection, artifact_id: str, *, direction: Direction) -> list[RunRow]:
    """The runs on the way: upstream those that generated, downstream those that used an
    artifact of the closure."""
    rows = conn.execute(
        _CLOSURE[direction]
        + " SELECT DISTINCT r.id, r.kind, r.lineage_id, r.agent_id, r.code_version, r.at_ts, "
        f"r.meta_json FROM runs r JOIN {_LINK[direction]} l ON l.run_id = r.id "
        "WHERE l.artifact_id IN (SELECT artifact_id FROM closure) ORDER BY r.id",
        (artifact_id,),
    )
    return [
        RunRow(
            id=r[0],
            kind=r[1],
            lineage_id=r[2],
            agent_id=r[3],
            code_version=r[4],
            at_ts=r[5],
            meta=json.loads(r[6]),
        )
        for r in rows
    ]


def closure_artifacts(
    conn: Connection, artifact_id: str, *, direction: Direction
) -> list[ArtifactRow]:
    rows = conn.execute(
        _CLOSURE[direction] + " SELECT a.id, a.kind, a.created_ts, a.meta_json FROM artifacts a "
        "WHERE a.id IN (SELECT artifact_id FROM closure) ORDER BY a.id",
        (artifact_id,),
    )
    return [ArtifactRow(id=r[0], kind=r[1], created_ts=r[2], meta=json.loads(r[3])) for r in rows]


def edges_of_runs(
    conn: Connection, run_ids: Iterable[int]
) -> tuple[list[UsedRow], list[GeneratedRow]]:
    """What these runs used and generated, by run then artifact id."""
    ids = list(run_ids)
    used: list[UsedRow] = []
    generated: list[GeneratedRow] = []
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        marks = ",".join("?" * len(chunk))
        used += [
            UsedRow(*r)
            for r in conn.execute(
                f"SELECT run_id, artifact_id, role FROM used WHERE run_id IN ({marks}) "
                "ORDER BY run_id, artifact_id",
                chunk,
            )
        ]
        generated += [
            GeneratedRow(*r)
            for r in conn.execute(
                f"SELECT run_id, artifact_id FROM generated WHERE run_id IN ({marks}) "
                "ORDER BY run_id, artifact_id",
                chunk,
            )
        ]
    return used, generated
