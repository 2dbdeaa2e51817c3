"""Staged rollouts (tables ``rollouts`` and ``rollout_agents``): a release pushed to agents in
groups, each agent's state in it, and what it had before (to go back to)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aggregator.store.schema import Connection


@dataclass(frozen=True, slots=True)
class RolloutRow:
    id: int
    release_id: int
    mode: str
    shadow_fraction: float
    state: str
    reason: str | None
    current_group: int
    success_threshold: float
    error_threshold: float
    created_ts: float
    updated_ts: float


@dataclass(frozen=True, slots=True)
class RolloutAgentRow:
    rollout_id: int
    agent_id: str
    group_index: int
    state: str
    reason: str | None
    previous: dict[str, Any]
    updated_ts: float


_ROLLOUT = (
    "id, release_id, mode, shadow_fraction, state, reason, current_group, success_threshold, "
    "error_threshold, created_ts, updated_ts"
)
_AGENT = "rollout_id, agent_id, group_index, state, reason, previous_json, updated_ts"


def _rollout(row: Sequence[Any]) -> RolloutRow:
    return RolloutRow(*row)


def _agent(row: Sequence[Any]) -> RolloutAgentRow:
    return RolloutAgentRow(row[0], row[1], row[2], row[3], row[4], json.loads(row[5]), row[6])


def create(
    conn: Connection,
    *,
    release_id: int,
    mode: str,
    shadow_fraction: float,
    groups: list[list[str]],
    success_threshold: float,
    error_threshold: float,
    now_ts: float,
) -> int:
    (rollout_id,) = conn.execute(
        "INSERT INTO rollouts (release_id, mode, shadow_fraction, state, current_group, "
        "success_threshold, error_threshold, created_ts, updated_ts) "
        "VALUES (?, ?, ?, 'running', 0, ?, ?, ?, ?) RETURNING id",
        (release_id, mode, shadow_fraction, success_threshold, error_threshold, now_ts, now_ts),
    ).fetchone()
    conn.executemany(
        f"INSERT INTO rollout_agents ({_AGENT}) VALUES (?, ?, ?, 'pending', NULL, '{{}}', ?)",
        [(rollout_id, a, i, now_ts) for i, group in enumerate(groups) for a in group],
    )
    return int(rollout_id)


def get(conn: Connection, rollout_id: int) -> RolloutRow | None:
    row = conn.execute(f"SELECT {_ROLLOUT} FROM rollouts WHERE id = ?", (rollout_id,)).fetchone()
    return None if row is None else _rollout(row)


def list_rollouts(conn: Connection, *, states: Sequence[str] | None = None) -> list[RolloutRow]:
    if states is None:
        rows = conn.execute(f"SELECT {_ROLLOUT} FROM rollouts ORDER BY id DESC")
    else:
        marks = ", ".join("?" for _ in states)
        rows = conn.execute(
            f"SELECT {_ROLLOUT} FROM rollouts WHERE state IN ({marks}) ORDER BY id", tuple(states)
        )
    return [_rollout(r) for r in rows]


def update(
    conn: Connection,
    rollout_id: int,
    *,
    now_ts: float,
    state: str | None = None,
    reason: str | None = None,
    current_group: int | None = None,
    mode: str | None = None,
) -> None:
    conn.execute(
        "UPDATE rollouts SET state = COALESCE(?, state), reason = COALESCE(?, reason), "
        "current_group = COALESCE(?, current_group), mode = COALESCE(?, mode), updated_ts = ? "
        "WHERE id = ?",
        (state, reason, current_group, mode, now_ts, rollout_id),
    )


def agents(conn: Connection, rollout_id: int) -> list[RolloutAgentRow]:
    rows = conn.execute(
        f"SELECT {_AGENT} FROM rollout_agents WHERE rollout_id = ? ORDER BY group_index, agent_id",
        (rollout_id,),
    )
    return [_agent(r) for r in rows]


def set_agent(
    conn: Connection,
    rollout_id: int,
    agent_id: str,
    *,
    state: str,
    now_ts: float,
    reason: str | None = None,
    previous: dict[str, Any] | None = None,
) -> None:
    conn.execute(
        "UPDATE rollout_agents SET state = ?, reason = ?, updated_ts = ?, "
        "previous_json = COALESCE(?, previous_json) WHERE rollout_id = ? AND agent_id = ?",
        (
            state,
            reason,
            now_ts,
            None if previous is None else json.dumps(previous, sort_keys=True),
            rollout_id,
            agent_id,
        ),
    )
