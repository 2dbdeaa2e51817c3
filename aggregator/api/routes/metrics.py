"""``GET /metrics``: Prometheus' text format (:mod:`aggregator.metrics`)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from aggregator.api.access import AUTH_RESPONSES, Bearer, Cookie, check_role, principal
from aggregator.api.deps import Db, Settings
from aggregator.auth.roles import Principal, Role
from aggregator.metrics import AggregatorMetrics


async def _metrics_access(
    request: Request, settings: Settings, conn: Db, bearer: Bearer, cookie: Cookie
) -> Principal | None:
    if settings.auth.public_metrics:
        return None
    return check_role(request, await principal(request, conn, bearer, cookie), Role.viewer)


router = APIRouter(tags=["health"], responses=AUTH_RESPONSES)


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    summary="Prometheus metrics: ingest counters and batch latency, open events, notifications "
    "by state, API latency (a viewer token, or none when auth.public_metrics)",
    dependencies=[Depends(_metrics_access)],
)
def metrics(request: Request) -> PlainTextResponse:
    found: AggregatorMetrics = request.app.state.metrics
    return PlainTextResponse(generate_latest(found.registry), media_type=CONTENT_TYPE_LATEST)
