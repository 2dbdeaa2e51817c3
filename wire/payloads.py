"""Pydantic models of the MQTT payloads (topic layout v1), and the functions that parse them on
receipt.

Every payload is JSON with a ``schema`` field ``secagent.<kind>/<major>``. A receiver accepts the
majors it knows and tolerates unknown fields (forward-compatible minor additions); anything else
is a :class:`PayloadError` with a short machine-readable ``reason`` that receivers count.
"""

from __future__ import annotations

import functools
import hashlib
import json
from datetime import UTC
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from wire.topics import AGENT_ID_PATTERN

SCHEMA_THREAT = "secagent.threat/2"
SCHEMA_THREAT_V1 = "secagent.threat/1"
SCHEMA_STATUS = "secagent.status/1"
SCHEMA_EVENT = "secagent.event/1"
SCHEMA_RECEIPT = "secagent.receipt/1"

MAX_PAYLOAD_BYTES = 4 * 1024 * 1024
"""Largest payload a receiver parses; a bigger one is rejected as ``oversize``."""

MAX_SNAPSHOT_B64_CHARS = 3 * 1024 * 1024
MAX_SNAPSHOT_BYTES = MAX_PAYLOAD_BYTES - 64 * 1024
"""Largest snapshot a ``secagent.threat/2`` message announces (the rest is the JSON header)."""
MAX_CONFIG_JSON_BYTES = 256 * 1024
"""Largest agent config (canonical JSON) a status message may carry."""

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="hex sha256")]
Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
Severity = Literal["low", "medium", "high", "critical"]


def _iso_only(value: object) -> object:
    if isinstance(value, int | float):  # pydantic would read a number as a Unix time
        raise ValueError("a time must be an ISO 8601 string, not a number")
    return value


def _utc_representable(value: AwareDatetime) -> AwareDatetime:
    """A time whose offset pushes it past the calendar in UTC (``0001-01-01T00:00+14:00``,
    ``9999-12-31T23:59:59-14:00``) cannot be converted, compared or shown: refused."""
    if 1 < value.year < 9999:
        return value  # an offset (under a day) cannot take it past the calendar
    try:
        value.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError("the time is outside the calendar once converted to UTC") from exc
    return value


WireTime = Annotated[AwareDatetime, BeforeValidator(_iso_only), AfterValidator(_utc_representable)]
"""An ISO 8601 time with its UTC offset (a naive time is refused: whose clock would it be?)."""
SEVERITY_RANK: dict[str, int] = {"low": 1, "medium": 2, "high": 3, "critical": 4}


def canonical_json(value: object) -> bytes:
    """``value`` as canonical JSON: sorted keys, no spaces, ASCII."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def canonical_sha256(value: object) -> str:
    """sha256 of the canonical JSON of ``value``: the version of an agent's config in force
    (``Versions.config_sha256``), which the aggregator can check against the config itself."""
    return hashlib.sha256(canonical_json(value)).hexdigest()


class PayloadError(ValueError):
    """A received payload was refused; ``reason`` is a short counter name."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class _Wire(BaseModel):
    # NaN and infinities are no numbers a detection, a time or a counter can have; SQLite would
    # store NaN as NULL and refuse the row.
    model_config = ConfigDict(
        extra="ignore", frozen=True, populate_by_name=True, allow_inf_nan=False
    )


class Versions(_Wire):
    """What produced a result: code, model file, rules file and agent config, by content hash."""

    code: str = Field(min_length=1, max_length=128, description="secagent code version")
    model_sha256: Sha256
    rules_sha256: Sha256
    config_sha256: Sha256


class FrameRef(_Wire):
    """The frame a message is about."""

    frame_id: str = Field(min_length=1, max_length=128)
    sha256: Sha256 = Field(
        description="sha256 of the file bytes (stills) or raw BGR pixels (video)"
    )
    kind: Literal["file", "video"]
    source: str = Field(max_length=1024, description="file path, or video path#frame index")
    captured_at: WireTime
    width: int = Field(ge=1, le=16384)
    height: int = Field(ge=1, le=16384)


class DetectionOut(_Wire):
    label: Name
    class_id: int = Field(ge=0)
    score: float = Field(ge=0.0, le=1.0)
    xyxy: tuple[float, float, float, float] = Field(description="box in frame pixels")


class ThreatOut(DetectionOut):
    rule: Name
    severity: Severity


BOX_TOLERANCE_PX = 1.0
"""How far a box corner may lie outside the frame (agents clip boxes to the frame; rounding)."""
B64_PATTERN = r"^[A-Za-z0-9+/]*={0,2}$"


def check_box(xyxy: tuple[float, float, float, float], *, width: int, height: int) -> str | None:
    """Why a box is not a box of a ``width`` x ``height`` frame, or None: corners in order
    (x1 <= x2, y1 <= y2) and inside the frame (:data:`BOX_TOLERANCE_PX`)."""
    x1, y1, x2, y2 = xyxy
    if x2 < x1 or y2 < y1:
        return f"corners out of order: {list(xyxy)}"
    tol = BOX_TOLERANCE_PX
    if x1 < -tol or y1 < -tol or x2 > width + tol or y2 > height + tol:
        return f"{list(xyxy)} lies outside the {width}x{height} frame"
    return None


class SnapshotRef(_Wire):
    """The JPEG snapshot that travels with a ``secagent.threat/2`` message as the binary
    attachment of its envelope (:mod:`wire.envelope`), not inside the JSON."""

    sha256: Sha256 = Field(description="sha256 of the JPEG bytes")
    size: int = Field(ge=1, le=MAX_SNAPSHOT_BYTES, description="length of the JPEG in bytes")


class ThreatFields(_Wire):
    """What every version of a threat message says about its frame."""

    message_id: str = Field(pattern=r"^[0-9a-f]{32}$", description="uuid4 hex, unique per message")
    agent_id: str = Field(pattern=AGENT_ID_PATTERN)
    camera: Name
    lineage_id: str = Field(
        pattern=r"^[0-9a-f]{32}$", description="shared by all runs of the frame"
    )
    frame: FrameRef
    detections: list[DetectionOut] = Field(max_length=1000)
    threats: list[ThreatOut] = Field(min_length=1, max_length=1000)
    versions: Versions
    sent_at: WireTime

    @model_validator(mode="after")
    def _boxes_in_frame(self) -> ThreatFields:
        w, h = self.frame.width, self.frame.height
        for name, items in (("detections", self.detections), ("threats", self.threats)):
            for i, d in enumerate(items):
                problem = check_box(d.xyxy, width=w, height=h)
                if problem is not None:
                    raise ValueError(f"{name}.{i}.xyxy: {problem}")
        return self


class ThreatMessage(ThreatFields):
    """``secagent/v1/<agent_id>/threats``: one message per frame that had threats. Its JPEG
    snapshot, if any, is announced by ``snapshot`` and travels as raw bytes after the JSON in a
    binary envelope (:func:`wire.envelope.pack_threat`); without a snapshot the message is plain
    JSON."""

    schema_: Literal["secagent.threat/2"] = Field("secagent.threat/2", alias="schema")
    snapshot: SnapshotRef | None = Field(None, description="the attached JPEG, if any")


class ThreatMessageV1(ThreatFields):
    """``secagent.threat/1``, what agents before ``secagent.threat/2`` send (and agents with
    ``snapshot.wire: base64``): plain JSON with the snapshot in base64 inside it. Still
    accepted."""

    schema_: Literal["secagent.threat/1"] = Field("secagent.threat/1", alias="schema")
    snapshot_jpeg_b64: str | None = Field(
        None, max_length=MAX_SNAPSHOT_B64_CHARS, pattern=B64_PATTERN
    )


class CameraStatus(_Wire):
    name: Name
    state: Literal["running", "finished", "down"]
    counters: dict[str, int] = Field(default_factory=dict)
    detail: str | None = Field(None, max_length=1000, description="why the camera is down")


class OutboxLoss(_Wire):
    """An outbox file found broken at start and set aside: what it held is lost to the
    aggregator (counted when the broken file could still be read)."""

    at: WireTime = Field(description="when the agent found it")
    reason: str = Field(max_length=500, description="what SQLite said about the file")
    moved_to: str = Field(max_length=1024, description="where the broken file was moved")
    messages: int | None = Field(None, ge=0, description="messages it held (None: unreadable)")
    first_at: WireTime | None = Field(None, description="when the oldest of them was committed")
    last_at: WireTime | None = Field(None, description="when the newest of them was committed")


class StatusMessage(_Wire):
    """``secagent/v1/<agent_id>/status`` (retained; the last will says offline)."""

    schema_: Literal["secagent.status/1"] = Field("secagent.status/1", alias="schema")
    agent_id: str = Field(pattern=AGENT_ID_PATTERN)
    state: Literal["online", "offline"]
    versions: Versions | None = None
    provider: str | None = None
    inference_ms: float | None = Field(
        None, ge=0, description="recent mean time of one inference (one batch), milliseconds"
    )
    cameras: list[CameraStatus] = Field(default_factory=list)
    outbox_depth: int = Field(0, ge=0)
    outbox_dropped: int = Field(0, ge=0, description="messages dropped to keep the bound")
    outbox_oldest_age_s: float = Field(0.0, ge=0, description="age of the oldest unsent message")
    outbox_lost: list[OutboxLoss] = Field(
        default_factory=list,
        max_length=100,
        description="outbox files found broken at start and set aside, newest last",
    )
    config: dict[str, Any] | None = Field(
        None,
        description="the agent config in force (defaults filled in, secrets left out); its "
        "canonical JSON's sha256 is versions.config_sha256",
    )
    sent_at: WireTime

    @model_validator(mode="after")
    def _config_is_the_versioned_one(self) -> StatusMessage:
        if self.config is None:
            return self
        if len(canonical_json(self.config)) > MAX_CONFIG_JSON_BYTES:
            raise ValueError(f"config is larger than {MAX_CONFIG_JSON_BYTES} bytes")
        if self.versions is None or canonical_sha256(self.config) != self.versions.config_sha256:
            raise ValueError("config does not have the sha256 of versions.config_sha256")
        return self


class EventMessage(_Wire):
    """``secagent/v1/events``: threat event lifecycle for third-party subscribers."""

    schema_: Literal["secagent.event/1"] = Field("secagent.event/1", alias="schema")
    type: Literal["new", "update", "end"]
    event_id: int = Field(ge=1)
    agent_id: str
    camera: Name
    rule: Name
    severity: Severity
    label: Name
    started_at: WireTime
    last_seen_at: WireTime
    ended_at: WireTime | None = None
    threat_count: int = Field(ge=1)
    top_score: float = Field(ge=0.0, le=1.0)
    cameras: list[Name] = Field(
        default_factory=list, max_length=1000, description="every camera of the event (a site)"
    )
    summary: str | None = Field(None, max_length=2000, description="one line for humans")

    @model_validator(mode="after")
    def _end_has_time(self) -> EventMessage:
        if self.type == "end" and self.ended_at is None:
            raise ValueError("an 'end' message needs ended_at")
        return self


class Refusal(_Wire):
    message_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    reason: str = Field(max_length=64)


class ReceiptMessage(_Wire):
    """``secagent/v1/<agent_id>/receipts``: the aggregator has *committed* these threat messages
    (``stored``, duplicates included) or refused them for good (``refused``); the agent may
    forget them. Until then they stay in its outbox and are sent again after a reconnect."""

    schema_: Literal["secagent.receipt/1"] = Field("secagent.receipt/1", alias="schema")
    agent_id: str = Field(pattern=AGENT_ID_PATTERN)
    stored: list[str] = Field(default_factory=list, max_length=10_000)
    refused: list[Refusal] = Field(default_factory=list, max_length=10_000)
    sent_at: WireTime


_SCHEMAS: dict[str, type[_Wire]] = {
    SCHEMA_THREAT: ThreatMessage,
    SCHEMA_THREAT_V1: ThreatMessageV1,
    SCHEMA_STATUS: StatusMessage,
    SCHEMA_EVENT: EventMessage,
    SCHEMA_RECEIPT: ReceiptMessage,
}
M = TypeVar("M", bound=_Wire)


def register_schema(name: str, model: type[_Wire]) -> None:
    """Make :func:`parse_payload` know a schema defined in another module (``wire.ota``)."""
    _SCHEMAS[name] = model


def dump_payload(message: _Wire) -> bytes:
    """Serialise a wire model to compact JSON bytes (with the ``schema`` field)."""
    return message.model_dump_json(by_alias=True).encode()


def parse_payload(raw: bytes, expected: type[M]) -> M:
    """Parse and validate ``raw`` as ``expected``; PayloadError with a counted reason otherwise.

    Reasons: ``oversize``, ``invalid_json``, ``not_an_object``, ``missing_schema``,
    ``unknown_schema`` (a kind or major version this code does not know), ``wrong_schema``
    (a known schema on the wrong topic), ``schema_violation``.
    """
    parsed = parse_payload_of(raw, (expected,))
    assert isinstance(parsed, expected)
    return parsed


def parse_payload_of(raw: bytes, expected: tuple[type[_Wire], ...]) -> _Wire:
    """:func:`parse_payload` for a topic that takes several schemas (the threats topic takes
    both majors of a threat message): the one the payload names, if it is among ``expected``."""
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise PayloadError("oversize", f"{len(raw)} bytes > {MAX_PAYLOAD_BYTES}")
    if len(expected) > 1:  # the model the payload names near its start first: one pass, not two
        head = raw[:512]
        expected = tuple(sorted(expected, key=lambda m: _schema_mark(m) not in head))
    for model in expected:
        try:
            parsed = model.model_validate_json(raw)  # fast path: one pass in pydantic-core
            if "schema_" in parsed.model_fields_set:  # the default does not count as a schema
                return parsed
        except (ValidationError, RecursionError, ValueError):
            pass  # another model, or classify the failure below
    try:
        doc: Any = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise PayloadError("invalid_json", str(exc)[:200]) from exc
    if not isinstance(doc, dict):
        raise PayloadError("not_an_object", f"top level is {type(doc).__name__}")
    schema = doc.get("schema")
    if not isinstance(schema, str):
        raise PayloadError("missing_schema", "no string 'schema' field")
    named = _SCHEMAS.get(schema)
    if named is None:
        raise PayloadError("unknown_schema", f"{schema[:80]!r} is not one of {sorted(_SCHEMAS)}")
    if named not in expected:
        names = " or ".join(m.__name__ for m in expected)
        raise PayloadError("wrong_schema", f"{schema!r} where {names} was expected")
    try:
        return named.model_validate(doc)
    except (ValidationError, RecursionError) as exc:
        raise PayloadError("schema_violation", _short(exc)) from exc


@functools.cache
def _schema_mark(model: type[_Wire]) -> bytes:
    return f'"{model.model_fields["schema_"].default}"'.encode()


def _short(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        return f"{exc.error_count()} error(s), first at {loc or '<root>'}: {first['msg']}"
    return type(exc).__name__
