"""Agents heard from (table ``agents``): their last status and their clock."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from aggregator.store.models import AgentRow, StatusUpdate
from aggregator.store.schema import Connection

_COLUMNS = (
    "agent_id, state, last_seen_ts, last_status_ts, status_sent_ts, versions_json, provider, "
    "outbox_depth, outbox_dropped, outbox_oldest_age_s, cameras_json, clock_ts"
)


def _agent(row: Sequence[Any]) -> AgentRow:
    return AgentRow(
        agent_id=row[0],
        state=row[1],
        last_seen_ts=row[2],
        last_status_ts=row[3],
        status_sent_ts=row[4],
        versions=json.loads(row[5]) if row[5] else None,
        provider=row[6],
        outbox_depth=row[7],
        outbox_dropped=row[8],
        outbox_oldest_age_s=row[9],
        cameras=json.loads(row[10]),
        clock_ts=row[11],
    )


def heard_from(conn: Connection, *, agent_id: str, heard_ts: float, clock_ts: float) -> None:
    """A threat message came from this agent: it is online, heard at ``heard_ts`` (our wall
    clock), and its clock is at least ``clock_ts`` (the capture time)."""
    conn.execute(
        "INSERT INTO agents (agent_id, state, last_seen_ts, clock_ts) VALUES (?, 'online', ?, ?) "
        "ON CONFLICT (agent_id) DO UPDATE SET "
        "last_seen_ts = MAX(last_seen_ts, excluded.last_seen_ts), "
        "clock_ts = MAX(COALESCE(clock_ts, excluded.clock_ts), excluded.clock_ts)",
        (agent_id, heard_ts, clock_ts),
    )


def record_status(conn: Connection, status: StatusUpdate) -> float | None:
    """Store a status message unless a newer one (by ``sent_at``) is stored already; returns
    the agent's clock when it was stored, None when it was older."""
    row = conn.execute(
        """INSERT INTO agents (agent_id, state, last_seen_ts, last_status_ts, status_sent_ts,
               versions_json, provider, outbox_depth, outbox_dropped, outbox_oldest_age_s,
               cameras_json, clock_ts)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
           ON CONFLICT (agent_id) DO UPDATE SET
               state = excluded.state, last_seen_ts = MAX(last_seen_ts, excluded.last_seen_ts),
               last_status_ts = excluded.last_status_ts, status_sent_ts = excluded.status_sent_ts,
               versions_json = COALESCE(excluded.versions_json, versions_json),
               provider = COALESCE(excluded.provider, provider),
               outbox_depth = excluded.outbox_depth, outbox_dropped = excluded.outbox_dropped,
               outbox_oldest_age_s = excluded.outbox_oldest_age_s,
               cameras_json = CASE WHEN excluded.cameras_json = '[]' THEN cameras_json
                                   ELSE excluded.cameras_json END,
               clock_ts = MAX(COALESCE(clock_ts, excluded.clock_ts), excluded.clock_ts)
           WHERE agents.status_sent_ts IS NULL OR excluded.status_sent_ts >= agents.status_sent_ts
           RETURNING clock_ts
        """,
        (
            status.agent_id,
            status.state,
            status.heard_ts,
            status.heard_ts,
            status.sent_ts,
            status.versions_json,
            status.provider,
            status.outbox_depth,
            status.outbox_dropped,
            status.outbox_oldest_age_s,
            status.cameras_json,
            status.sent_ts,
        ),
    ).fetchone()
    return None if row is None else float(row[0])


def get(conn: Connection, agent_id: str) -> AgentRow | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM agents WHERE agent_id = ?", (agent_id,)).fetchone()
    return None if row is None else _agent(row)


def list_agents(conn: Connection) -> list[AgentRow]:
    return [_agent(r) for r in conn.execute(f"SELECT {_COLUMNS} FROM agents ORDER BY agent_id")]
