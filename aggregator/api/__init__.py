"""The REST API (FastAPI): health, threats, threat events with their provenance, agents,
notifications, lineage graphs, plots."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI

from aggregator.api.routes import agents, events, health, notifications, plots, provenance, threats
from aggregator.config import AggregatorConfig, get_settings
from aggregator.liveness import NO_INGEST, Liveness
from appcommon.version import code_version


def create_app(
    config: AggregatorConfig | None = None, *, liveness: Callable[[], Liveness] | None = None
) -> FastAPI:
    """The API app. ``config`` overrides :func:`get_settings` (what ``secagg serve`` does);
    ``liveness`` reports the ingest running beside it (none: the health endpoint says degraded)."""
    app = FastAPI(
        title="secagg",
        version=code_version(),
        description="Threats and threat events from secagent edge agents, with provenance.",
    )
    if config is not None:
        app.dependency_overrides[get_settings] = lambda: config
    app.state.liveness = liveness or (lambda: NO_INGEST)
    for module in (health, threats, events, agents, notifications, provenance, plots):
        app.include_router(module.router)
    return app


__all__ = ["create_app"]
