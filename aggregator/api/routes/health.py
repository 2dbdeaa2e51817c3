from __future__ import annotations

from fastapi import APIRouter, Request

from aggregator import store
from aggregator.api.deps import Db
from aggregator.api.schemas import Health
from appcommon.version import code_version

router = APIRouter(tags=["health"])


@router.get("/api/health", response_model=Health, summary="Service health and ingest counters")
def health(conn: Db, request: Request) -> Health:
    def count(sql: str) -> int:
        return int(conn.execute(sql).fetchone()[0])

    connected = bool(request.app.state.broker_connected())
    counters = store.counters(conn)
    return Health(
        status="ok" if connected else "degraded",
        broker_connected=connected,
        code_version=code_version(),
        messages=count("SELECT COUNT(*) FROM messages"),
        threats=count("SELECT COUNT(*) FROM threats"),
        events=count("SELECT COUNT(*) FROM events"),
        open_events=count("SELECT COUNT(*) FROM events WHERE ended_ts IS NULL"),
        agents=count("SELECT COUNT(*) FROM agents"),
        rejected={
            k.removeprefix("rejected_"): v for k, v in counters.items() if k.startswith("rejected_")
        },
        counters=counters,
    )
