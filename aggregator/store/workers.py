"""The ingest workers on this store and their heartbeats (table ``ingest_workers``): each
worker writes its own row, the api process reads them for ``/api/health``."""

from __future__ import annotations

import json

from aggregator.store.models import WorkerRow
from aggregator.store.schema import Connection


def beat(conn: Connection, worker: WorkerRow) -> None:
    """A worker says it is alive, and how it is."""
    conn.execute(
        "INSERT INTO ingest_workers (name, host, pid, started_ts, heartbeat_ts, "
        "broker_connected, problems) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE "
        "SET host = excluded.host, pid = excluded.pid, started_ts = excluded.started_ts, "
        "heartbeat_ts = excluded.heartbeat_ts, broker_connected = excluded.broker_connected, "
        "problems = excluded.problems",
        (
            worker.name,
            worker.host,
            worker.pid,
            worker.started_ts,
            worker.heartbeat_ts,
            int(worker.broker_connected),
            json.dumps(worker.problems),
        ),
    )


def leave(conn: Connection, name: str) -> None:
    """A worker stopped cleanly: it is no longer expected."""
    conn.execute("DELETE FROM ingest_workers WHERE name = ?", (name,))


def all_of(conn: Connection) -> list[WorkerRow]:
    """Every worker that has not left, by name."""
    rows = conn.execute(
        "SELECT name, host, pid, started_ts, heartbeat_ts, broker_connected, problems "
        "FROM ingest_workers ORDER BY name"
    )
    return [
        WorkerRow(
            name=r[0],
            host=r[1],
            pid=r[2],
            started_ts=r[3],
            heartbeat_ts=r[4],
            broker_connected=bool(r[5]),
            problems=list(json.loads(r[6])),
        )
        for r in rows
    ]
