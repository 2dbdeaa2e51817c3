"""What received messages do to the store: :func:`store_batch` is the ingest writer's
transaction, :func:`record` what one message does inside it.

Threat messages become a ``messages`` row (with provenance), ``threats`` rows and event changes;
a message with the same frame, model and rules as a stored one is a duplicate whatever its id.
Status messages update the ``agents`` row. Both advance the agent's clock, on which events end.
Both raise :class:`PayloadError` for a message that must be refused (it is then counted, and
acknowledged so the broker does not resend it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sqlite3
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aggregator import events, notify, provenance, store
from aggregator.admission import Admission
from aggregator.config import AggregatorConfig
from aggregator.events import EventChange
from aggregator.snapshots import PendingSnapshots, SnapshotRefused, check_snapshot
from aggregator.store.models import MessageRow, NewThreat, StatusUpdate
from appcommon.version import code_version
from wire.payloads import PayloadError, StatusMessage, ThreatMessage, parse_payload
from wire.topics import TopicError, Topics

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What storing one message did."""

    kind: str  # "stored", "duplicate", "status"
    changes: list[EventChange] = field(default_factory=list)
    agent_id: str = ""
    message_id: str | None = None  # threat messages: what the receipt confirms
    camera: str = ""
    lineage_id: str = ""
    threats: int = 0  # threats stored
    snapshot_dropped: str | None = None  # why the snapshot was not kept (the threat was)


class StoreFailure(RuntimeError):
    """The store cannot be written now (disk full, I/O error, locked, corrupt): the batch in hand
    is rolled back and stays unacknowledged, to be tried again. Chained to the cause."""


def is_store_failure(exc: BaseException) -> bool:
    """Is ``exc`` about the store rather than about the message being stored? The store's
    errors are tried again; a message's (a value SQLite refuses) refuse that message only."""
    if isinstance(exc, sqlite3.IntegrityError | sqlite3.DataError):
        return False
    return isinstance(exc, sqlite3.Error | OSError | MemoryError)


def check_agent(topic: str, agent_id: str) -> None:
    """The agent id in the topic must be the one in the payload (the broker's ACL vouches for
    the topic)."""
    try:
        topic_agent = Topics.agent_of(topic)
    except TopicError as exc:
        raise PayloadError("bad_topic", str(exc)) from exc
    if topic_agent != agent_id:
        raise PayloadError("agent_mismatch", f"topic says {topic_agent}, payload {agent_id}")


def message_row(
    threat: ThreatMessage,
    *,
    received_at: str,
    snapshot_sha256: str | None,
    detections: list[dict[str, Any]] | None = None,
) -> MessageRow:
    """The stored form of a threat message (``detections``: its detections, when dumped)."""
    if detections is None:
        detections = [d.model_dump(mode="json") for d in threat.detections]
    return MessageRow(
        message_id=threat.message_id,
        agent_id=threat.agent_id,
        camera=threat.camera,
        lineage_id=threat.lineage_id,
        frame_id=threat.frame.frame_id,
        frame_sha256=threat.frame.sha256,
        frame_kind=threat.frame.kind,
        frame_source=threat.frame.source,
        frame_width=threat.frame.width,
        frame_height=threat.frame.height,
        captured_at=threat.frame.captured_at.isoformat(),
        captured_ts=threat.frame.captured_at.timestamp(),
        received_at=received_at,
        code_version=threat.versions.code,
        model_sha256=threat.versions.model_sha256,
        rules_sha256=threat.versions.rules_sha256,
        config_sha256=threat.versions.config_sha256,
        snapshot_sha256=snapshot_sha256,
        detections_json=json.dumps(detections),
    )


def record_threat(
    conn: store.Connection,
    topic: str,
    payload: bytes,
    *,
    context: BatchContext,
) -> Outcome:
    threat = parse_payload(payload, ThreatMessage)
    check_agent(topic, threat.agent_id)
    captured_ts = context.admission.check_time(
        "frame.captured_at", threat.frame.captured_at, now_ts=context.now_ts
    )
    context.admission.check_rules(conn, threat)
    grouping = context.grouping
    jpeg: bytes | None = None
    snapshot_sha: str | None = None
    dropped: str | None = None
    if threat.snapshot_jpeg_b64:
        try:
            jpeg = check_snapshot(
                threat.snapshot_jpeg_b64, max_side_px=context.config.ingest.snapshot_max_side_px
            )
            snapshot_sha = hashlib.sha256(jpeg).hexdigest()
        except SnapshotRefused as exc:
            dropped = exc.reason
            log.warning(
                "agent=%s camera=%s message=%s snapshot dropped (%s): %s; the threat is kept",
                threat.agent_id,
                threat.camera,
                threat.message_id,
                exc.reason,
                exc.detail,
            )
    now = datetime.now(UTC)
    detections = [d.model_dump(mode="json") for d in threat.detections]
    row = message_row(
        threat, received_at=now.isoformat(), snapshot_sha256=snapshot_sha, detections=detections
    )
    if not store.messages.insert(conn, row):
        original = store.messages.stored_as(conn, row)
        if original == threat.message_id:
            log.info("agent=%s message=%s duplicate ignored", threat.agent_id, threat.message_id)
        else:
            log.info(
                "agent=%s camera=%s frame=%s message=%s: the same frame, model and rules as "
                "message=%s; counted as a duplicate, not stored again",
                threat.agent_id,
                threat.camera,
                threat.frame.frame_id,
                threat.message_id,
                original,
            )
        return Outcome("duplicate", agent_id=threat.agent_id, message_id=threat.message_id)
    if jpeg is not None and snapshot_sha is not None:
        context.snapshots.add(snapshot_sha, jpeg)  # written only for a stored row
    store.agents.heard_from(
        conn,
        agent_id=threat.agent_id,
        heard_ts=now.timestamp(),
        clock_ts=captured_ts,
        clock_max_ts=context.clock_max_ts,
    )
    outcome = Outcome(
        "stored",
        agent_id=threat.agent_id,
        message_id=threat.message_id,
        camera=threat.camera,
        lineage_id=threat.lineage_id,
        snapshot_dropped=dropped,
    )
    provenance.record_message(conn, row, detections=detections)
    shared_keys = (
        [
            grouping.key(agent_id=threat.agent_id, camera=threat.camera, rule=t.rule)[0]
            for t in threat.threats
        ]
        if grouping.spans_agents(threat.camera)
        else []
    )
    # This threat's capture time ends what it is more than a cutoff after. (Not the agent's
    # clock, which may be further: threats drained late from an outbox still group together;
    # the sweep ends their event on the agent's clock.)
    outcome.changes += events.end_behind_clock(
        conn,
        grouping=grouping,
        agent_id=threat.agent_id,
        clock_ts=captured_ts,
        group_keys=shared_keys,
    )
    event_ids: list[int] = []
    stored: list[NewThreat] = []
    for t in threat.threats:
        event_id, changes = events.assign(
            conn,
            grouping=grouping,
            agent_id=threat.agent_id,
            camera=threat.camera,
            rule=t.rule,
            label=t.label,
            severity=t.severity,
            score=t.score,
            captured_ts=captured_ts,
            message_id=threat.message_id,
        )
        outcome.changes += changes
        event_ids.append(event_id)
        stored.append(
            NewThreat(
                message_id=threat.message_id,
                event_id=event_id,
                agent_id=threat.agent_id,
                camera=threat.camera,
                rule=t.rule,
                severity=t.severity,
                label=t.label,
                class_id=t.class_id,
                score=t.score,
                xyxy=t.xyxy,
                captured_ts=captured_ts,
            )
        )
    store.messages.insert_threats(conn, stored)
    outcome.threats = len(stored)
    provenance.record_grouping(
        conn,
        message_id=threat.message_id,
        event_ids=event_ids,
        lineage_id=threat.lineage_id,
        agent_id=threat.agent_id,
        code_version=code_version(),
        at_ts=now.timestamp(),
    )
    log.debug(
        "agent=%s camera=%s frame=%s lineage=%s message=%s stored %d threat(s)",
        threat.agent_id,
        threat.camera,
        threat.frame.frame_id,
        threat.lineage_id,
        threat.message_id,
        len(threat.threats),
    )
    return outcome


def record_status(
    conn: store.Connection, topic: str, payload: bytes, *, context: BatchContext
) -> Outcome:
    if not payload:
        return Outcome("status")  # a retained status being cleared
    status = parse_payload(payload, StatusMessage)
    check_agent(topic, status.agent_id)
    sent_ts = context.admission.check_time("sent_at", status.sent_at, now_ts=context.now_ts)
    heard_ts = datetime.now(UTC).timestamp()
    # a config is checked on receipt: its canonical JSON has the sha256 its results record
    if (
        status.config is not None
        and status.versions is not None
        and store.configs.save(
            conn,
            sha256=status.versions.config_sha256,
            agent_id=status.agent_id,
            received_ts=heard_ts,
            doc=status.config,
        )
    ):
        log.info("agent=%s config in force %s kept", status.agent_id, status.versions.config_sha256)
    clock_ts = store.agents.record_status(
        conn,
        StatusUpdate(
            agent_id=status.agent_id,
            state=status.state,
            heard_ts=heard_ts,
            sent_ts=sent_ts,
            versions_json=status.versions.model_dump_json() if status.versions else None,
            provider=status.provider,
            outbox_depth=status.outbox_depth,
            outbox_dropped=status.outbox_dropped,
            outbox_oldest_age_s=status.outbox_oldest_age_s,
            cameras_json=json.dumps([c.model_dump(mode="json") for c in status.cameras]),
            outbox_lost_json=json.dumps([o.model_dump(mode="json") for o in status.outbox_lost]),
            inference_ms=status.inference_ms,
        ),
        clock_max_ts=context.clock_max_ts,
    )
    for loss in status.outbox_lost:
        log.warning(
            "agent=%s reports a broken outbox set aside at %s (%s messages lost, committed "
            "%s to %s): %s",
            status.agent_id,
            loss.at.isoformat(),
            "unknown" if loss.messages is None else loss.messages,
            loss.first_at,
            loss.last_at,
            loss.reason,
        )
    log.info(
        "agent=%s is %s (outbox depth %d, dropped %d)",
        status.agent_id,
        status.state,
        status.outbox_depth,
        status.outbox_dropped,
    )
    outcome = Outcome("status", agent_id=status.agent_id)
    if clock_ts is not None:
        outcome.changes += events.end_behind_clock(
            conn, grouping=context.grouping, agent_id=status.agent_id, clock_ts=clock_ts
        )
    return outcome


@dataclass
class BatchContext:
    """What every message of one batch is stored with."""

    config: AggregatorConfig
    grouping: events.Grouping
    admission: Admission
    snapshots: PendingSnapshots
    now_ts: float

    @property
    def clock_max_ts(self) -> float:
        """The latest agent clock the store keeps: a stored one beyond it (from before the
        window was checked) is replaced by the next time heard."""
        return self.now_ts + self.config.ingest.max_clock_ahead_s


def record(conn: store.Connection, topic: str, payload: bytes, *, context: BatchContext) -> Outcome:
    """Store one received message (status or threats) by its topic."""
    if topic.endswith("/ota/report"):
        from aggregator.ota.records import record_report

        kind, agent_id = record_report(conn, topic, payload)
        return Outcome(kind, agent_id=agent_id)
    if topic.endswith("/status"):
        return record_status(conn, topic, payload, context=context)
    return record_threat(conn, topic, payload, context=context)


@dataclass
class BatchResult:
    """What storing a batch did, message by message (in order): an :class:`Outcome`, the
    :class:`PayloadError` it was refused with, or None when it could not be stored (left
    unacknowledged, so the broker or the agent sends it again)."""

    results: list[Outcome | PayloadError | None]
    counts: Counter[str]
    changes: list[EventChange]
    due: int


def store_batch(
    conn: store.Connection,
    messages: Sequence[tuple[str, bytes]],
    *,
    config: AggregatorConfig,
    grouping: events.Grouping,
    now_ts: float,
    admission: Admission | None = None,
) -> BatchResult:
    """The writer's transaction: store (topic, payload) messages, each in a savepoint so one bad
    message cannot undo the others; count them; decide the notifications of the event changes.
    Everything commits together or not at all.

    A message that cannot be stored is refused with a reason: the wire's and admission's
    reasons, or ``store_error`` for a value the store refuses (it is logged with its id). It is
    acknowledged and receipted as refused like any other, so it can never hold up the messages
    behind it. A failure of the store itself (disk full, I/O error) is not the message's fault:
    :class:`StoreFailure` is raised, the transaction rolls back and nothing is acknowledged."""
    results: list[Outcome | PayloadError | None] = []
    counts: Counter[str] = Counter()
    changes: list[EventChange] = []
    threats = 0
    context = BatchContext(
        config=config,
        grouping=grouping,
        admission=admission or Admission(config),
        snapshots=PendingSnapshots(config.store.snapshots_dir),
        now_ts=now_ts,
    )
    try:
        with store.transaction(conn):
            for topic, payload in messages:
                mark = context.snapshots.mark()
                try:
                    with store.savepoint(conn, "message"):
                        outcome = record(conn, topic, payload, context=context)
                except PayloadError as exc:
                    context.snapshots.rollback_to(mark)
                    counts[f"rejected_{exc.reason}"] += 1
                    results.append(exc)
                except Exception as exc:
                    context.snapshots.rollback_to(mark)
                    if is_store_failure(exc):
                        raise StoreFailure(f"{type(exc).__name__}: {exc}") from exc
                    log.exception(
                        "topic=%s message=%s could not be stored; refused as store_error",
                        topic,
                        message_id_of(payload),
                    )
                    refusal = PayloadError("store_error", f"{type(exc).__name__}: {exc}"[:200])
                    counts["rejected_store_error"] += 1
                    results.append(refusal)
                else:
                    counts[outcome.kind] += 1
                    if outcome.snapshot_dropped:
                        counts[f"snapshot_dropped_{outcome.snapshot_dropped}"] += 1
                    changes += outcome.changes
                    threats += outcome.threats
                    results.append(outcome)
            if counts:
                store.counters.bump(conn, counts)
                store.counters.add_rows(conn, {"messages": counts["stored"], "threats": threats})
            due = notify.on_changes(conn, changes, config, now_ts=now_ts)
            context.snapshots.stage()
    except StoreFailure:
        context.snapshots.abort()
        raise
    except Exception as exc:
        context.snapshots.abort()
        if is_store_failure(exc):
            raise StoreFailure(f"{type(exc).__name__}: {exc}") from exc
        raise
    context.snapshots.publish()
    return BatchResult(results=results, counts=counts, changes=changes, due=due)


def message_id_of(payload: bytes) -> str | None:
    """The message id of a threat payload that may be refused, if one can be read at all."""
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    mid = doc.get("message_id") if isinstance(doc, dict) else None
    return mid if isinstance(mid, str) and re.fullmatch(r"[0-9a-f]{32}", mid) else None
