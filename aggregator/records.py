"""What received messages do to the store: :func:`store_batch` is the ingest writer's
transaction, :func:`record` what one message other than a threat does inside it.

Threat messages become ``messages`` rows (with their lineage), ``threats`` rows and event
changes, a run of consecutive threat messages at a time (:mod:`aggregator.threat_batch`); a
message with the same frame, model and rules as a stored one is a duplicate whatever its id.
Status messages update the ``agents`` row. Both advance the agent's clock, on which events end.
Both raise :class:`PayloadError` for a message that must be refused (it is then counted, and
acknowledged so the broker does not resend it).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from aggregator import events, notify, retention, store
from aggregator.admission import Admission
from aggregator.config import AggregatorConfig
from aggregator.events import EventChange
from aggregator.snapshots import PendingSnapshots
from aggregator.store.models import StatusUpdate
from aggregator.threat_batch import (
    BatchContext,
    Outcome,
    Prepared,
    check_agent,
    lock_what_they_touch,
    prepare,
    store_threats,
)
from wire.envelope import message_id_of
from wire.payloads import PayloadError, StatusMessage, parse_payload
from wire.topics import TopicError, Topics

log = logging.getLogger(__name__)

__all__ = [
    "BatchContext",
    "BatchResult",
    "Outcome",
    "StoreFailure",
    "check_agent",
    "is_store_failure",
    "message_id_of",
    "record",
    "store_batch",
]


class StoreFailure(RuntimeError):
    """The store cannot be written now (disk full, I/O error, locked, corrupt): the batch in hand
    is rolled back and stays unacknowledged, to be tried again. Chained to the cause."""


def is_store_failure(exc: BaseException) -> bool:
    """Is ``exc`` about the store rather than about the message being stored? The store's
    errors are tried again; a message's (a value SQLite refuses) refuse that message only."""
    if isinstance(exc, sqlite3.IntegrityError | sqlite3.DataError):
        return False
    return isinstance(exc, sqlite3.Error | OSError | MemoryError)


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


def is_threat(topic: str) -> bool:
    return not topic.endswith(("/status", "/ota/report"))


def record(conn: store.Connection, topic: str, payload: bytes, *, context: BatchContext) -> Outcome:
    """Store one received message (status, update report or threats) by its topic."""
    if topic.endswith("/ota/report"):
        from aggregator.ota.records import record_report

        kind, agent_id = record_report(conn, topic, payload)
        return Outcome(kind, agent_id=agent_id)
    if topic.endswith("/status"):
        return record_status(conn, topic, payload, context=context)
    (outcome,) = store_threats(
        conn, [prepare(conn, topic, payload, context=context)], context=context
    )
    return outcome


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
    attachment_sha256s: Sequence[str | None] | None = None,
) -> BatchResult:
    """The writer's transaction: store (topic, payload) messages in their order; count them;
    decide the notifications of the event changes. Everything commits together or not at all.

    Consecutive threat messages are stored together (:func:`_store_threats`); any other
    message in a savepoint of its own. A message that cannot be stored is refused with a
    reason: the wire's and admission's reasons, or ``store_error`` for a value the store
    refuses (it is logged with its id). It is acknowledged and receipted as refused like any
    other, so it can never hold up the messages behind it. A failure of the store itself (disk
    full, I/O error) is not the message's fault: :class:`StoreFailure` is raised, the
    transaction rolls back and nothing is acknowledged.

    ``attachment_sha256s``: per message, the sha256 of its envelope's attachment when the
    receiver computed it already (:attr:`aggregator.mqtt_client.Received.attachment_sha256`)."""
    results: list[Outcome | PayloadError | None] = [None] * len(messages)
    # PostgreSQL: a batch of threats only holds the write lock shared and, once its messages are
    # read and admitted, locks what they touch (lock_what_they_touch); a batch of statuses only
    # holds it shared and locks its agents and their open events' keys at once; any other batch
    # (threats with statuses, update reports) holds it alone.
    threats_only = all(is_threat(t) for t, _ in messages)
    statuses_only = all(t.endswith("/status") for t, _ in messages)
    shared = store.locks.fine(conn) and (threats_only or statuses_only)
    context = BatchContext(
        config=config,
        grouping=grouping,
        admission=admission or Admission(config),
        snapshots=PendingSnapshots(config.store.snapshots_dir, sync=config.store.snapshot_sync),
        now_ts=now_ts,
        received_at=datetime.fromtimestamp(now_ts, UTC).isoformat(),
        attachment_sha256s=attachment_sha256s or [None] * len(messages),
        fine_locks=shared,
    )
    try:
        with store.transaction(conn, shared=shared):
            if shared and not threats_only:  # statuses: their agents' rows and open events
                agent_ids = _agents_of(messages)
                store.locks.agents(conn, agent_ids)
                store.locks.threats(conn, agent_ids=agent_ids, group_keys=())
            start = 0
            while start < len(messages):
                end = start
                while end < len(messages) and is_threat(messages[end][0]):
                    end += 1
                if end > start:
                    _store_threats(conn, messages, start, end, results, context=context)
                else:
                    topic, payload = messages[start]
                    results[start] = _one(conn, topic, payload, context=context)
                    end = start + 1
                start = end
            counts, changes, threats = _tally(results)
            if counts:
                store.counters.bump(conn, counts)
                store.counters.add_rows(conn, {"messages": counts["stored"], "threats": threats})
            due = notify.on_changes(conn, changes, config, now_ts=now_ts)
            retention.on_batch(
                conn, changes, context.snapshots.written(), config.store, now_ts=now_ts
            )
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
    retention.after_commit(conn, changes, config.store)
    return BatchResult(results=results, counts=counts, changes=changes, due=due)


def _agents_of(messages: Sequence[tuple[str, bytes]]) -> set[str]:
    """The agents of these messages' topics (a message whose topic names none, or whose
    payload names another agent, is refused: it writes nothing)."""
    found = set()
    for topic, _ in messages:
        try:
            found.add(Topics.agent_of(topic))
        except TopicError:
            continue
    return found


def _refusal(exc: Exception, topic: str, payload: bytes) -> PayloadError:
    """A message the store refused for a reason of its own: refused as ``store_error``, or
    StoreFailure when the store itself failed."""
    if is_store_failure(exc):
        raise StoreFailure(f"{type(exc).__name__}: {exc}") from exc
    log.error(
        "topic=%s message=%s could not be stored; refused as store_error",
        topic,
        message_id_of(payload),
        exc_info=exc,
    )
    return PayloadError("store_error", f"{type(exc).__name__}: {exc}"[:200])


def _one(
    conn: store.Connection, topic: str, payload: bytes, *, context: BatchContext
) -> Outcome | PayloadError:
    """One message in a savepoint of its own."""
    mark = context.snapshots.mark()
    try:
        with store.savepoint(conn, "message"):
            return record(conn, topic, payload, context=context)
    except PayloadError as exc:
        context.snapshots.rollback_to(mark)
        return exc
    except Exception as exc:
        context.snapshots.rollback_to(mark)
        return _refusal(exc, topic, payload)


def _store_threats(
    conn: store.Connection,
    messages: Sequence[tuple[str, bytes]],
    start: int,
    end: int,
    results: list[Outcome | PayloadError | None],
    *,
    context: BatchContext,
) -> None:
    """Threat messages ``start`` .. ``end`` of the batch, stored together; when the store
    refuses one of them (a value SQLite will not take), the others are stored one at a time,
    each in its own savepoint, and that one is refused."""
    prepared: list[tuple[int, Prepared]] = []
    for i in range(start, end):
        topic, payload = messages[i]
        try:
            prepared.append(
                (
                    i,
                    prepare(
                        conn,
                        topic,
                        payload,
                        context=context,
                        sha256_of_attachment=context.attachment_sha256s[i],
                    ),
                )
            )
        except PayloadError as exc:
            results[i] = exc
        except Exception as exc:
            results[i] = _refusal(exc, topic, payload)
    if not prepared:
        return
    # before the savepoint: its rollback would release locks taken inside it
    lock_what_they_touch(conn, [p for _, p in prepared], context=context)
    mark = context.snapshots.mark()
    try:
        with store.savepoint(conn, "threats"):
            outcomes = store_threats(conn, [p for _, p in prepared], context=context)
    except Exception as exc:
        context.snapshots.rollback_to(mark)
        if is_store_failure(exc):
            raise StoreFailure(f"{type(exc).__name__}: {exc}") from exc
        log.warning(
            "%d threat messages could not be stored together (%s: %s); one at a time now",
            len(prepared),
            type(exc).__name__,
            exc,
        )
        for i, p in prepared:
            mark = context.snapshots.mark()
            try:
                with store.savepoint(conn, "message"):
                    (results[i],) = store_threats(conn, [p], context=context)
            except Exception as exc_one:
                context.snapshots.rollback_to(mark)
                results[i] = _refusal(exc_one, *messages[i])
        return
    for (i, _), outcome in zip(prepared, outcomes, strict=True):
        results[i] = outcome


def _tally(
    results: list[Outcome | PayloadError | None],
) -> tuple[Counter[str], list[EventChange], int]:
    counts: Counter[str] = Counter()
    changes: list[EventChange] = []
    threats = 0
    for outcome in results:
        if isinstance(outcome, PayloadError):
            counts[f"rejected_{outcome.reason}"] += 1
        elif outcome is not None:
            counts[outcome.kind] += 1
            if outcome.snapshot_dropped:
                counts[f"snapshot_dropped_{outcome.snapshot_dropped}"] += 1
            changes += outcome.changes
            if outcome.kind == "stored":
                threats += outcome.threats
    return counts, changes, threats
