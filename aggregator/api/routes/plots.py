from __future__ import annotations

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

from aggregator import plots, store
from aggregator.api.deps import Db, Settings, dt
from aggregator.api.schemas import PlotPublic
from aggregator.store.models import PlotRow
from appcommon.version import code_version

router = APIRouter(tags=["plots"])


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
    summary="Draw a plot of the stored data and record it with its provenance",
    responses={404: {"description": "no data in the range"}},
)
def create_plot(settings: Settings, query: plots.PlotQuery) -> PlotPublic:
    # A short write transaction of its own (plots are rare; the ingest writer owns the rest).
    conn = store.connect(settings.store.path)
    try:
        row = plots.make_plot(
            conn, query, plots_dir=settings.store.plots_dir, code_version=code_version()
        )
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
    return FileResponse(path, media_type="image/png")


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
