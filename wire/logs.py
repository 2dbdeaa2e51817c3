"""``secagent/v1/<agent_id>/logs``: an agent's warnings and errors, with the ids they name, so
that ``secagg logs`` and the event page show, across agent and aggregator, what was logged about
a result. Best-effort (QoS 1, never through the outbox) and bounded on both sides."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from wire.payloads import MAX_PAYLOAD_BYTES, PayloadError, WireTime
from wire.topics import AGENT_ID_PATTERN

SCHEMA_LOGS = "secagent.logs/1"
MAX_LINES = 100
MAX_MSG_CHARS = 2000
Id = Field(None, max_length=128)


class LogLine(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)

    at: WireTime
    level: Literal["WARNING", "ERROR", "CRITICAL"]
    logger: str = Field(max_length=128)
    msg: str = Field(max_length=MAX_MSG_CHARS)
    camera: str | None = Id
    frame_id: str | None = Id
    lineage_id: str | None = Id
    message_id: str | None = Id
    release_id: int | None = Field(None, ge=1, le=2**63 - 1)


class LogsMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    schema_: Literal["secagent.logs/1"] = Field("secagent.logs/1", alias="schema")
    agent_id: str = Field(pattern=AGENT_ID_PATTERN)
    lines: list[LogLine] = Field(max_length=MAX_LINES)
    dropped: int = Field(0, ge=0, description="lines the agent dropped since its last message")
    sent_at: WireTime


def parse_logs(raw: bytes) -> LogsMessage:
    """PayloadError (oversize, invalid_json, unknown_schema, schema_violation) or the message."""
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise PayloadError("oversize", f"{len(raw)} bytes > {MAX_PAYLOAD_BYTES}")
    try:
        doc: Any = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise PayloadError("invalid_json", str(exc)[:200]) from exc
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA_LOGS:
        raise PayloadError("unknown_schema", "not a secagent.logs/1 message")
    try:
        return LogsMessage.model_validate(doc)
    except ValidationError as exc:
        raise PayloadError("schema_violation", str(exc)[:500]) from exc


def dump_logs(message: LogsMessage) -> bytes:
    return message.model_dump_json(by_alias=True).encode()
