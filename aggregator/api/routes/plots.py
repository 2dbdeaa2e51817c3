from __future__ import annotations

import threading
import time
from collections import deque

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse

from aggregator import plots, store
from aggregator.api.access import AUTH_RESPONSES, OPERATOR, VIEWER
from aggregator.api.deps import Db, Settings, dt
from aggregator.api.routes.events import NOSNIFF
from aggregator.api.schemas import PlotPublic, Problem
from aggregator.store.models import PlotRow
from appcommon.version import code_version

router = APIRouter(tags=["plots"], dependencies=[VIEWER], responses=AUTH_RESPONSES)


class PlotRate:
    """New plots drawn in the last minute (one per app): drawing one costs ~0.2 s of CPU."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._times: deque[float] = deque()

    def take(self, per_minute: int) -> float:
        """0 when one more may be drawn now (and counts it), else seconds until one may."""
        now = time.monotonic()
        with self._lock:
            while self._times and now - self._times[0] >= 60:
                self._times.popleft()
            if len(self._times) >= per_minute:
                return 60 - (now - self._times[0])
            self._times.append(now)
            return 0.0


def plot_public(plot: PlotRow) -> PlotPublic:
    return PlotPublic(
        id=plot.id,
        artifact_id=f"plot:{plot.id}",
        kind=plot.kind,
        query=plot.query,
        event_ids=plot.event_ids,
        code_version=plot.code_version,
        created_at=dt(plot.created_ts),
        png_url=f"/api/plots/{plot.id}.png",
    )


@router.post(
    "/api/plots",
    response_model=PlotPublic,
    status_code=201,
    dependencies=[OPERATOR],
    summary="Draw a plot of the stored data and record it with its provenance (the same query "
    "on the same data returns the plot already drawn)",
    responses={
        404: {"description": "no data in the range"},
        422: {
            "model": Problem,
            "description": "bad query, or more data than one plot draws (narrow the range)",
        },
        429: {"description": "too many new plots this minute (see Retry-After)"},
    },
)
def create_plot(request: Request, settings: Settings, query: plots.PlotQuery) -> PlotPublic:
    rate: PlotRate = request.app.state.plot_rate
    wait_s = rate.take(settings.api.plots_per_minute)
    if wait_s > 0:
        raise HTTPException(
            429,
            f"at most {settings.api.plots_per_minute} plots a minute",
            headers={"Retry-After": str(max(1, round(wait_s)))},
        )
    # A short write transaction of its own (plots are rare; the ingest writer owns the rest).
    try:
        conn = store.connect(settings.store.target)
    except store.StoreUnavailable as exc:
        raise HTTPException(503, f"store not available: {exc}") from exc
    try:
        row = plots.make_plot(
            conn, query, plots_dir=settings.store.plots_dir, code_version=code_version()
        )
    except plots.PlotTooLarge as exc:
        raise HTTPException(422, str(exc)) from exc
    except plots.PlotError as exc:
        raise HTTPException(404, str(exc)) from exc
    finally:
        conn.close()
    return plot_public(row)


@router.get(
    "/api/plots/{plot_id}.png",
    response_class=FileResponse,
    summary="The plot's PNG",
    responses={404: {"description": "no such plot"}},
)
def get_plot_png(conn: Db, settings: Settings, plot_id: str) -> FileResponse:
    try:
        plots.plot_row(conn, plot_id)
    except plots.PlotError as exc:
        raise HTTPException(404, str(exc)) from exc
    path = plots.plot_path(settings.store.plots_dir, plot_id)
    if not path.is_file():
        raise HTTPException(404, f"plot {plot_id}: PNG missing from {settings.store.plots_dir}")
    return FileResponse(path, media_type="image/png", headers=NOSNIFF)


@router.get(
    "/api/plots/{plot_id}",
    response_model=PlotPublic,
    summary="A plot's record: query, events covered, code version",
    responses={404: {"description": "no such plot"}},
)
def get_plot(conn: Db, plot_id: str) -> PlotPublic:
    try:
        return plot_public(plots.plot_row(conn, plot_id))
    except plots.PlotError as exc:
        raise HTTPException(404, str(exc)) from exc
