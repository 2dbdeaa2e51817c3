"""The REST API (FastAPI): health, threats, threat events with their provenance, agents,
notifications, lineage graphs, plots. ``/docs`` (Swagger UI) and ``/redoc`` load their scripts
and styles from this server (the pinned ``fastapi-offline`` package ships them), never from a
CDN: an aggregator on a site network without internet still shows them."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from aggregator import store, web
from aggregator.api.routes import (
    agents,
    events,
    health,
    links,
    logs,
    metrics,
    notifications,
    ota,
    plots,
    provenance,
    reproduce,
    threats,
    tokens,
)
from aggregator.auth import secrets
from aggregator.auth.throttle import LoginThrottle
from aggregator.config import AggregatorConfig
from aggregator.liveness import NO_INGEST, Liveness
from aggregator.metrics import AggregatorMetrics, TimedRequests
from appcommon.version import code_version

DOCS_STATIC_URL = "/static/docs"
"""Where the Swagger UI and ReDoc assets are served."""


def create_app(
    config: AggregatorConfig | None = None,
    *,
    liveness: Callable[[], Liveness] | None = None,
    service_token: str | None = None,
    metrics_of: AggregatorMetrics | None = None,
    worker_number: int | None = None,
) -> FastAPI:
    """The API app. ``config`` replaces :func:`get_settings` (what ``secagg serve`` does);
    ``liveness`` reports the ingest running beside it (none: the health endpoint says degraded);
    ``service_token`` is a bearer token that secagg's own health probe sends (viewer; it is
    never written anywhere); ``metrics_of`` the metrics of the service around it (none: of the
    API alone); ``worker_number``: which of the processes answering the port this is (0 the
    service, 1..N its HTTP workers; sent as ``X-Secagg-Worker``), none with one process."""
    if config is not None:  # BackendIncomplete: no API over half a PostgreSQL store
        store.require_complete(config.store.target)
    app = FastAPIOffline(
        title="secagg",
        version=code_version(),
        description="Threats and threat events from secagent edge agents, with provenance.",
        static_url=DOCS_STATIC_URL,
        # Swagger UI would otherwise ask validator.swagger.io about the schema
        swagger_ui_parameters={"validatorUrl": None},
    )
    # The config is the app's own (read by deps.app_settings): a dependency override would
    # make FastAPI inspect the override's signature again on every request (0.5 ms each).
    app.state.config = config
    app.state.liveness = liveness or (lambda: NO_INGEST)
    app.state.read_pools = {}
    app.state.plot_rate = plots.PlotRate()
    app.state.service_token = None if service_token is None else secrets.digest(service_token)
    auth = (config or AggregatorConfig()).auth
    app.state.login_throttle = LoginThrottle(
        max_failures=auth.login_max_failures, window_s=auth.login_window_s
    )
    app.state.reproduce_lock = reproduce.ReproduceLock()
    routers = (health, threats, events, agents, notifications, provenance, plots, ota, tokens)
    app.state.metrics = metrics_of or AggregatorMetrics(config or AggregatorConfig())
    app.add_middleware(TimedRequests, metrics=app.state.metrics, worker_number=worker_number)
    for module in (*routers, reproduce, links, logs, metrics):
        app.include_router(module.router)
    app.include_router(ota.api_router)
    web.mount(app)
    return app


__all__ = ["DOCS_STATIC_URL", "create_app"]
