"""Update reports: queued in the update state (so they survive a restart, and go out in the
order of the changes), published QoS 1 on ``secagent/v1/<agent>/ota/report`` and dropped from
the queue once the broker acknowledged them. Each has a report id; the aggregator stores one
copy of each."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from agent.ota.state import UpdateState


def queue(
    state: UpdateState,
    *,
    agent_id: str,
    kind: str | None,
    release_id: int | None,
    state_name: str,
    reason: str | None = None,
    rollout_id: int | None = None,
    generation: int | None = None,
    frame_id: str | None = None,
    shadow: dict[str, Any] | None = None,
    baseline: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Append a report to ``state.reports`` (the caller saves the state); the releases active
    are those of ``state`` at this moment, over ``baseline`` (what the agent runs of the kinds
    that have no release: the installed model's and rules' sha256)."""
    report: dict[str, Any] = {
        "schema": "secagent.ota_report/1",
        "report_id": uuid.uuid4().hex,
        "agent_id": agent_id,
        "kind": kind,
        "release_id": release_id,
        "generation": generation,
        "rollout_id": rollout_id,
        "state": state_name,
        "reason": reason[:2000] if reason else None,
        "active": {**(baseline or {}), **{k: v.describe() for k, v in state.active.items()}},
        "frame_id": frame_id,
        "shadow": shadow,
        "at": datetime.now(UTC).isoformat(),
    }
    state.reports.append(report)
    return report
