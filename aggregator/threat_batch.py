"""Threat messages stored a batch at a time, inside the ingest writer's transaction
(:func:`aggregator.records.store_batch`).

:func:`prepare` reads one payload (any version, :func:`wire.envelope.parse_threat`), admits it
and builds its row, without writing anything: a message that must be refused is refused here.
:func:`store_threats` then stores the prepared messages of a batch together, in a handful of
statements whatever their number: one query finds those already stored (by message id or
content), the open events they touch are read once and grown in memory in the order of the
threats (:class:`aggregator.events.OpenEvents`), then the messages, their threats, the events,
the artifacts they share, their agents and the run ids of their lineage are written with one
statement each. A message's lineage is three columns of its row
(:mod:`aggregator.store.compact_lineage`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aggregator import events, provenance, store
from aggregator.admission import Admission
from aggregator.config import AggregatorConfig
from aggregator.events import EventChange
from aggregator.snapshots import PendingSnapshots, SnapshotRefused, check_jpeg
from aggregator.store.models import MessageRow, NewThreat
from appcommon.version import code_version
from wire.envelope import parse_threat
from wire.payloads import PayloadError, ThreatFields
from wire.topics import TopicError, Topics

log = logging.getLogger(__name__)

RUNS_PER_MESSAGE = len(store.compact_lineage.MESSAGE_RUNS)


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


@dataclass
class BatchContext:
    """What every message of one batch is stored with."""

    config: AggregatorConfig
    grouping: events.Grouping
    admission: Admission
    snapshots: PendingSnapshots
    now_ts: float
    received_at: str = ""
    """When the batch was received (ISO 8601, UTC): every message's ``received_at``."""
    attachment_sha256s: Sequence[str | None] = ()
    """Per message of the batch, its attachment's sha256 when the receiver has it."""
    fine_locks: bool = False
    """The batch holds the write lock shared (PostgreSQL, threats only): it locks what its
    threats depend on (:func:`lock_what_they_touch`) before it writes them."""

    @property
    def clock_max_ts(self) -> float:
        """The latest agent clock the store keeps: a stored one beyond it (from before the
        window was checked) is replaced by the next time heard."""
        return self.now_ts + self.config.ingest.max_clock_ahead_s


def check_agent(topic: str, agent_id: str) -> None:
    """The agent id in the topic must be the one in the payload (the broker's ACL vouches for
    the topic)."""
    try:
        topic_agent = Topics.agent_of(topic)
    except TopicError as exc:
        raise PayloadError("bad_topic", str(exc)) from exc
    if topic_agent != agent_id:
        raise PayloadError("agent_mismatch", f"topic says {topic_agent}, payload {agent_id}")


@dataclass(slots=True)
class Prepared:
    """A threat message read, admitted and turned into its row, not written yet."""

    message: ThreatFields
    row: MessageRow
    content_key: str
    snapshot: bytes | None
    snapshot_dropped: str | None


def canonical_detections(message: ThreatFields) -> str:
    """The message's detections as canonical JSON (sorted keys, no spaces): what is stored,
    and whose sha256 is their ``detections:`` artifact id."""
    dumped = [d.model_dump(mode="json") for d in message.detections]
    return json.dumps(dumped, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def prepare(
    conn: store.Connection,
    topic: str,
    payload: bytes,
    *,
    context: BatchContext,
    sha256_of_attachment: str | None = None,
) -> Prepared:
    """Read and admit one threat payload; PayloadError with the reason to refuse it."""
    received = parse_threat(payload, sha256_of_attachment=sha256_of_attachment)
    threat = received.message
    check_agent(topic, threat.agent_id)
    captured_ts = context.admission.check_time(
        "frame.captured_at", threat.frame.captured_at, now_ts=context.now_ts
    )
    context.admission.check_rules(conn, threat)
    jpeg = received.snapshot
    dropped = received.snapshot_problem
    if jpeg is not None:
        ingest = context.config.ingest
        try:
            check_jpeg(
                jpeg,
                max_side_px=ingest.snapshot_max_side_px,
                decode=ingest.snapshot_check == "decode",
            )
        except SnapshotRefused as exc:
            jpeg, dropped = None, (exc.reason, exc.detail)
    if dropped is not None:
        log.warning(
            "agent=%s camera=%s message=%s snapshot dropped (%s): %s; the threat is kept",
            threat.agent_id,
            threat.camera,
            threat.message_id,
            *dropped,
        )
    detections = canonical_detections(threat)
    frame = threat.frame
    row = MessageRow(
        message_id=threat.message_id,
        agent_id=threat.agent_id,
        camera=threat.camera,
        lineage_id=threat.lineage_id,
        frame_id=frame.frame_id,
        frame_sha256=frame.sha256,
        frame_kind=frame.kind,
        frame_source=frame.source,
        frame_width=frame.width,
        frame_height=frame.height,
        captured_at=frame.captured_at.isoformat(),
        captured_ts=captured_ts,
        received_at=context.received_at,
        code_version=threat.versions.code,
        model_sha256=threat.versions.model_sha256,
        rules_sha256=threat.versions.rules_sha256,
        config_sha256=threat.versions.config_sha256,
        snapshot_sha256=received.snapshot_sha256 if jpeg is not None else None,
        detections_json=detections,
        detections_sha256=hashlib.sha256(detections.encode()).hexdigest(),
        group_code=code_version(),
    )
    return Prepared(
        message=threat,
        row=row,
        content_key=store.messages.key_of(row),
        snapshot=jpeg,
        snapshot_dropped=None if dropped is None else dropped[0],
    )


def lock_what_they_touch(
    conn: store.Connection, prepared: Sequence[Prepared], *, context: BatchContext
) -> None:
    """In a batch with :attr:`BatchContext.fine_locks`, once its messages are read and
    admitted (:func:`prepare`: reads only, beside any other batch) and before the first write:
    lock their agents (:func:`aggregator.store.locks.agents`), then the group keys of these
    threats and of their agents' open events, their cameras when a notifier cools down per
    camera, and the snapshots they store (:func:`aggregator.store.locks.threats`). Nothing
    otherwise."""
    if not context.fine_locks or not prepared:
        return
    grouping = context.grouping
    notify = context.config.notify
    agent_ids = {p.row.agent_id for p in prepared}
    store.locks.agents(conn, agent_ids)
    store.locks.threats(
        conn,
        agent_ids=agent_ids,
        group_keys={
            grouping.key(agent_id=p.row.agent_id, camera=p.row.camera, rule=x.rule)[0]
            for p in prepared
            for x in p.message.threats
        },
        cameras={p.row.camera for p in prepared}
        if notify.notifiers and notify.cooldown_s > 0
        else (),
        snapshots={p.row.snapshot_sha256 for p in prepared if p.row.snapshot_sha256},
    )


def _duplicate(p: Prepared, original: str) -> Outcome:
    t = p.message
    if original == t.message_id:
        log.info("agent=%s message=%s duplicate ignored", t.agent_id, t.message_id)
    else:
        log.info(
            "agent=%s camera=%s frame=%s message=%s: the same frame, model and rules as "
            "message=%s; counted as a duplicate, not stored again",
            t.agent_id,
            t.camera,
            t.frame.frame_id,
            t.message_id,
            original,
        )
    return Outcome("duplicate", agent_id=t.agent_id, message_id=t.message_id)


def store_threats(
    conn: store.Connection, prepared: list[Prepared], *, context: BatchContext
) -> list[Outcome]:
    """Store prepared threat messages in the open transaction, in their order, with a few
    statements for all of them (see the module's docstring); their outcomes, in order. A
    database error propagates, with part of them written: the caller rolls back."""
    found = store.messages.stored(
        conn,
        message_ids=[p.row.message_id for p in prepared],
        content_keys=[p.content_key for p in prepared],
    )
    outcomes: list[Outcome | None] = []
    fresh: list[tuple[int, Prepared]] = []
    for p in prepared:
        original = found.get(p.row.message_id) or found.get(p.content_key)
        if original is not None:
            outcomes.append(_duplicate(p, original))
            continue
        found[p.row.message_id] = found[p.content_key] = p.row.message_id  # twice in one batch
        fresh.append((len(outcomes), p))
        outcomes.append(None)
    if fresh:
        for i, outcome in _store_fresh(conn, [p for _, p in fresh], context=context):
            outcomes[fresh[i][0]] = outcome
    return [o for o in outcomes if o is not None]


def _store_fresh(
    conn: store.Connection, fresh: list[Prepared], *, context: BatchContext
) -> list[tuple[int, Outcome]]:
    grouping = context.grouping
    shared: list[list[str]] = []
    keys: set[str] = set()
    for p in fresh:
        t = p.message
        mine = [
            grouping.key(agent_id=t.agent_id, camera=t.camera, rule=x.rule)[0] for x in t.threats
        ]
        keys.update(mine)
        shared.append(mine if grouping.spans_agents(t.camera) else [])
    open_events = events.OpenEvents.load(
        conn, grouping, agent_ids={p.row.agent_id for p in fresh}, group_keys=keys
    )
    base = store.lineage.reserve_runs(conn, RUNS_PER_MESSAGE * len(fresh))
    rows: list[tuple[MessageRow, str]] = []
    threats: list[NewThreat] = []
    artifacts: dict[str, Any] = {}
    named: set[tuple[object, ...]] = set()  # what the artifacts shared so far were made of
    clocks: dict[str, float] = {}
    out: list[tuple[int, Outcome]] = []
    for i, p in enumerate(fresh):
        t, row = p.message, p.row._replace(run_base=base + RUNS_PER_MESSAGE * i)
        captured_ts = row.captured_ts
        outcome = Outcome(
            "stored",
            agent_id=t.agent_id,
            message_id=t.message_id,
            camera=t.camera,
            lineage_id=t.lineage_id,
            threats=len(t.threats),
            snapshot_dropped=p.snapshot_dropped,
        )
        # This threat's capture time ends what it is more than a cutoff after. (Not the agent's
        # clock, which may be further: threats drained late from an outbox still group
        # together; the sweep ends their event on the agent's clock.)
        outcome.changes += open_events.end_behind_clock(
            agent_id=t.agent_id, clock_ts=captured_ts, group_keys=shared[i]
        )
        event_ids: list[int] = []
        for x in t.threats:
            event_id, changes = open_events.assign(
                conn,
                agent_id=t.agent_id,
                camera=t.camera,
                rule=x.rule,
                label=x.label,
                severity=x.severity,
                score=x.score,
                captured_ts=captured_ts,
                message_id=t.message_id,
            )
            outcome.changes += changes
            event_ids.append(event_id)
            threats.append(
                NewThreat(
                    message_id=t.message_id,
                    event_id=event_id,
                    agent_id=t.agent_id,
                    camera=t.camera,
                    rule=x.rule,
                    severity=x.severity,
                    label=x.label,
                    class_id=x.class_id,
                    score=x.score,
                    xyxy=x.xyxy,
                    captured_ts=captured_ts,
                )
            )
        rows.append((row, p.content_key))
        names = (row.model_sha256, row.rules_sha256, row.config_sha256, row.code_version)
        if (*names, *event_ids) not in named:  # most messages of a batch share them all
            named.add((*names, *event_ids))
            for a in provenance.shared_artifacts(
                row, event_ids=event_ids, group_code=row.group_code or "", at_ts=context.now_ts
            ):
                artifacts.setdefault(a.id, a)  # the first record of an artifact is kept
        clocks[t.agent_id] = max(clocks.get(t.agent_id, captured_ts), captured_ts)
        if p.snapshot is not None and row.snapshot_sha256 is not None:
            context.snapshots.add(row.snapshot_sha256, p.snapshot)  # only for a stored row
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "agent=%s camera=%s frame=%s lineage=%s message=%s stored %d threat(s)",
                t.agent_id,
                t.camera,
                t.frame.frame_id,
                t.lineage_id,
                t.message_id,
                len(t.threats),
            )
        out.append((i, outcome))
    open_events.flush(conn)
    store.messages.insert_many(conn, rows)
    store.messages.insert_threats(conn, threats)
    store.lineage.add_artifacts(conn, list(artifacts.values()))
    store.agents.heard_from_many(
        conn, heard_ts=context.now_ts, clocks=clocks, clock_max_ts=context.clock_max_ts
    )
    return out
