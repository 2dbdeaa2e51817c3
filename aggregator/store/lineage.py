"""Lineage (tables ``artifacts``, ``runs``, ``used``, ``generated``, and the lineage each threat
message keeps in its own row, :mod:`aggregator.store.compact_lineage`): recording runs, and the
walks up the graph (what an artifact came from) and down it (what came of it).

Every question is answered from both sources and the answers merged, so a caller never knows
which rows are real and which are derived. What a message or a notification records is decided
in :mod:`aggregator.provenance`."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal

from aggregator.store import compact_lineage as compact
from aggregator.store.backend import is_postgres
from aggregator.store.models import (
    ArtifactRow,
    GeneratedRow,
    NewArtifact,
    NewRun,
    RunRow,
    UsedRow,
)
from aggregator.store.schema import Connection, insert_values

Direction = Literal["upstream", "downstream"]
_CHUNK = 400


def _meta(value: dict[str, Any] | None) -> str:
    return json.dumps(value, sort_keys=True) if value else "{}"


def _chunks(values: Sequence[Any]) -> Iterator[tuple[list[Any], str]]:
    for start in range(0, len(values), _CHUNK):
        chunk = list(values[start : start + _CHUNK])
        yield chunk, ",".join("?" * len(chunk))


# recording ---------------------------------------------------------------------------------------
def add_artifacts(conn: Connection, artifacts: Sequence[NewArtifact]) -> None:
    """Record artifacts (idempotent: the first record of an id is kept).

    PostgreSQL: in the order of their ids. A batch inserting an id that another batch beside
    it inserted and has not committed yet (a model, rules, config or code version new to the
    store) waits for that one to commit; in one order, two batches never wait on each other."""
    rows = [(a.id, a.kind, a.created_ts, _meta(a.meta)) for a in artifacts]
    if is_postgres(conn):
        rows.sort(key=lambda r: r[0])
    insert_values(
        conn,
        "INSERT INTO artifacts (id, kind, created_ts, meta_json) VALUES",
        rows,
        then="ON CONFLICT (id) DO NOTHING",
    )


_INSERT_RUN = (
    "INSERT INTO runs (kind, lineage_id, agent_id, code_version, at_ts, meta_json) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)


def add_runs(conn: Connection, runs: Sequence[NewRun]) -> list[int]:
    """Record runs with what each used and generated (those artifacts must exist); returns
    their ids. What they used and generated goes in one statement each, for all of them."""
    run_ids: list[int] = []
    used: list[tuple[int, str, str]] = []
    generated: list[tuple[int, str]] = []
    metas: dict[int, str] = {}  # the runs of one frame share one meta dict: serialise it once
    postgres = is_postgres(conn)  # no lastrowid there: RETURNING id
    insert_run = _INSERT_RUN + (" RETURNING id" if postgres else "")
    for run in runs:
        meta = metas.get(id(run.meta))
        if meta is None:
            meta = metas[id(run.meta)] = _meta(run.meta)
        cur = conn.execute(
            insert_run,
            (run.kind, run.lineage_id, run.agent_id, run.code_version, run.at_ts, meta),
        )
        run_id = int(cur.fetchone()[0] if postgres else cur.lastrowid or 0)
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


def reserve_runs(conn: Connection, count: int) -> int:
    """Take ``count`` run ids from the sequence of ``runs`` for runs kept in message rows
    (:mod:`aggregator.store.compact_lineage`); returns the first. Runs inserted later get
    later ids, as if these had been inserted. (PostgreSQL: the identity sequence of ``runs``,
    moved with ``setval`` by ``secagg_reserve_runs`` (:func:`.pg_schema.p004_finer_write_locks`)
    under a lock of its own: the ingest's batches reserve side by side, never the same ids.
    Runs inserted with the sequence's own ids (:func:`add_runs`) are inserted under the
    exclusive write lock, when no batch reserves.)"""
    if is_postgres(conn):
        (first,) = conn.execute("SELECT secagg_reserve_runs(?)", (count,)).fetchone()
        return int(first)
    row = conn.execute(
        "UPDATE sqlite_sequence SET seq = MAX(seq, (SELECT COALESCE(MAX(id), 0) FROM runs)) + ? "
        "WHERE name = 'runs' RETURNING seq",
        (count,),
    ).fetchone()
    if row is None:  # no run was ever inserted: the sequence has no row yet
        (top,) = conn.execute("SELECT COALESCE(MAX(id), 0) FROM runs").fetchone()
        conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('runs', ?)", (top + count,))
        return int(top) + 1
    return int(row[0]) - count + 1


# reading: artifacts ------------------------------------------------------------------------------
def _first_per_key(found: Iterable[compact.MessageLineage], kind: str) -> dict[str, ArtifactRow]:
    rows: dict[str, ArtifactRow] = {}
    for m in found:  # in the order they were stored: the first record is kept
        artifact = m.artifact(kind)
        rows.setdefault(artifact.id, artifact)
    return rows


def artifacts(conn: Connection, artifact_ids: Sequence[str]) -> list[ArtifactRow]:
    """These artifacts, in the order given (those that exist)."""
    found: dict[str, ArtifactRow] = {}
    for chunk, marks in _chunks(artifact_ids):
        for r in conn.execute(
            f"SELECT id, kind, created_ts, meta_json FROM artifacts WHERE id IN ({marks})", chunk
        ):
            found[r[0]] = ArtifactRow(id=r[0], kind=r[1], created_ts=r[2], meta=json.loads(r[3]))
    missing: dict[str, list[str]] = {}
    for a in artifact_ids:
        kind, _, key = a.partition(":")
        if a not in found and kind in compact.DERIVED_KINDS:
            missing.setdefault(kind, []).append(key)
    for kind, keys in missing.items():
        found.update(_first_per_key(compact.by_key(conn, kind, keys), kind))
    return [found[a] for a in artifact_ids if a in found]


def artifact_exists(conn: Connection, artifact_id: str) -> bool:
    return bool(artifacts(conn, [artifact_id]))


def ids_with_prefix(conn: Connection, prefix: str, *, limit: int) -> list[str]:
    """Artifact ids that start with ``prefix`` (index range scans), in order, at most
    ``limit``."""
    rows = conn.execute(
        "SELECT id FROM artifacts WHERE id >= ? AND id < ? ORDER BY id LIMIT ?",
        (prefix, prefix + "\U0010ffff", limit),
    )
    found = {str(r[0]) for r in rows}
    kind, _, key = prefix.partition(":")
    if kind in compact.DERIVED_KINDS:
        found.update(compact.key_range(conn, kind, key, limit=limit))
    return sorted(found)[:limit]


# reading: runs and edges -------------------------------------------------------------------------
def _run(r: Sequence[Any]) -> RunRow:
    return RunRow(
        id=r[0],
        kind=r[1],
        lineage_id=r[2],
        agent_id=r[3],
        code_version=r[4],
        at_ts=r[5],
        meta=json.loads(r[6]),
    )


def runs(conn: Connection, run_ids: Iterable[int]) -> list[RunRow]:
    """These runs, by id."""
    ids = sorted(set(run_ids))
    found: dict[int, RunRow] = {}
    for chunk, marks in _chunks(ids):
        for r in conn.execute(
            "SELECT id, kind, lineage_id, agent_id, code_version, at_ts, meta_json FROM runs "
            f"WHERE id IN ({marks})",
            chunk,
        ):
            found[r[0]] = _run(r)
    for run_id, m in compact.by_run(conn, [i for i in ids if i not in found]).items():
        found[run_id] = m.run(run_id)
    return [found[i] for i in ids if i in found]


def edges_of_runs(
    conn: Connection, run_ids: Iterable[int]
) -> tuple[list[UsedRow], list[GeneratedRow]]:
    """What these runs used and generated, by run then artifact id."""
    ids = sorted(set(run_ids))
    used: list[UsedRow] = []
    generated: list[GeneratedRow] = []
    for chunk, marks in _chunks(ids):
        used += [
            UsedRow(*r)
            for r in conn.execute(
                f"SELECT run_id, artifact_id, role FROM used WHERE run_id IN ({marks})", chunk
            )
        ]
        generated += [
            GeneratedRow(*r)
            for r in conn.execute(
                f"SELECT run_id, artifact_id FROM generated WHERE run_id IN ({marks})", chunk
            )
        ]
    derived = compact.by_run(conn, ids)
    events = compact.event_ids_of(conn, sorted({m.message_id for m in derived.values()}))
    for run_id, m in derived.items():
        used += m.used(run_id)
        generated += m.generated(run_id, events[m.message_id])
    used.sort(key=lambda u: (u.run_id, u.artifact_id))
    generated.sort(key=lambda g: (g.run_id, g.artifact_id))
    return used, generated


def generators(
    conn: Connection, artifact_ids: Sequence[str], *, limit: int | None = None
) -> list[GeneratedRow]:
    """The runs that generated these artifacts, by artifact (in the order given) then run id;
    ``limit``: at most that many per artifact (the first by run id)."""
    found: dict[str, set[int]] = {a: set() for a in artifact_ids}
    for chunk, marks in _chunks(artifact_ids):
        for r in conn.execute(
            f"SELECT artifact_id, run_id FROM generated WHERE artifact_id IN ({marks})", chunk
        ):
            found[r[0]].add(int(r[1]))
    wanted: dict[str, list[str]] = {}
    for a in artifact_ids:
        kind, _, key = a.partition(":")
        wanted.setdefault(kind, []).append(key)
    offset = {kind: i for i, (_, _, made) in enumerate(compact.MESSAGE_RUNS) for kind in made}
    for kind, keys in wanted.items():
        if kind == "event":
            ids = [int(k) for k in keys if k.isdigit()]
            for event_id, m in compact.by_event(conn, ids):
                found[f"event:{event_id}"].add(m.run_base + offset["event"])
        elif kind in offset:
            for m in compact.by_key(conn, kind, keys):
                for a in m.ids(kind):
                    if a in found:
                        found[a].add(m.run_base + offset[kind])
    out: list[GeneratedRow] = []
    for a in artifact_ids:
        ids_ = sorted(found[a])
        out += [GeneratedRow(run_id, a) for run_id in (ids_ if limit is None else ids_[:limit])]
    return out


def users(
    conn: Connection, artifact_ids: Sequence[str], *, limit: int | None = None
) -> list[UsedRow]:
    """The runs that used these artifacts (with the role), by artifact (in the order given)
    then run id; ``limit``: at most that many runs per artifact (the first by run id)."""
    found: dict[str, dict[int, str]] = {a: {} for a in artifact_ids}
    for chunk, marks in _chunks(artifact_ids):
        for r in conn.execute(
            f"SELECT artifact_id, run_id, role FROM used WHERE artifact_id IN ({marks})", chunk
        ):
            found[r[0]][int(r[1])] = str(r[2])
    per_kind: dict[str, list[str]] = {}
    for a in artifact_ids:
        kind, _, key = a.partition(":")
        per_kind.setdefault(kind, []).append(key)
    for kind, keys in per_kind.items():
        if kind not in compact.USED_KINDS:
            continue  # an event, notification, plot...: used by runs that are rows of the tables
        if kind == "code":
            messages = [m for k in keys for m in compact.by_code(conn, k, limit=limit)]
        else:
            messages = compact.by_key(
                conn,
                kind,
                keys,
                limit=None if limit is None or len(keys) > 1 else limit,
            )
        for m in messages:
            for i in range(len(compact.MESSAGE_RUNS)):
                for u in m.used(m.run_base + i):
                    if u.artifact_id in found:
                        found[u.artifact_id].setdefault(u.run_id, u.role)
    out: list[UsedRow] = []
    for a in artifact_ids:
        run_ids = sorted(found[a])
        if limit is not None:
            run_ids = run_ids[:limit]
        out += [UsedRow(run_id, a, found[a][run_id]) for run_id in run_ids]
    return out


# walks -------------------------------------------------------------------------------------------
def _step(
    conn: Connection, frontier: list[str], *, direction: Direction, limit: int | None
) -> tuple[list[int], list[str], bool]:
    """One level of a walk: the runs that generated (upstream) or used (downstream) the
    frontier's artifacts, the artifacts those runs used (upstream) or generated (downstream) in
    the order reached, and whether ``limit`` (runs per artifact) may have cut the runs."""
    if direction == "upstream":
        links = [(g.artifact_id, g.run_id) for g in generators(conn, frontier, limit=limit)]
    else:
        links = [(u.artifact_id, u.run_id) for u in users(conn, frontier, limit=limit)]
    counts: dict[str, int] = {}
    for a, _ in links:
        counts[a] = counts.get(a, 0) + 1
    cut = limit is not None and any(n >= limit for n in counts.values())
    run_ids = list(dict.fromkeys(run_id for _, run_id in links))
    used, generated = edges_of_runs(conn, run_ids)
    by_run: dict[int, list[str]] = {}
    for edge in used if direction == "upstream" else generated:
        by_run.setdefault(edge.run_id, []).append(edge.artifact_id)
    reached = [a for run_id in run_ids for a in by_run.get(run_id, [])]
    return run_ids, reached, cut


def walk(
    conn: Connection, artifact_id: str, *, direction: Direction, count: int | None = None
) -> tuple[list[str], list[int]]:
    """The artifact and every artifact upstream (what it came from) or downstream (what came
    of it), in the order a breadth-first walk reaches them (an artifact always after one it came
    from), and the runs on the way: upstream those that generated, downstream those that used
    an artifact of the walk. ``count``: stop once that many artifacts are found (the runs are
    then those of the levels walked); a walk of a huge graph then costs what it returns."""
    order = [artifact_id]
    seen = {artifact_id}
    runs_on_way: dict[int, None] = {}
    frontier = [artifact_id]
    while frontier and (count is None or len(order) < count):
        limit = None if count is None else count - len(order) + len(seen) + 16
        while True:
            run_ids, reached, cut = _step(conn, frontier, direction=direction, limit=limit)
            new = [a for a in dict.fromkeys(reached) if a not in seen]
            if limit is None or not cut or count is None or len(order) + len(new) >= count:
                break
            limit *= 4  # the runs found gave too few new artifacts: look further
        runs_on_way.update(dict.fromkeys(run_ids))
        order += new
        seen.update(new)
        frontier = new
    return (order if count is None else order[:count]), sorted(runs_on_way)


def closure_ids(conn: Connection, artifact_id: str, *, direction: Direction) -> set[str]:
    """The artifact and every artifact upstream or downstream of it."""
    return set(walk(conn, artifact_id, direction=direction)[0])


def closure_prefix(
    conn: Connection, artifact_id: str, *, direction: Direction, count: int
) -> list[str]:
    """The first ``count`` artifacts of the closure in the order the walk reaches them (the
    artifact first; an artifact always after one it came from, upstream or down). The walk
    stops there: a page of a huge graph costs what the page holds."""
    return walk(conn, artifact_id, direction=direction, count=count)[0]


def closure_runs(conn: Connection, artifact_id: str, *, direction: Direction) -> list[RunRow]:
    """The runs on the way: upstream those that generated, downstream those that used an
    artifact of the closure."""
    return runs(conn, walk(conn, artifact_id, direction=direction)[1])


def closure_artifacts(
    conn: Connection, artifact_id: str, *, direction: Direction
) -> list[ArtifactRow]:
    """The artifacts of the closure, by id."""
    return artifacts(conn, sorted(closure_ids(conn, artifact_id, direction=direction)))


def runs_generating(conn: Connection, artifact_ids: Sequence[str], *, limit: int) -> list[RunRow]:
    """The runs that generated these artifacts, by id, at most ``limit + 1`` (one more tells
    that there were more)."""
    found = sorted({g.run_id for g in generators(conn, artifact_ids, limit=limit + 1)})
    return runs(conn, found[: limit + 1])
