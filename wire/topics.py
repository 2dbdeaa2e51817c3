"""MQTT topic layout, v1: ``secagent/v1/<agent_id>/<kind>``."""

from __future__ import annotations

import re
from dataclasses import dataclass

PREFIX = "secagent/v1"
AGENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_AGENT_ID_RE = re.compile(AGENT_ID_PATTERN)


class TopicError(ValueError):
    """A topic does not follow the secagent/v1 layout."""


def check_agent_id(agent_id: str) -> str:
    """Return ``agent_id`` if it is usable as one MQTT topic level, else raise TopicError."""
    if not _AGENT_ID_RE.match(agent_id):
        raise TopicError(
            f"agent id {agent_id!r} must match {AGENT_ID_PATTERN} (letters, digits, '_', '.', '-')"
        )
    return agent_id


@dataclass(frozen=True)
class Topics:
    """The topics of one agent, plus the aggregator's public ones."""

    agent_id: str

    def __post_init__(self) -> None:
        check_agent_id(self.agent_id)

    @property
    def status(self) -> str:
        return f"{PREFIX}/{self.agent_id}/status"

    @property
    def threats(self) -> str:
        return f"{PREFIX}/{self.agent_id}/threats"

    @property
    def receipts(self) -> str:
        """Aggregator -> agent: which of its threat messages are stored (or refused)."""
        return f"{PREFIX}/{self.agent_id}/receipts"

    @property
    def ota(self) -> str:
        return f"{PREFIX}/{self.agent_id}/ota"

    @property
    def ota_report(self) -> str:
        return f"{PREFIX}/{self.agent_id}/ota/report"

    @property
    def logs(self) -> str:
        """Agent -> aggregator: its warnings and errors (best-effort)."""
        return f"{PREFIX}/{self.agent_id}/logs"

    # Subscriptions of the aggregator (all agents).
    ALL_THREATS = f"{PREFIX}/+/threats"
    ALL_STATUS = f"{PREFIX}/+/status"
    ALL_OTA_REPORTS = f"{PREFIX}/+/ota/report"
    ALL_LOGS = f"{PREFIX}/+/logs"
    EVENTS = f"{PREFIX}/events"

    @staticmethod
    def agent_of(topic: str) -> str:
        """The agent id in ``secagent/v1/<agent_id>/...``; TopicError when the layout differs."""
        parts = topic.split("/")
        if len(parts) < 4 or f"{parts[0]}/{parts[1]}" != PREFIX:
            raise TopicError(f"topic {topic!r} is not under {PREFIX}/<agent_id>/")
        return check_agent_id(parts[2])
