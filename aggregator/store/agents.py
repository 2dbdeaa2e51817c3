"""Agents heard from (table ``agents``): their last status and their clock."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from aggregator.store.backend import greatest
from aggregator.store.models import AgentRow, StatusUpdate
from aggregator.store.schema import Connection

_COLUMNS = (
    "agent_id, state, last_seen_ts, last_status_ts, status_sent_ts, versions_json, provider, "
    "outbox_depth, outbox_dropped, outbox_oldest_age_s, cameras_json, clock_ts, "
    "outbox_lost_json, inference_ms"
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
        outbox_lost=json.loads(row[12] or "[]"),
        inference_ms=row[13],
    )


_CLOCK = (
    "clock_ts = CASE WHEN agents.clock_ts IS NULL OR agents.clock_ts > :clock_max "
    "THEN excluded.clock_ts ELSE {greatest}(agents.clock_ts, excluded.clock_ts) END"
)
"""An agent's clock only moves forward, unless it stands beyond ``clock_max`` (a time stored
before times were checked against a window): then the next time heard replaces it.
(``{greatest}``: the scalar maximum of the backend, :func:`.backend.greatest`; columns of the
stored row are named with their table, which PostgreSQL requires in ``DO UPDATE``.)"""


def _heard(g: str) -> str:
    return (
        "INSERT INTO agents (agent_id, state, last_seen_ts, clock_ts) "
        "VALUES (:agent_id, 'online', :heard, :clock) "
        "ON CONFLICT (agent_id) DO UPDATE SET "
        f"last_seen_ts = {g}(agents.last_seen_ts, excluded.last_seen_ts), "
        + _CLOCK.format(greatest=g)
    )


_HEARD = {g: _heard(g) for g in ("MAX", "GREATEST")}


def _heard_sql(conn: Connection) -> str:
    return _HEARD[greatest(conn)]


def heard_from(
    conn: Connection, *, agent_id: str, heard_ts: float, clock_ts: float, clock_max_ts: float
) -> None:
    """A threat message came from this agent: it is online, heard at ``heard_ts`` (our wall
    clock), and its clock is at least ``clock_ts`` (the capture time)."""
    conn.execute(
        _heard_sql(conn),
        {"agent_id": agent_id, "heard": heard_ts, "clock": clock_ts, "clock_max": clock_max_ts},
    )


def _with_fps(conn: Connection, status: StatusUpdate) -> str:
    """The status's cameras, each with ``fps``: frames captured per second of the agent's clock
    since its previous status (kept from before when the counter did not move forward)."""
    cameras: list[dict[str, Any]] = json.loads(status.cameras_json)
    if not cameras:
        return status.cameras_json
    row = conn.execute(
        "SELECT cameras_json, status_sent_ts FROM agents WHERE agent_id = ?", (status.agent_id,)
    ).fetchone()
    if row is None or row[1] is None or status.sent_ts <= row[1]:
        return status.cameras_json
    before = {c.get("name"): c for c in json.loads(row[0] or "[]")}
    for camera in cameras:
        old = before.get(camera.get("name"))
        if old is None:
            continue
        delta = camera.get("counters", {}).get("captured", 0) - old.get("counters", {}).get(
            "captured", 0
        )
        if delta >= 0:
            camera["fps"] = round(delta / (status.sent_ts - row[1]), 2)
        elif "fps" in old:
            camera["fps"] = old["fps"]
    return json.dumps(cameras)


def heard_from_many(
    conn: Connection, *, heard_ts: float, clocks: dict[str, float], clock_max_ts: float
) -> None:
    """:func:`heard_from` for a batch: each agent's latest capture time in it (its clock only
    moves forward, so the latest is all that counts)."""
    conn.executemany(
        _heard_sql(conn),
        [
            {"agent_id": a, "heard": heard_ts, "clock": clock, "clock_max": clock_max_ts}
            for a, clock in clocks.items()
        ],
    )


def record_status(conn: Connection, status: StatusUpdate, *, clock_max_ts: float) -> float | None:
    """Store a status message unless a newer one (by ``sent_at``) is stored already; returns
    the agent's clock when it was stored, None when it was older.

    Two exceptions to "newer wins": an ``offline`` over an ``online`` record always applies (the
    broker's last will carries the time the agent connected, older than its later statuses),
    and a stored ``sent_at`` beyond ``clock_max_ts`` (stored before times were checked) is
    no reason to refuse anything.

    Each camera gets its frame rate (``fps``) since the agent's previous status, from its
    ``captured`` counter."""
    cameras_json = _with_fps(conn, status)
    g = greatest(conn)
    row = conn.execute(
        f"""INSERT INTO agents (agent_id, state, last_seen_ts, last_status_ts, status_sent_ts,
               versions_json, provider, outbox_depth, outbox_dropped, outbox_oldest_age_s,
               cameras_json, clock_ts, outbox_lost_json, inference_ms)
           VALUES (:agent_id, :state, :heard, :heard, :sent, :versions, :provider, :depth,
                   :dropped, :oldest, :cameras, :sent, :lost, :inference_ms)
           ON CONFLICT (agent_id) DO UPDATE SET
               state = excluded.state,
               last_seen_ts = {g}(agents.last_seen_ts, excluded.last_seen_ts),
               last_status_ts = excluded.last_status_ts,
               status_sent_ts = CASE WHEN agents.status_sent_ts > :clock_max
                                     THEN excluded.status_sent_ts
                                     ELSE {g}(COALESCE(agents.status_sent_ts,
                                                       excluded.status_sent_ts),
                                              excluded.status_sent_ts) END,
               versions_json = COALESCE(excluded.versions_json, agents.versions_json),
               provider = COALESCE(excluded.provider, agents.provider),
               outbox_depth = excluded.outbox_depth, outbox_dropped = excluded.outbox_dropped,
               outbox_oldest_age_s = excluded.outbox_oldest_age_s,
               cameras_json = CASE WHEN excluded.cameras_json = '[]' THEN agents.cameras_json
                                   ELSE excluded.cameras_json END,
               inference_ms = COALESCE(excluded.inference_ms, agents.inference_ms),
               outbox_lost_json = CASE WHEN excluded.outbox_lost_json = '[]'
                                       THEN agents.outbox_lost_json
                                       ELSE excluded.outbox_lost_json END,
               {_CLOCK.format(greatest=g)}
           WHERE agents.status_sent_ts IS NULL OR excluded.status_sent_ts >= agents.status_sent_ts
               OR agents.status_sent_ts > :clock_max
               OR (excluded.state = 'offline' AND agents.state = 'online')
           RETURNING clock_ts
        """,
        {
            "agent_id": status.agent_id,
            "state": status.state,
            "heard": status.heard_ts,
            "sent": status.sent_ts,
            "versions": status.versions_json,
            "provider": status.provider,
            "depth": status.outbox_depth,
            "dropped": status.outbox_dropped,
            "oldest": status.outbox_oldest_age_s,
            "cameras": cameras_json,
            "inference_ms": status.inference_ms,
            "lost": status.outbox_lost_json,
            "clock_max": clock_max_ts,
        },
    ).fetchone()
    return None if row is None else float(row[0])


def get(conn: Connection, agent_id: str) -> AgentRow | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM agents WHERE agent_id = ?", (agent_id,)).fetchone()
    return None if row is None else _agent(row)


def list_agents(conn: Connection) -> list[AgentRow]:
    return [_agent(r) for r in conn.execute(f"SELECT {_COLUMNS} FROM agents ORDER BY agent_id")]
