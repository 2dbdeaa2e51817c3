from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from aggregator import store
from aggregator.api.access import AUTH_RESPONSES, HealthAccess
from aggregator.api.deps import Db
from aggregator.api.schemas import Health, WorkerHealth
from aggregator.liveness import WORKER_STALE_S, Liveness
from appcommon.version import code_version


def worker_problems(workers: list[WorkerHealth]) -> list[str]:
    """Ingest workers that stopped beating (killed, not stopped) or report a problem."""
    found: list[str] = []
    for w in workers:
        if w.heartbeat_age_s > WORKER_STALE_S:
            found.append(
                f"ingest worker {w.name} (pid {w.pid} on {w.host}) not heard from for "
                f"{w.heartbeat_age_s:.0f} s"
            )
        found += [f"ingest worker {w.name}: {p}" for p in w.problems]
    return found


router = APIRouter(tags=["health"], dependencies=[HealthAccess], responses=AUTH_RESPONSES)


@router.get(
    "/api/ping",
    summary="The server answers (no store, no ingest): a load balancer's cheapest check",
)
async def ping() -> dict[str, bool]:
    return {"ok": True}


@router.get(
    "/api/health",
    response_model=Health,
    summary="Service health and ingest counters (503 with the same body when degraded)",
    responses={
        503: {
            "model": Health,
            "description": "degraded: the broker is not connected, or the store writer is not "
            "running or has stalled (see problems)",
        }
    },
)
async def health(conn: Db, request: Request) -> Health | JSONResponse:
    liveness: Liveness = request.app.state.liveness()
    counts = store.counters.row_counts(conn)
    counters = store.counters.ingest_counters(conn)
    now_ts = time.time()
    workers = [
        WorkerHealth(
            name=w.name,
            host=w.host,
            pid=w.pid,
            heartbeat_age_s=round(now_ts - w.heartbeat_ts, 1),
            broker_connected=w.broker_connected,
            problems=w.problems,
        )
        for w in store.workers.all_of(conn)
    ]
    problems = liveness.problems + worker_problems(workers)
    body = Health(
        status="degraded" if problems else "ok",
        problems=problems,
        broker_connected=liveness.broker_connected,
        writer_alive=liveness.writer_alive,
        writer_stalled=liveness.writer_stalled,
        code_version=code_version(),
        messages=counts.messages,
        threats=counts.threats,
        events=counts.events,
        open_events=counts.open_events,
        agents=counts.agents,
        rejected={
            k.removeprefix("rejected_"): v for k, v in counters.items() if k.startswith("rejected_")
        },
        counters=counters,
        workers=workers,
    )
    if not problems:
        return body
    return JSONResponse(body.model_dump(mode="json"), status_code=503)
