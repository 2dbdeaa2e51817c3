"""Questions to the lineage graph (see :mod:`aggregator.provenance` for what is recorded):
recursive queries upstream (what an artifact came from) and downstream (what came of it), and
the tree ``secagg explain`` prints.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from aggregator.provenance import ProvenanceError, parse_artifact_id

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
        if meta.get("frame_id"):
            parts.append(f"camera {meta.get('camera')} frame {meta['frame_id']}")
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
