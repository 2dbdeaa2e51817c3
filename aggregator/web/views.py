"""What the pages show, assembled from the store: pure functions from typed rows to plain
dicts that the templates render (no SQL here, no HTML)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from aggregator import lineage, retention, store
from aggregator.ota import history as ota_history
from aggregator.ota import rollouts
from aggregator.store.events import Review
from aggregator.store.models import EventRow, MessageRow, ThreatRow


@dataclass
class Box:
    """A threat's box on its frame, in the frame's pixels."""

    x: float
    y: float
    w: float
    h: float
    label: str
    score: float
    severity: str


@dataclass
class Snapshot:
    """A frame's snapshot with the boxes of its threats (drawn over it as SVG)."""

    sha256: str | None
    width: int
    height: int
    boxes: list[Box] = field(default_factory=list)
    gone: str | None = None  # why the file was deleted (shown instead of the image)


def _gone(conn: store.Connection, snap: Snapshot) -> Snapshot:
    """The snapshot, with why its file was deleted when it was (policy, retention)."""
    if snap.sha256 is not None:
        reason = retention.gone_reasons(conn, [snap.sha256]).get(snap.sha256)
        if reason is not None:
            snap.gone = retention.reason_text(reason)
    return snap


def snapshot_of(message: MessageRow | None, threats: list[ThreatRow]) -> Snapshot:
    if message is None:
        return Snapshot(None, 16, 9)
    boxes = [
        Box(
            x=t.xyxy[0],
            y=t.xyxy[1],
            w=max(1.0, t.xyxy[2] - t.xyxy[0]),
            h=max(1.0, t.xyxy[3] - t.xyxy[1]),
            label=t.label,
            score=t.score,
            severity=t.severity,
        )
        for t in threats
    ]
    return Snapshot(message.snapshot_sha256, message.frame_width, message.frame_height, boxes)


def duration(event: EventRow) -> str:
    seconds = round(event.last_seen_ts - event.started_ts)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def event_card(
    conn: store.Connection,
    event: EventRow,
    review: Review | None,
    *,
    top: tuple[MessageRow | None, list[ThreatRow]] | None = None,
) -> dict[str, Any]:
    """One event of the list: its fields, its best snapshot with boxes, its review (``top``:
    its top message and that message's threats, when read already for a page of cards)."""
    if top is None:
        top = (
            store.messages.get(conn, event.top_message_id),
            store.messages.threats_of_message(conn, event.top_message_id),
        )
    message, threats = top
    snap = snapshot_of(message, [t for t in threats if t.event_id == event.id])
    if message is None:  # pruned by database retention: its best snapshot may be kept
        snap = Snapshot(retention.event_best_snapshot(conn, event), 16, 9)
    return {
        "event": event,
        "state": "open" if event.ended_ts is None else "ended",
        "duration": duration(event),
        "snapshot": _gone(conn, snap),
        "review": review,
    }


def event_cards(conn: store.Connection, events: list[EventRow]) -> list[dict[str, Any]]:
    """The cards of a page of events: their top messages and those messages' threats read in
    two statements for the page, not two a card (a round trip each on PostgreSQL)."""
    reviews = store.events.reviews_of(conn, [e.id for e in events])
    tops = [e.top_message_id for e in events]
    messages = store.messages.get_many(conn, tops)
    threats = store.messages.threats_of_messages(conn, tops)
    return [
        event_card(
            conn,
            e,
            reviews.get(e.id),
            top=(messages.get(e.top_message_id), threats.get(e.top_message_id, [])),
        )
        for e in events
    ]


def frames_of_event(conn: store.Connection, event_id: int) -> list[dict[str, Any]]:
    """Every threat message of an event (a frame) with its snapshot and boxes, in time order."""
    by_message: dict[str, dict[str, Any]] = {}
    for found in store.messages.threats_of_event(conn, event_id):
        m = found.message
        entry = by_message.setdefault(m.message_id, {"message": m, "threats": [], "snapshot": None})
        entry["threats"].append(found.threat)
    for entry in by_message.values():
        entry["snapshot"] = _gone(conn, snapshot_of(entry["message"], entry["threats"]))
    return list(by_message.values())


def timeline(
    event: EventRow,
    frames: list[dict[str, Any]],
    notifications: list[dict[str, Any]],
    review: Review | None,
) -> list[dict[str, Any]]:
    """What happened to an event, in time order: start, each threat, each notification
    attempt, the end, the review."""
    items: list[dict[str, Any]] = [
        {"ts": event.started_ts, "what": "started", "detail": f"{event.rule} ({event.severity})"}
    ]
    for frame in frames:
        for t in frame["threats"]:
            items.append(
                {
                    "ts": t.captured_ts,
                    "what": "threat",
                    "detail": f"{t.label} {t.score:.2f} on {t.camera} ({t.severity})",
                }
            )
    for n in notifications:
        for a in n["attempts"]:
            items.append(
                {
                    "ts": a.finished_ts,
                    "what": f"notification {a.outcome}",
                    "detail": f"{n['row'].notifier} {n['row'].kind} attempt {a.attempt}"
                    + (f": {a.error}" if a.error else ""),
                }
            )
    if event.ended_ts is not None:
        items.append({"ts": event.ended_ts, "what": "ended", "detail": ""})
    if review is not None:
        items.append(
            {"ts": review.reviewed_ts, "what": "reviewed", "detail": f"by {review.reviewed_by}"}
        )
    return sorted(items, key=lambda i: i["ts"])


def notifications_of(conn: store.Connection, event_id: int) -> list[dict[str, Any]]:
    rows = store.notifications.list_notifications(conn, limit=100, event_id=event_id)
    return [{"row": n, "attempts": store.notifications.attempts_of(conn, n.id)} for n in rows]


PIPELINE_ORDER = (
    "code",
    "config",
    "model",
    "rules",
    "release",
    "software",
    "frame",
    "snapshot",
    "detections",
    "message",
    "event",
    "notification",
    "plot",
    "shadow",
)
SHOWN_PER_KIND = 5


def _short(artifact_id: str) -> str:
    key = artifact_id.partition(":")[2]
    return key if len(key) <= 14 else key[:12] + "…"


def provenance(conn: store.Connection, event_id: int, *, limit: int) -> dict[str, Any]:
    """The event's upstream lineage as a graph readable at a glance: one column per kind of
    artifact in pipeline order (code, config, model, rules, frames, ... , the event), each with
    its artifacts (the first few; '+N more'), and arrows between kinds that runs link. Models
    and rules carry their release tags. Also the full tree as text."""
    graph = lineage.graph(conn, f"event:{event_id}", direction="upstream", limit=limit)
    kinds: dict[str, list[dict[str, Any]]] = {}
    for node in graph.nodes:
        if node["type"] == "artifact":
            kinds.setdefault(node["kind"], []).append(node)
    tags = _release_tags(conn)
    run_inputs: dict[str, set[str]] = {}
    run_outputs: dict[str, set[str]] = {}
    kind_of: dict[str, str] = {
        n["id"]: str(n.get("kind")) for n in graph.nodes if n["type"] == "artifact"
    }
    run_kind = {n["id"]: n["kind"] for n in graph.nodes if n["type"] == "run"}
    for e in graph.edges:
        if e["type"] == "used":
            run_inputs.setdefault(e["from"], set()).add(kind_of.get(e["to"], "?"))
        else:
            run_outputs.setdefault(e["to"], set()).add(kind_of.get(e["from"], "?"))
    links: dict[tuple[str, str], set[str]] = {}
    for run, outputs in run_outputs.items():
        for source in run_inputs.get(run, set()):
            for target in outputs:
                if source != target:
                    links.setdefault((source, target), set()).add(run_kind.get(run, "run"))
    order = [k for k in PIPELINE_ORDER if k in kinds] + sorted(set(kinds) - set(PIPELINE_ORDER))
    columns = []
    for kind in order:
        nodes = kinds[kind]
        shown = []
        for node in nodes[:SHOWN_PER_KIND]:
            key = node["id"].partition(":")[2]
            shown.append(
                {
                    "id": node["id"],
                    "short": _short(node["id"]),
                    "tag": tags.get((kind, key)),
                }
            )
        columns.append({"kind": kind, "count": len(nodes), "nodes": shown})
    return {
        "columns": columns,
        "links": sorted(
            ({"from": a, "to": b, "runs": sorted(r)} for (a, b), r in links.items()),
            key=lambda link: (order.index(link["from"]), order.index(link["to"])),
        ),
        "tree": lineage.render_tree(graph),
        "truncated": graph.truncated,
    }


def _release_tags(conn: store.Connection) -> dict[tuple[str, str], str]:
    """(kind, sha256) -> release tag, for the signed releases of models, rules and configs."""
    return {(r.kind, r.sha256): r.tag for r in store.releases.list_releases(conn)}


def agents_page(conn: store.Connection) -> dict[str, Any]:
    """Every agent with its cameras, versions and active releases; the rollouts."""
    now = time.time()
    tags = {r.id: f"{r.kind} {r.tag}" for r in store.releases.list_releases(conn)}
    agents = []
    for agent in store.agents.list_agents(conn):
        reports = store.ota.reports(conn, agent.agent_id, limit=1000)
        active = [
            {"kind": p.kind, "release": tags.get(p.release_id) if p.release_id else None}
            for p in ota_history.periods(reports)
            if p.until_ts is None
        ]
        agents.append({"agent": agent, "ago_s": now - agent.last_seen_ts, "releases": active})
    found_rollouts = []
    for r in store.rollouts.list_rollouts(conn)[:20]:
        doc = rollouts.summary(conn, r.id)
        members = [a for group in doc["groups"] for a in group]
        done = sum(1 for a in members if a["state"] == "succeeded")
        found_rollouts.append(
            {
                "doc": doc,
                "release": tags.get(r.release_id, f"release {r.release_id}"),
                "done": done,
                "total": len(members),
                "failed": sum(1 for a in members if a["state"] in ("failed", "reverted")),
            }
        )
    return {"agents": agents, "rollouts": found_rollouts}


def logs_of_event(conn: store.Connection, event_id: int) -> list[store.logs.LogRow]:
    """Everything agents and secagg logged about an event (its id, messages, lineages,
    frames)."""
    from aggregator.api.routes.logs import lines_about_event

    return lines_about_event(conn, event_id, limit=1000)
