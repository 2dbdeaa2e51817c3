"""Questions to the lineage graph (see :mod:`aggregator.provenance` for what is recorded):
which artifact a short id means, the graph upstream (what an artifact came from) or downstream
(what came of it), and the tree ``secagg explain`` prints.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from aggregator import store
from aggregator.provenance import ProvenanceError, parse_artifact_id

Direction = Literal["upstream", "downstream"]
PREFIX_KINDS = ("frame", "model", "rules", "config", "detections", "snapshot", "message", "plot")
"""Kinds whose key is a hex digest or id: a unique prefix of it names the artifact."""
CANDIDATES_SHOWN = 10


class ArtifactNotFound(ProvenanceError):
    """No stored artifact has this id (or starts with this prefix)."""


class AmbiguousArtifact(ProvenanceError):
    """A short id matches several artifacts."""

    def __init__(self, message: str, candidates: list[str]) -> None:
        super().__init__(message)
        self.candidates = candidates


def resolve(conn: store.Connection, artifact_id: str) -> str:
    """The full id of an artifact named by its id or by a unique prefix of its key
    (``model:eee43d6844``, as the demo prints it; a trailing ``…`` is ignored). Only the kinds of
    :data:`PREFIX_KINDS` take a prefix: ``event:1`` never means ``event:12``."""
    kind, key = parse_artifact_id(artifact_id.rstrip("…").removesuffix("..."))
    full = f"{kind}:{key}"
    if store.lineage.artifact_exists(conn, full):
        return full
    if kind not in PREFIX_KINDS or not re.fullmatch(r"[0-9a-f]+", key):
        raise ArtifactNotFound(f"artifact {full} is not known")
    found = store.lineage.ids_with_prefix(conn, full, limit=CANDIDATES_SHOWN + 1)
    if not found:
        raise ArtifactNotFound(f"no artifact starts with {full}")
    if len(found) > 1:
        more = " and more" if len(found) > CANDIDATES_SHOWN else ""
        shown = found[:CANDIDATES_SHOWN]
        raise AmbiguousArtifact(
            f"{full} is ambiguous: it starts {', '.join(shown)}{more}; give more of the key",
            shown,
        )
    return found[0]


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


def _enrich(conn: store.Connection, kind: str, key: str, meta: dict[str, Any]) -> dict[str, Any]:
    """The current state of mutable artifacts (an event grows until it ends)."""
    if kind == "event" and key.isdigit():
        event = store.events.get(conn, int(key))
        if event is not None:
            meta = {
                **meta,
                "agent_id": event.agent_id,
                "camera": event.camera,
                "rule": event.rule,
                "label": event.label,
                "severity": event.severity,
                "threat_count": event.threat_count,
                "started_ts": event.started_ts,
                "ended_ts": event.ended_ts,
            }
    return meta


def graph(conn: store.Connection, artifact_id: str, *, direction: str = "upstream") -> Graph:
    """Every artifact and run upstream (what it came from) or downstream (what came of it).
    ``artifact_id`` may be a unique prefix (:func:`resolve`)."""
    if direction not in ("upstream", "downstream"):
        raise ProvenanceError(f"direction must be upstream or downstream, not {direction!r}")
    way: Direction = "upstream" if direction == "upstream" else "downstream"
    root = resolve(conn, artifact_id)
    ids = store.lineage.closure_ids(conn, root, direction=way)
    runs = store.lineage.closure_runs(conn, root, direction=way)
    used, generated = store.lineage.edges_of_runs(conn, [r.id for r in runs])
    edges: list[dict[str, str]] = []
    for u in used:
        if u.artifact_id in ids:
            edges.append(
                {"from": f"run:{u.run_id}", "to": u.artifact_id, "type": "used", "role": u.role}
            )
    for g in generated:
        if g.artifact_id in ids:
            edges.append({"from": g.artifact_id, "to": f"run:{g.run_id}", "type": "wasGeneratedBy"})
    edges.sort(key=lambda e: (int(e["from" if e["type"] == "used" else "to"][4:]), e["type"]))
    nodes: list[dict[str, Any]] = []
    for a in store.lineage.closure_artifacts(conn, root, direction=way):
        kind, key = parse_artifact_id(a.id)
        nodes.append(
            {"id": a.id, "type": "artifact", "kind": kind, "meta": _enrich(conn, kind, key, a.meta)}
        )
    for r in runs:
        nodes.append(
            {
                "id": f"run:{r.id}",
                "type": "run",
                "kind": r.kind,
                "lineage_id": r.lineage_id,
                "agent_id": r.agent_id,
                "code_version": r.code_version,
                "at_ts": r.at_ts,
                "meta": r.meta,
            }
        )
    return Graph(root=root, direction=way, nodes=nodes, edges=edges)


def inputs_of(g: Graph) -> dict[str, list[str]]:
    """The artifact ids of each kind in the graph (frames, models, rules, code, ...) other than
    its root: upstream its inputs, downstream its results."""
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
    return str(node["id"]) + extra


def render_tree(g: Graph) -> str:
    """The graph as an indented tree, with a summary of the artifacts first. Upstream: each
    artifact, the run that generated it, what that run used, down to the frames. Downstream:
    each artifact, the runs that used it, what they generated, on to events, notifications and
    plots; an artifact reached twice is expanded once."""
    nodes = {n["id"]: n for n in g.nodes}
    generated_by: dict[str, list[str]] = {}  # artifact -> runs that generated it
    generated: dict[str, list[str]] = {}  # run -> artifacts it generated
    used_by_run: dict[str, list[tuple[str, str]]] = {}  # run -> (artifact, role)
    users: dict[str, list[tuple[str, str]]] = {}  # artifact -> (run that used it, role)
    for e in g.edges:
        if e["type"] == "wasGeneratedBy":
            generated_by.setdefault(e["from"], []).append(e["to"])
            generated.setdefault(e["to"], []).append(e["from"])
        else:
            used_by_run.setdefault(e["from"], []).append((e["to"], e.get("role", "")))
            users.setdefault(e["to"], []).append((e["from"], e.get("role", "")))
    summary = inputs_of(g)
    lines = [f"{_label(nodes[g.root])}"]
    kinds = (
        ("model", "rules", "config", "code", "frame", "snapshot")
        if g.direction == "upstream"
        else ("detections", "message", "event", "notification", "plot")
    )
    for kind in kinds:
        values = summary.get(kind, [])
        if values:
            lines.append(f"  {kind}: {len(values)}: " + ", ".join(values[:20]))
    lines.append("lineage:" if g.direction == "upstream" else "downstream:")

    def branch(last: bool) -> tuple[str, str]:
        return ("└─", "   ") if last else ("├─", "│  ")

    def walk_up(
        artifact_id: str, prefix: str, seen: frozenset[str], lineage: str | None = None
    ) -> None:
        runs = generated_by.get(artifact_id, [])
        # Identical content (same frame, same detections) can come of several frames' runs:
        # under one frame's run, show the runs of that frame.
        same = [r for r in runs if lineage and nodes[r].get("lineage_id") == lineage]
        runs = same or runs
        for i, run_id in enumerate(runs):
            mark, more = branch(i == len(runs) - 1)
            lines.append(f"{prefix}{mark} {_label(nodes[run_id])}")
            inner = prefix + more
            used = used_by_run.get(run_id, [])
            for j, (aid, role) in enumerate(used):
                mark2, more2 = branch(j == len(used) - 1)
                lines.append(f"{inner}{mark2} [{role}] {_label(nodes[aid])}")
                if aid not in seen:
                    walk_up(aid, inner + more2, seen | {aid}, nodes[run_id].get("lineage_id"))

    expanded: set[tuple[str, str | None]] = set()

    def walk_down(artifact_id: str, prefix: str, lineage: str | None = None) -> None:
        runs = users.get(artifact_id, [])
        # As upstream: identical content is one artifact used by several frames' runs; after
        # one frame's run, go on with the runs of that frame.
        same = [(r, role) for r, role in runs if lineage and nodes[r].get("lineage_id") == lineage]
        runs = same or runs
        for i, (run_id, role) in enumerate(runs):
            mark, more = branch(i == len(runs) - 1)
            lines.append(f"{prefix}{mark} [{role}] {_label(nodes[run_id])}")
            inner = prefix + more
            run_lineage = nodes[run_id].get("lineage_id")
            made = generated.get(run_id, [])
            for j, aid in enumerate(made):
                mark2, more2 = branch(j == len(made) - 1)
                by_lineage = any(
                    nodes[r].get("lineage_id") == run_lineage for r, _ in users.get(aid, [])
                )
                key = (aid, run_lineage if run_lineage and by_lineage else None)
                if key in expanded:
                    lines.append(f"{inner}{mark2} {_label(nodes[aid])} (shown above)")
                    continue
                expanded.add(key)
                lines.append(f"{inner}{mark2} {_label(nodes[aid])}")
                walk_down(aid, inner + more2, run_lineage)

    if g.direction == "upstream":
        walk_up(g.root, "  ", frozenset({g.root}))
    else:
        walk_down(g.root, "  ")
    return "\n".join(lines)
