"""The REST API (FastAPI): health, threats, threat events with their provenance, agents,
notifications, lineage graphs, plots."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI

from aggregator.api.routes import agents, events, health, notifications, plots, provenance, threats
from aggregator.config import AggregatorConfig, get_settings
from appcommon.version import code_version


def create_app(
    config: AggregatorConfig | None = None, *, broker_connected: Callable[[], bool] | None = None
) -> FastAPI:
    """The API app. ``config`` overrides :func:`get_settings` (what ``secagg serve`` does)."""
    app = FastAPI(
        title="secagg",
        version=code_version(),
        description="Threats and threat events from secagent edge agents, with provenance.",
    )
    if config is not None:
        app.dependency_overrides[get_settings] = lambda: config
    app.state.broker_connected = broker_connected or (lambda: False)
    for module in (health, threats, events, agents, notifications, provenance, plots):
        app.include_router(module.router)
    return app


__all__ = ["create_app"]
