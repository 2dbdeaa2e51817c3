"""Plots of the stored data, each an artifact with provenance, rendered deterministically.

A plot is made in two steps: :func:`collect` queries the store into a small JSON-able data set
(the plot's recorded input, with the ids of the events it covers), and :func:`render` draws that
data set. ``render`` is a pure function of (kind, query, data): the Agg backend, a fixed figure
size, dpi and font (matplotlib's bundled DejaVu Sans), no date or software in the PNG metadata.
So re-rendering a plot from its recorded inputs gives a PNG with the same sha256, and the PNG's
sha256 is the plot's id (``plot:<sha256>``).
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from pydantic import BaseModel, ConfigDict, Field

from aggregator import provenance, store
from aggregator.store.models import PlotRow
from aggregator.timestamps import utc
from wire.payloads import SEVERITY_RANK

PlotKind = Literal["threats_per_hour", "events_by_label", "timeline"]
PLOT_KINDS: tuple[str, ...] = ("threats_per_hour", "events_by_label", "timeline")
SEVERITY_COLOURS = {
    "low": "#4c78a8",
    "medium": "#f2b701",
    "high": "#e45756",
    "critical": "#7b1fa2",
}
CAMERA_COLOURS = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#9d755d")
FIGSIZE_IN = (10.0, 5.5)
DPI = 100
RC: dict[str, Any] = {
    "font.family": "DejaVu Sans",
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "path.simplify": True,
    "svg.hashsalt": "secagent",
    "timezone": "UTC",
}


MAX_SPAN_S = 366 * 86400.0
"""The longest capture-time span one plot covers (hourly bars over more are no plot)."""
MAX_ROWS = 20_000
"""The most rows (hour and camera, or events) one plot draws."""


class PlotError(ValueError):
    """A plot cannot be made (nothing in the range, unknown plot)."""


class PlotTooLarge(PlotError):
    """The data of a plot spans more time or rows than one plot draws: narrow the query."""


class PlotQuery(BaseModel):
    """What to plot: the kind, a capture-time range and filters (the plot's recorded query)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: PlotKind = Field(description="threats_per_hour, events_by_label or timeline")
    since: datetime | None = Field(None, description="from this capture time (UTC if naive)")
    until: datetime | None = Field(None, description="before this capture time (UTC if naive)")
    camera: str | None = Field(None, max_length=64, description="only this camera")
    agent_id: str | None = Field(None, max_length=64, description="only this agent")

    def bounds_ts(self) -> tuple[float | None, float | None]:
        def ts(value: datetime | None) -> float | None:
            if value is None:
                return None
            return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()

        return ts(self.since), ts(self.until)

    def recorded(self) -> dict[str, Any]:
        """The query as stored with the plot (JSON, times as UTC ISO strings)."""
        since, until = self.bounds_ts()
        return {
            "kind": self.kind,
            "since": _iso(since),
            "until": _iso(until),
            "camera": self.camera,
            "agent_id": self.agent_id,
        }


def _iso(ts: float | None) -> str | None:
    return None if ts is None else utc(ts).isoformat()


def collect(conn: store.Connection, query: PlotQuery) -> tuple[dict[str, Any], list[int]]:
    """The data set a plot is drawn from, and the ids of the events it covers."""
    since, until = query.bounds_ts()
    filters: dict[str, Any] = {
        "since_ts": since,
        "until_ts": until,
        "camera": query.camera,
        "agent_id": query.agent_id,
    }
    if query.kind == "threats_per_hour":
        counts, event_ids = store.messages.hourly_threat_counts(conn, **filters)
        data: dict[str, Any] = {"rows": [[c.hour_ts, c.camera, c.count] for c in counts]}
    else:
        events = store.events.started_between(conn, **filters)
        event_ids = [e.id for e in events]
        if query.kind == "events_by_label":
            data = {"rows": [[e.label, e.severity, e.started_ts] for e in events]}
        else:
            data = {
                "rows": [
                    [
                        e.id,
                        f"{e.agent_id}/{e.camera} {e.rule}",
                        e.severity,
                        e.started_ts,
                        e.last_seen_ts,
                    ]
                    for e in events
                ]
            }
    if not data["rows"]:
        raise PlotError(f"nothing to plot: no data for {json.dumps(query.recorded())}")
    check_size(query.kind, data["rows"])
    return data, event_ids


def check_size(kind: str, rows: list[list[Any]]) -> None:
    """PlotTooLarge when ``rows`` span more than :data:`MAX_SPAN_S` or number more than
    :data:`MAX_ROWS`."""
    if len(rows) > MAX_ROWS:
        raise PlotTooLarge(f"{len(rows)} rows to draw, at most {MAX_ROWS}: narrow since/until")
    if kind == "threats_per_hour":
        times = [float(r[0]) for r in rows]
    elif kind == "events_by_label":
        times = [float(r[2]) for r in rows]
    else:
        times = [float(r[3]) for r in rows] + [float(r[4]) for r in rows]
    span_s = max(times) - min(times)
    if span_s > MAX_SPAN_S:
        raise PlotTooLarge(
            f"the data spans {span_s / 86400:.0f} days, at most {MAX_SPAN_S / 86400:.0f} in one "
            "plot: narrow since/until"
        )


def _title(what: str, query: dict[str, Any], data_range: tuple[float, float]) -> str:
    fmt = "%Y-%m-%d %H:%M UTC"
    since = query["since"] or utc(data_range[0]).isoformat()
    until = query["until"] or utc(data_range[1]).isoformat()
    span = (
        f"{datetime.fromisoformat(since).strftime(fmt)} to "
        f"{datetime.fromisoformat(until).strftime(fmt)}"
    )
    filters = [f"{k} {query[k]}" for k in ("agent_id", "camera") if query.get(k)]
    return f"{what}\n{span}" + (f"; {', '.join(filters)}" if filters else "; all cameras")


def _draw_threats_per_hour(fig: Figure, query: dict[str, Any], rows: list[list[Any]]) -> None:
    from matplotlib import dates as mdates

    ax = fig.add_subplot()
    hours = sorted({r[0] for r in rows})
    cameras = sorted({r[1] for r in rows})
    counts = {(r[0], r[1]): r[2] for r in rows}
    x = [mdates.date2num(utc(h)) for h in hours]
    bottom = [0] * len(hours)
    for i, camera in enumerate(cameras):
        heights = [counts.get((h, camera), 0) for h in hours]
        ax.bar(
            x,
            heights,
            width=0.9 / 24,
            bottom=bottom,
            label=camera,
            color=CAMERA_COLOURS[i % len(CAMERA_COLOURS)],
            align="edge",
        )
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    ax.xaxis_date(tz=UTC)
    locator = mdates.HourLocator(interval=max(1, ((hours[-1] - hours[0]) // 3600 + 1) // 10))
    locator.set_tzinfo(UTC)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=UTC))
    ax.set_xlabel("hour (UTC)")
    ax.set_ylabel("threats")
    ax.legend(title="camera", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(_title("Threats per hour, by camera", query, (hours[0], hours[-1] + 3600)))


def _draw_events_by_label(fig: Figure, query: dict[str, Any], rows: list[list[Any]]) -> None:
    ax = fig.add_subplot()
    labels = sorted({r[0] for r in rows})
    severities = sorted({r[1] for r in rows}, key=SEVERITY_RANK.__getitem__)
    bottom = [0] * len(labels)
    for severity in severities:
        heights = [sum(1 for r in rows if r[0] == lab and r[1] == severity) for lab in labels]
        ax.bar(
            labels,
            heights,
            width=0.5,
            bottom=bottom,
            label=severity,
            color=SEVERITY_COLOURS[severity],
        )
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    ax.set_xlim(-0.75, len(labels) - 0.25)
    ax.set_xlabel("label")
    ax.set_ylabel("threat events")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(title="severity", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    starts = [r[2] for r in rows]
    ax.set_title(_title("Threat events by label and severity", query, (min(starts), max(starts))))


def _draw_timeline(fig: Figure, query: dict[str, Any], rows: list[list[Any]]) -> None:
    from matplotlib import dates as mdates
    from matplotlib.patches import Patch

    ax = fig.add_subplot()
    lanes = sorted({r[1] for r in rows})
    start = min(r[3] for r in rows)
    end = max(r[4] for r in rows)
    min_width_d = max(end - start, 60.0) / 86400 / 120  # a one-threat event stays visible
    for event_id, lane, severity, started, last_seen in rows:
        y = lanes.index(lane)
        x0 = mdates.date2num(utc(started))
        width = max((last_seen - started) / 86400, min_width_d)
        ax.broken_barh([(x0, width)], (y - 0.35, 0.7), facecolors=SEVERITY_COLOURS[severity])
        ax.annotate(f"#{event_id}", (x0, y + 0.4), fontsize=8, va="bottom")
    ax.set_yticks(range(len(lanes)), lanes)
    ax.set_ylim(-0.8, len(lanes) - 0.2)
    ax.xaxis_date(tz=UTC)
    locator = mdates.AutoDateLocator(tz=UTC, maxticks=8)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=UTC))
    ax.set_xlabel("capture time (UTC)")
    ax.set_ylabel("agent/camera rule")
    ax.legend(
        handles=[Patch(color=c, label=s) for s, c in SEVERITY_COLOURS.items()],
        title="severity",
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
    )
    ax.set_title(_title("Threat event timeline", query, (start, end)))


DRAW = {
    "threats_per_hour": _draw_threats_per_hour,
    "events_by_label": _draw_events_by_label,
    "timeline": _draw_timeline,
}


def render(query: dict[str, Any], data: dict[str, Any]) -> bytes:
    """The PNG of a recorded (query, data): a pure function, byte for byte."""
    draw = DRAW.get(query["kind"])
    if draw is None:
        raise PlotError(f"unknown plot kind {query['kind']!r}; known: {', '.join(PLOT_KINDS)}")
    with matplotlib.rc_context(RC):  # type: ignore[arg-type]
        fig = Figure(figsize=FIGSIZE_IN, dpi=DPI, layout="constrained")
        FigureCanvasAgg(fig)
        draw(fig, query, data["rows"])
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def plot_path(plots_dir: Path, sha256: str) -> Path:
    return plots_dir / sha256[:2] / f"{sha256}.png"


def make_plot(
    conn: store.Connection, query: PlotQuery, *, plots_dir: Path, code_version: str
) -> PlotRow:
    """Collect, render, store the PNG by sha256 and record the plot with its provenance, in one
    transaction of ``conn`` (a writable connection). Returns the plot's record."""
    data, event_ids = collect(conn, query)
    recorded = query.recorded()
    drawn = store.plots.find(conn, query=recorded, data=data, code_version=code_version)
    if drawn is not None and plot_path(plots_dir, drawn).is_file():
        return plot_row(conn, drawn)  # the same query on the same data: the same plot
    png = render(recorded, data)
    sha = hashlib.sha256(png).hexdigest()
    path = plot_path(plots_dir, sha)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(png)
        tmp.replace(path)
    now = time.time()
    with store.transaction(conn):
        inserted = store.plots.insert(
            conn,
            PlotRow(
                id=sha,
                kind=query.kind,
                query=recorded,
                data=data,
                event_ids=event_ids,
                code_version=code_version,
                created_ts=now,
            ),
        )
        if inserted:
            provenance.record_plot(
                conn,
                plot_sha256=sha,
                kind=query.kind,
                query=recorded,
                event_ids=event_ids,
                code_version=code_version,
                at_ts=now,
            )
    return plot_row(conn, sha)


def plot_row(conn: store.Connection, plot_id: str) -> PlotRow:
    """A stored plot (PlotError if unknown)."""
    row = store.plots.get(conn, plot_id)
    if row is None:
        raise PlotError(f"plot {plot_id} not found")
    return row


def rerender(conn: store.Connection, plot_id: str) -> tuple[bytes, str]:
    """Render a stored plot again from its recorded inputs; return the PNG and its sha256."""
    row = plot_row(conn, plot_id)
    png = render(row.query, row.data)
    return png, hashlib.sha256(png).hexdigest()
