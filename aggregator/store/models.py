"""Typed rows of the store, one group per access module. Callers outside the store see these,
never a database row. JSON columns come back parsed (``cameras``, ``meta``, ``versions``); times
are epoch seconds (``*_ts``) as stored.

What a query returns is a frozen dataclass. What the ingest writes for every message (``New*``,
:class:`MessageRow`, :class:`StatusUpdate`) is a NamedTuple: just as immutable and typed, and
built several times faster, which the ingest notices (it builds a few per message).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, NamedTuple

# messages and threats ------------------------------------------------------------------------


class MessageRow(NamedTuple):
    """One stored threat message: the frame it is about, what produced it, its snapshot."""

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
    captured_at: str
    captured_ts: float
    received_at: str
    code_version: str
    model_sha256: str
    rules_sha256: str
    config_sha256: str
    snapshot_sha256: str | None
    detections_json: str
    detections_sha256: str | None = None
    """sha256 of ``detections_json``, the canonical JSON of the detections (its artifact id)."""
    run_base: int | None = None
    """The id of the first of the four lineage runs this message records (validate, detect,
    rules, group: ``run_base`` .. ``run_base + 3``), derived from this row
    (:mod:`aggregator.store.lineage`); None for a message stored before that, whose runs are
    rows of the ``runs`` table."""
    group_code: str | None = None
    """The aggregator's code version that grouped this message into its events."""

    @property
    def detections(self) -> list[dict[str, Any]]:
        """The frame's detections as the agent sent them (wire form)."""
        value: list[dict[str, Any]] = json.loads(self.detections_json)
        return value


class NewThreat(NamedTuple):
    """A threat to insert: one detection that a rule flagged, in the event it joined."""

    message_id: str
    event_id: int
    agent_id: str
    camera: str
    rule: str
    severity: str
    label: str
    class_id: int
    score: float
    xyxy: tuple[float, float, float, float]
    captured_ts: float


@dataclass(frozen=True, slots=True)
class ThreatRow:
    """A stored threat."""

    id: int
    message_id: str
    event_id: int
    agent_id: str
    camera: str
    rule: str
    severity: str
    label: str
    class_id: int
    score: float
    xyxy: tuple[float, float, float, float]
    captured_ts: float


@dataclass(frozen=True, slots=True)
class ThreatWithMessage:
    """A threat and the message it came in (its provenance)."""

    threat: ThreatRow
    message: MessageRow


@dataclass(frozen=True, slots=True)
class HourlyCount:
    """Threats of one camera in one hour of capture time."""

    hour_ts: int
    camera: str
    count: int


# events --------------------------------------------------------------------------------------


class NewEvent(NamedTuple):
    """An event started by its first threat."""

    agent_id: str
    camera: str
    rule: str
    label: str
    severity: str
    captured_ts: float
    score: float
    message_id: str
    group_key: str
    cutoff_s: float


@dataclass(frozen=True, slots=True)
class EventRow:
    """A threat event as it stands."""

    id: int
    agent_id: str
    camera: str
    rule: str
    label: str
    severity: str
    started_ts: float
    last_seen_ts: float
    ended_ts: float | None
    threat_count: int
    top_score: float
    top_message_id: str
    group_key: str | None
    cameras: list[str]
    cutoff_s: float | None

    @property
    def state(self) -> str:
        """``open`` until the event ended, then ``ended``."""
        return "open" if self.ended_ts is None else "ended"


@dataclass(frozen=True, slots=True)
class OpenEventClock:
    """An open event and the clocks of its agent (for deciding its end)."""

    event_id: int
    agent_id: str
    last_seen_ts: float
    cutoff_s: float | None
    agent_clock_ts: float | None
    agent_heard_ts: float | None


# agents --------------------------------------------------------------------------------------


class StatusUpdate(NamedTuple):
    """What one status message says about its agent."""

    agent_id: str
    state: str
    heard_ts: float
    sent_ts: float
    versions_json: str | None
    provider: str | None
    outbox_depth: int
    outbox_dropped: int
    outbox_oldest_age_s: float
    cameras_json: str
    outbox_lost_json: str = "[]"
    inference_ms: float | None = None


@dataclass(frozen=True, slots=True)
class AgentRow:
    """An agent heard from. ``last_seen_ts`` is the aggregator's wall clock when it was last
    heard; ``clock_ts`` the agent's own clock (latest capture time or status ``sent_at``)."""

    agent_id: str
    state: str
    last_seen_ts: float
    last_status_ts: float | None
    status_sent_ts: float | None
    versions: dict[str, str] | None
    provider: str | None
    outbox_depth: int
    outbox_dropped: int
    outbox_oldest_age_s: float
    cameras: list[dict[str, Any]]
    clock_ts: float | None
    outbox_lost: list[dict[str, Any]]
    inference_ms: float | None = None
    """the agent's recent mean inference time (its status)"""


# notifications -------------------------------------------------------------------------------


class NewNotification(NamedTuple):
    """A notification decided for one event state on one notifier."""

    event_id: int
    notifier: str
    channel: str
    kind: str
    state_key: str
    state: str
    created_ts: float
    next_attempt_ts: float | None
    code_version: str
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class NotificationRow:
    """A stored notification with its delivery state."""

    id: int
    event_id: int
    notifier: str
    channel: str
    kind: str
    state_key: str
    state: str
    created_ts: float
    next_attempt_ts: float | None
    sent_ts: float | None
    attempts: int
    content_json: str | None
    content_sha256: str | None
    code_version: str
    last_error: str | None


@dataclass(frozen=True, slots=True)
class AttemptRow:
    """One delivery attempt of a notification."""

    notification_id: int
    attempt: int
    started_ts: float
    finished_ts: float
    outcome: str
    error: str | None


@dataclass(frozen=True, slots=True)
class RepeatDue:
    """An open event whose notifications on one notifier are due a repeat."""

    event_id: int
    notifier: str
    repeats: int


# lineage -------------------------------------------------------------------------------------


class NewArtifact(NamedTuple):
    """An artifact to record (idempotent: the first record of an id is kept)."""

    id: str
    kind: str
    created_ts: float
    meta: dict[str, Any] | None = None


class NewRun(NamedTuple):
    """A run to record with what it used (artifact id, role) and generated."""

    kind: str
    code_version: str
    at_ts: float
    used: list[tuple[str, str]]
    generated: list[str]
    lineage_id: str | None = None
    agent_id: str | None = None
    meta: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ArtifactRow:
    id: str
    kind: str
    created_ts: float
    meta: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RunRow:
    id: int
    kind: str
    lineage_id: str | None
    agent_id: str | None
    code_version: str
    at_ts: float
    meta: dict[str, Any]


@dataclass(frozen=True, slots=True)
class UsedRow:
    run_id: int
    artifact_id: str
    role: str


@dataclass(frozen=True, slots=True)
class GeneratedRow:
    run_id: int
    artifact_id: str


# plots ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlotRow:
    """A rendered plot's record: its recorded query and data, and the events it covers."""

    id: str
    kind: str
    query: dict[str, Any]
    data: dict[str, Any]
    event_ids: list[int]
    code_version: str
    created_ts: float


# counts --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoreCounts:
    """Rows in the main tables (kept by triggers, so reading them costs nothing)."""

    messages: int
    threats: int
    events: int
    open_events: int
    agents: int


class WorkerRow(NamedTuple):
    """An ingest worker's heartbeat."""

    name: str
    host: str
    pid: int
    started_ts: float
    heartbeat_ts: float
    broker_connected: bool
    problems: list[str]
