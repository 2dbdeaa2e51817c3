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

The first four are the runs of a threat message. Since migration m013 a message keeps them in
its own row (the ids of its frame, detections and snapshot, run ids reserved for it, the
aggregator's code version), and :mod:`aggregator.store.compact_lineage` reads that row back as
the artifacts, runs and edges above: the graph, the API and ``secagg explain`` see the same
thing as when each was a row of its own (about 30 rows, 4 KB, a message; now 3 columns).

Every writer here runs inside the caller's open transaction (the ingest writer's, for messages
and events), so lineage is exactly as durable as the data it describes.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from aggregator import store
from aggregator.store.models import MessageRow, NewArtifact, NewRun

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
    "release",
    "software",
    "shadow",
)
_KINDS = frozenset(ARTIFACT_KINDS)
RUN_KINDS = ("validate", "detect", "rules", "group", "notify", "plot", "release", "ota", "shadow")


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


def artifact(
    kind: str, key: object, *, at_ts: float, meta: dict[str, Any] | None = None
) -> NewArtifact:
    """An artifact to record: ``kind:key``."""
    if kind not in _KINDS:
        raise ProvenanceError(f"artifact kind {kind!r} is not one of {ARTIFACT_KINDS}")
    return NewArtifact(f"{kind}:{key}", kind, at_ts, meta)


def run(
    *,
    kind: str,
    code_version: str,
    at_ts: float,
    used: list[tuple[str, str]],
    generated: list[str],
    lineage_id: str | None = None,
    agent_id: str | None = None,
    meta: dict[str, Any] | None = None,
) -> NewRun:
    """A run to record: ``used`` is (artifact id, role) pairs; every artifact must exist."""
    if kind not in RUN_KINDS:
        raise ProvenanceError(f"run kind {kind!r} is not one of {RUN_KINDS}")
    return NewRun(kind, code_version, at_ts, used, generated, lineage_id, agent_id, meta)


# what the ingest records -------------------------------------------------------------------------
def shared_artifacts(
    m: MessageRow, *, event_ids: list[int], group_code: str, at_ts: float
) -> list[NewArtifact]:
    """The artifacts a stored threat message names that other messages share (model, rules,
    config and code versions, its events), in the order they were first recorded: rows of
    ``artifacts`` that the ingest records once per batch. The message's own artifacts (frame,
    detections, message, snapshot) and its four runs are kept in its row
    (:mod:`aggregator.store.compact_lineage`)."""
    at = m.captured_ts
    return [
        artifact("model", m.model_sha256, at_ts=at),
        artifact("rules", m.rules_sha256, at_ts=at),
        artifact("config", m.config_sha256, at_ts=at, meta={"agent_id": m.agent_id}),
        artifact("code", m.code_version, at_ts=at),
        artifact("code", group_code, at_ts=at_ts),
        *(artifact("event", e, at_ts=at_ts) for e in sorted(set(event_ids))),
    ]


def backfill_message(conn: store.Connection, message: MessageRow, *, event_ids: list[int]) -> None:
    """Lineage of a message stored before the lineage tables existed (migration m005_provenance),
    as rows of the lineage tables: what a message records (:data:`MESSAGE_RUNS
    <aggregator.store.compact_lineage.MESSAGE_RUNS>`), its group run by an unknown code version
    at its capture time."""
    m = store.compact_lineage.MessageLineage.of(
        message,
        detections_sha256=canonical_sha256(message.detections),
        run_base=0,
        group_code="unknown (backfilled)",
    )
    artifacts, runs = store.compact_lineage.expand(
        m, event_ids=event_ids, group_at_ts=message.captured_ts
    )
    store.lineage.add_artifacts(conn, artifacts)
    store.lineage.add_runs(conn, runs)


def record_notification(
    conn: store.Connection,
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
    event = artifact("event", event_id, at_ts=at)
    code = artifact("code", code_version, at_ts=at)
    notification = artifact(
        "notification",
        notification_id,
        at_ts=at,
        meta={"content_sha256": content_sha256, "channel": channel, "event_id": event_id},
    )
    store.lineage.add_artifacts(conn, [event, code, notification])
    store.lineage.add_run(
        conn,
        run(
            kind="notify",
            code_version=code_version,
            at_ts=at,
            used=[(event.id, "input"), (code.id, "code")],
            generated=[notification.id],
            meta={"channel": channel},
        ),
    )
    return notification.id


def record_plot(
    conn: store.Connection,
    *,
    plot_sha256: str,
    kind: str,
    query: dict[str, Any],
    event_ids: list[int],
    code_version: str,
    at_ts: float,
) -> str:
    """The plot run: which events (and code) a plot was drawn from; returns its id."""
    code = artifact("code", code_version, at_ts=at_ts)
    events = [artifact("event", e, at_ts=at_ts) for e in sorted(set(event_ids))]
    plot = artifact("plot", plot_sha256, at_ts=at_ts, meta={"plot_kind": kind, "query": query})
    store.lineage.add_artifacts(conn, [code, *events, plot])
    store.lineage.add_run(
        conn,
        run(
            kind="plot",
            code_version=code_version,
            at_ts=at_ts,
            used=[*((e.id, "input") for e in events), (code.id, "code")],
            generated=[plot.id],
            meta={"query": query},
        ),
    )
    return plot.id
