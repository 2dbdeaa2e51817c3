from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from aggregator import store
from aggregator.api.access import AUTH_RESPONSES, HealthAccess
from aggregator.api.deps import Db
from aggregator.api.schemas import Health
from aggregator.liveness import Liveness
from appcommon.version import code_version

router = APIRouter(tags=["health"], dependencies=[HealthAccess], responses=AUTH_RESPONSES)


@router.get(
    "/api/ping",
    summary="The server answers (no store, no ingest): a load balancer's cheapest check",
)
def ping() -> dict[str, bool]:
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
def health(conn: Db, request: Request) -> Health | JSONResponse:
    liveness: Liveness = request.app.state.liveness()
    counts = store.counters.row_counts(conn)
    counters = store.counters.ingest_counters(conn)
    body = Health(
        status="ok" if liveness.ok else "degraded",
        problems=liveness.problems,
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
    )
    if liveness.ok:
        return body
    return JSONResponse(body.model_dump(mode="json"), status_code=503)
