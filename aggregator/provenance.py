"""Lineage on SQLite (W3C PROV: used / wasGeneratedBy): content-addressed artifacts, the runs
that used and generated them, and recursive queries up and down the graph.

Artifact ids are typed strings: ``frame:<sha256>``, ``model:<sha256>``, ``rules:<sha256>``,
``config:<sha256>``, ``code:<version>``, ``detections:<sha256 of canonical JSON>``,
``snapshot:<sha256>``, ``message:<id>``, ``event:<id>``, ``notification:<id>``, ``plot:<sha256>``.

What one threat message records (all runs of one frame share its lineage id)::

    validate  used frame, config, code          generated snapshot (when the agent sent one)
    detect    used frame, model, config, code   generated detections
    rules     used detections, rules, code,     generated message (with the snapshot)
              snapshot
    group     used message, code (aggregator)   generated event(s)
    notify    used event, code                  generated notification
    plot      used events, code                 generated plot

Every writer here runs inside the caller's open transaction (the ingest writer's, for messages
and events), so lineage is exactly as durable as the data it describes.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

from wire.payloads import ThreatMessage

ARTIFACT_KINDS = (
    "frame",
    "model",
    "rules",
    "config",
    "code",
    "detections",
    "snapshot",
    "message",
    "event",
    "notification",
    "plot",
)
RUN_KINDS = ("validate", "detect", "rules", "group", "notify", "plot")
MAX_DEPTH = 32


class ProvenanceError(ValueError):
    """An artifact id is malformed or not known to the store."""


def parse_artifact_id(artifact_id: str) -> tuple[str, str]:
    """``"event:12"`` -> ``("event", "12")``; ProvenanceError for an unknown kind."""
    kind, sep, key = artifact_id.partition(":")
    if not sep or not key or kind not in ARTIFACT_KINDS:
        raise ProvenanceError(
            f"{artifact_id!r} is not an artifact id (kind:key, kinds: {', '.join(ARTIFACT_KINDS)})"
        )
    return kind, key


def canonical_sha256(value: object) -> str:
    """sha256 of ``value`` as canonical JSON (sorted keys, no spaces)."""
    raw = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(raw.encode()).hexdigest()


def add_artifact(
    conn: sqlite3.Connection, artifact_id: str, *, at_ts: float, meta: dict[str, Any] | None = None
) -> str:
    """Record an artifact (idempotent: the first record of an id is kept); return its id."""
    kind, _ = parse_artifact_id(artifact_id)
    conn.execute(
        "INSERT INTO artifacts (id, kind, created_ts, meta_json) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (id) DO NOTHING",
        (artifact_id, kind, at_ts, json.dumps(meta or {}, sort_keys=True)),
    )
    return artifact_id


def add_run(
    conn: sqlite3.Connection,
    *,
    kind: str,
    code_version: str,
    at_ts: float,
    used: list[tuple[str, str]],
    generated: list[str],
    lineage_id: str | None = None,
    agent_id: str | None = None,
    meta: dict[str, Any] | None = None,
) -> int:
    """Record one run: ``used`` is (artifact id, role) pairs; every artifact must exist."""
    if kind not in RUN_KINDS:
        raise ProvenanceError(f"run kind {kind!r} is not one of {RUN_KINDS}")
    cur = conn.execute(
        "INSERT INTO runs (kind, lineage_id, agent_id, code_version, at_ts, meta_json) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (kind, lineage_id, agent_id, code_version, at_ts, json.dumps(meta or {}, sort_keys=True)),
    )
    run_id = int(cur.lastrowid or 0)
    conn.executemany(
        "INSERT INTO used (run_id, artifact_id, role) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        [(run_id, aid, role) for aid, role in used],
    )
    conn.executemany(
        "INSERT INTO generated (run_id, artifact_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
        [(run_id, aid) for aid in generated],
    )
    return run_id


# what the ingest records -------------------------------------------------------------------------
@dataclass(frozen=True)
class MessageLineage:
    """The facts of one stored threat message that its lineage is made of."""

    message_id: str
    agent_id: str
    camera: str
    lineage_id: str
    frame_id: str
    frame_sha256: str
    frame_kind: str
    frame_source: str
    frame_width: int
    frame_height: int
    captured_ts: float
    code_version: str
    model_sha256: str
    rules_sha256: str
    config_sha256: str
    snapshot_sha256: str | None
    detections: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def of_message(cls, msg: ThreatMessage, *, snapshot_sha256: str | None) -> MessageLineage:
        return cls(
            message_id=msg.message_id,
            agent_id=msg.agent_id,
            camera=msg.camera,
            lineage_id=msg.lineage_id,
            frame_id=msg.frame.frame_id,
            frame_sha256=msg.frame.sha256,
            frame_kind=msg.frame.kind,
            frame_source=msg.frame.source,
            frame_width=msg.frame.width,
            frame_height=msg.frame.height,
            captured_ts=msg.frame.captured_at.timestamp(),
            code_version=msg.versions.code,
            model_sha256=msg.versions.model_sha256,
            rules_sha256=msg.versions.rules_sha256,
            config_sha256=msg.versions.config_sha256,
            snapshot_sha256=snapshot_sha256,
            detections=[d.model_dump(mode="json") for d in msg.detections],
        )

    @classmethod
    def of_row(cls, row: sqlite3.Row) -> MessageLineage:
        """From a ``messages`` row (the backfill of stores older than the lineage tables)."""
        return cls(
            message_id=row["message_id"],
            agent_id=row["agent_id"],
            camera=row["camera"],
            lineage_id=row["lineage_id"],
            frame_id=row["frame_id"],
            frame_sha256=row["frame_sha256"],
            frame_kind=row["frame_kind"],
            frame_source=row["frame_source"],
            frame_width=row["frame_width"],
            frame_height=row["frame_height"],
            captured_ts=row["captured_ts"],
            code_version=row["code_version"],
            model_sha256=row["model_sha256"],
            rules_sha256=row["rules_sha256"],
            config_sha256=row["config_sha256"],
            snapshot_sha256=row["snapshot_sha256"],
            detections=json.loads(row["detections_json"]),
        )


def record_message(conn: sqlite3.Connection, m: MessageLineage) -> str:
    """The agent's validate, detect and rules runs of one threat message; returns the message's
    artifact id. The runs are recorded from what the message carries (versions, lineage, frame)."""
    at = m.captured_ts
    frame = add_artifact(
        conn,
        f"frame:{m.frame_sha256}",
        at_ts=at,
        meta={
            "frame_id": m.frame_id,
            "kind": m.frame_kind,
            "source": m.frame_source,
            "width": m.frame_width,
            "height": m.frame_height,
            "agent_id": m.agent_id,
            "camera": m.camera,
        },
    )
    model = add_artifact(conn, f"model:{m.model_sha256}", at_ts=at)
    rules = add_artifact(conn, f"rules:{m.rules_sha256}", at_ts=at)
    config = add_artifact(
        conn, f"config:{m.config_sha256}", at_ts=at, meta={"agent_id": m.agent_id}
    )
    code = add_artifact(conn, f"code:{m.code_version}", at_ts=at)
    detections = add_artifact(
        conn,
        f"detections:{canonical_sha256(m.detections)}",
        at_ts=at,
        meta={"count": len(m.detections)},
    )
    message = add_artifact(
        conn,
        f"message:{m.message_id}",
        at_ts=at,
        meta={"agent_id": m.agent_id, "camera": m.camera, "frame_id": m.frame_id},
    )
    common: dict[str, Any] = {
        "code_version": m.code_version,
        "at_ts": at,
        "lineage_id": m.lineage_id,
        "agent_id": m.agent_id,
        "meta": {"frame_id": m.frame_id, "camera": m.camera},
    }
    validated: list[str] = []
    if m.snapshot_sha256:
        validated.append(add_artifact(conn, f"snapshot:{m.snapshot_sha256}", at_ts=at))
    add_run(
        conn,
        kind="validate",
        used=[(frame, "input"), (config, "config"), (code, "code")],
        generated=validated,
        **common,
    )
    add_run(
        conn,
        kind="detect",
        used=[(frame, "input"), (model, "model"), (config, "config"), (code, "code")],
        generated=[detections],
        **common,
    )
    add_run(
        conn,
        kind="rules",
        used=[(detections, "input"), (rules, "rules"), (code, "code")]
        + [(snap, "snapshot") for snap in validated],
        generated=[message],
        **common,
    )
    return message


def record_grouping(
    conn: sqlite3.Connection,
    *,
    message_id: str,
    event_ids: list[int],
    lineage_id: str,
    agent_id: str,
    code_version: str,
    at_ts: float,
) -> int:
    """The aggregator's group run: the message's threats went into these events."""
    code = add_artifact(conn, f"code:{code_version}", at_ts=at_ts)
    events = [add_artifact(conn, f"event:{e}", at_ts=at_ts) for e in sorted(set(event_ids))]
    return add_run(
        conn,
        kind="group",
        code_version=code_version,
        at_ts=at_ts,
        used=[(f"message:{message_id}", "input"), (code, "code")],
        generated=events,
        lineage_id=lineage_id,
        agent_id=agent_id,
    )


def backfill_message(conn: sqlite3.Connection, row: sqlite3.Row) -> None:
    """Lineage of a message stored before the lineage tables existed (migration m003)."""
    record_message(conn, MessageLineage.of_row(row))
    event_ids = [
        int(r[0])
        for r in conn.execute(
            "SELECT DISTINCT event_id FROM threats WHERE message_id = ?", (row["message_id"],)
        )
    ]
    record_grouping(
        conn,
        message_id=row["message_id"],
        event_ids=event_ids,
        lineage_id=row["lineage_id"],
        agent_id=row["agent_id"],
        code_version="unknown (backfilled)",
        at_ts=row["captured_ts"],
    )


def record_notification(
    conn: sqlite3.Connection,
    *,
    notification_id: int,
    event_id: int,
    content_sha256: str,
    code_version: str,
    channel: str,
    at_ts: float | None = None,
) -> str:
    """The notify run of one notification (inside the caller's transaction); returns its id."""
    at = time.time() if at_ts is None else at_ts
    event = add_artifact(conn, f"event:{event_id}", at_ts=at)
    code = add_artifact(conn, f"code:{code_version}", at_ts=at)
    notification = add_artifact(
        conn,
        f"notification:{notification_id}",
        at_ts=at,
        meta={"content_sha256": content_sha256, "channel": channel, "event_id": event_id},
    )
    add_run(
        conn,
        kind="notify",
        code_version=code_version,
        at_ts=at,
        used=[(event, "input"), (code, "code")],
        generated=[notification],
        meta={"channel": channel},
    )
    return notification


def record_plot(
    conn: sqlite3.Connection,
    *,
    plot_sha256: str,
    kind: str,
    query: dict[str, Any],
    event_ids: list[int],
    code_version: str,
    at_ts: float,
) -> str:
    """The plot run: which events (and code) a plot was drawn from; returns its id."""
    code = add_artifact(conn, f"code:{code_version}", at_ts=at_ts)
    events = [add_artifact(conn, f"event:{e}", at_ts=at_ts) for e in sorted(set(event_ids))]
    plot = add_artifact(
        conn, f"plot:{plot_sha256}", at_ts=at_ts, meta={"plot_kind": kind, "query": query}
    )
    add_run(
        conn,
        kind="plot",
        code_version=code_version,
        at_ts=at_ts,
        used=[*((e, "input") for e in events), (code, "code")],
        generated=[plot],
        meta={"query": query},
    )
    return plot


# queries ---------------------------------------------------------------------------------------
UPSTREAM_SQL = """
WITH RECURSIVE up(artifact_id) AS (
    SELECT ?
    UNION
    SELECT u.artifact_id FROM up
    JOIN generated g ON g.artifact_id = up.artifact_id
    JOIN used u ON u.run_id = g.run_id
)
SELECT artifact_id FROM up
"""

DOWNSTREAM_SQL = """
WITH RECURSIVE down(artifact_id) AS (
    SELECT ?
    UNION
    SELECT g.artifact_id FROM down
    JOIN used u ON u.artifact_id = down.artifact_id
    JOIN generated g ON g.run_id = u.run_id
)
SELECT artifact_id FROM down
"""


@dataclass
class Graph:
    """Nodes (artifacts and runs) and edges (``used`` and ``generated``) around one artifact."""

    root: str
    direction: str
    nodes: list[dict[str, Any]]
    edges: list[dict[str, str]]

    def as_dict(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "direction": self.direction,
            "nodes": self.nodes,
            "edges": self.edges,
        }


def _enrich(conn: sqlite3.Connection, kind: str, key: str, meta: dict[str, Any]) -> dict[str, Any]:
    """The current state of mutable artifacts (an event grows until it ends)."""
    if kind == "event" and key.isdigit():
        row = conn.execute("SELECT * FROM events WHERE id = ?", (int(key),)).fetchone()
        if row is not None:
            meta = {
                **meta,
                **{
                    k: row[k]
                    for k in ("agent_id", "camera", "rule", "label", "severity", "threat_count")
                },
                "started_ts": row["started_ts"],
                "ended_ts": row["ended_ts"],
            }
    return meta


def graph(conn: sqlite3.Connection, artifact_id: str, *, direction: str = "upstream") -> Graph:
    """Every artifact and run upstream (what it came from) or downstream (what came of it)."""
    parse_artifact_id(artifact_id)
    if direction not in ("upstream", "downstream"):
        raise ProvenanceError(f"direction must be upstream or downstream, not {direction!r}")
    if conn.execute("SELECT 1 FROM artifacts WHERE id = ?", (artifact_id,)).fetchone() is None:
        raise ProvenanceError(f"artifact {artifact_id} is not known")
    closure = UPSTREAM_SQL if direction == "upstream" else DOWNSTREAM_SQL
    ids = {r[0] for r in conn.execute(closure, (artifact_id,))}
    # upstream: the runs that generated these artifacts; downstream: the runs that used them
    link = "generated" if direction == "upstream" else "used"
    runs = conn.execute(
        f"SELECT DISTINCT r.* FROM runs r JOIN {link} l ON l.run_id = r.id "
        f"WHERE l.artifact_id IN ({closure}) "
        "ORDER BY r.id",
        (artifact_id,),
    ).fetchall()
    edges: list[dict[str, str]] = []
    for start in range(0, len(runs), 500):
        chunk = [r["id"] for r in runs[start : start + 500]]
        marks = ",".join("?" * len(chunk))
        for r in conn.execute(
            f"SELECT run_id, artifact_id, role FROM used WHERE run_id IN ({marks}) "
            "ORDER BY run_id, artifact_id",
            chunk,
        ):
            if r[1] in ids:
                edges.append({"from": f"run:{r[0]}", "to": r[1], "type": "used", "role": r[2]})
        for r in conn.execute(
            f"SELECT run_id, artifact_id FROM generated WHERE run_id IN ({marks}) "
            "ORDER BY run_id, artifact_id",
            chunk,
        ):
            if r[1] in ids:
                edges.append({"from": r[1], "to": f"run:{r[0]}", "type": "wasGeneratedBy"})
    nodes: list[dict[str, Any]] = []
    for row in conn.execute(
        f"SELECT * FROM artifacts WHERE id IN ({closure}) ORDER BY id",
        (artifact_id,),
    ):
        kind, key = parse_artifact_id(row["id"])
        nodes.append(
            {
                "id": row["id"],
                "type": "artifact",
                "kind": kind,
                "meta": _enrich(conn, kind, key, json.loads(row["meta_json"])),
            }
        )
    for r in runs:
        nodes.append(
            {
                "id": f"run:{r['id']}",
                "type": "run",
                "kind": r["kind"],
                "lineage_id": r["lineage_id"],
                "agent_id": r["agent_id"],
                "code_version": r["code_version"],
                "at_ts": r["at_ts"],
                "meta": json.loads(r["meta_json"]),
            }
        )
    return Graph(root=artifact_id, direction=direction, nodes=nodes, edges=edges)


def inputs_of(g: Graph) -> dict[str, list[str]]:
    """The upstream artifact ids of each kind (frames, models, rules, code, ...)."""
    out: dict[str, list[str]] = {}
    for node in g.nodes:
        if node["type"] == "artifact" and node["id"] != g.root:
            out.setdefault(node["kind"], []).append(node["id"])
    return out


def _label(node: dict[str, Any]) -> str:
    meta = node.get("meta") or {}
    if node["type"] == "run":
        parts = [
            f"{node['kind']} run #{node['id'].split(':', 1)[1]}",
            f"code {node['code_version']}",
        ]
        if node.get("agent_id"):
            parts.append(f"agent {node['agent_id']}")
        if node.get("lineage_id"):
            parts.append(f"lineage {node['lineage_id']}")
        return ", ".join(parts)
    kind = node["kind"]
    extra = ""
    if kind == "frame":
        extra = f" ({meta.get('kind')} {meta.get('source')}, frame id {meta.get('frame_id')})"
    elif kind == "event":
        if "rule" in meta:
            extra = (
                f" ({meta['agent_id']}/{meta['camera']} {meta['rule']} {meta['severity']}, "
                f"{meta['threat_count']} threats)"
            )
    elif kind == "notification":
        extra = f" ({meta.get('channel')}, content sha256 {meta.get('content_sha256')})"
    elif kind == "detections":
        extra = f" ({meta.get('count')} detections)"
    elif kind == "message":
        extra = f" ({meta.get('agent_id')}/{meta.get('camera')})"
    elif kind == "plot":
        extra = f" ({meta.get('plot_kind')})"
    return node["id"] + extra


def render_tree(g: Graph) -> str:
    """The upstream graph as an indented tree, with a summary of the inputs first."""
    nodes = {n["id"]: n for n in g.nodes}
    generated_by: dict[str, list[str]] = {}
    used_by_run: dict[str, list[tuple[str, str]]] = {}
    for e in g.edges:
        if e["type"] == "wasGeneratedBy":
            generated_by.setdefault(e["from"], []).append(e["to"])
        else:
            used_by_run.setdefault(e["from"], []).append((e["to"], e.get("role", "")))
    inputs = inputs_of(g)
    lines = [f"{_label(nodes[g.root])}"]
    for kind in ("model", "rules", "config", "code", "frame", "snapshot"):
        values = inputs.get(kind, [])
        if values:
            lines.append(f"  {kind}: {len(values)}: " + ", ".join(values[:20]))
    lines.append("lineage:")

    def walk(
        artifact_id: str, prefix: str, seen: frozenset[str], lineage: str | None = None
    ) -> None:
        runs = generated_by.get(artifact_id, [])
        # Identical content (same frame, same detections) can come of several frames' runs:
        # under one frame's run, show the runs of that frame.
        same = [r for r in runs if lineage and nodes[r].get("lineage_id") == lineage]
        runs = same or runs
        for i, run_id in enumerate(runs):
            last_run = i == len(runs) - 1
            lines.append(f"{prefix}{'└─' if last_run else '├─'} {_label(nodes[run_id])}")
            inner = prefix + ("   " if last_run else "│  ")
            used = used_by_run.get(run_id, [])
            for j, (aid, role) in enumerate(used):
                last = j == len(used) - 1
                lines.append(f"{inner}{'└─' if last else '├─'} [{role}] {_label(nodes[aid])}")
                if aid not in seen:
                    walk(
                        aid,
                        inner + ("   " if last else "│  "),
                        seen | {aid},
                        nodes[run_id].get("lineage_id"),
                    )

    walk(g.root, "  ", frozenset({g.root}))
    return "\n".join(lines)
