"""Plots: drawn from the stored data, recorded with their provenance, and deterministic: a
re-render from the recorded inputs gives the same PNG sha256."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from aggregator import lineage, plots, store
from aggregator.cli import main as secagg
from aggregator.config import AggregatorConfig
from tests.support.ingest import MODEL_SHA, make_config, payload, store_payloads

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def config(tmp_path: Path) -> AggregatorConfig:
    """A store with two cameras over three hours: four events, one of them critical."""
    cfg = make_config(tmp_path)
    sent = []
    for camera, start_s, n in (("yard", 0, 5), ("door", 1800, 2), ("yard", 4000, 3)):
        sent += [payload(at_s=start_s + 3 * i, camera=camera) for i in range(n)]
    crit = payload(at_s=9000, camera="door")
    crit["threats"][0]["severity"] = "critical"
    store_payloads(cfg, [*sent, crit])
    return cfg


@pytest.mark.parametrize("kind", plots.PLOT_KINDS)
def test_a_plot_is_recorded_and_re_renders_to_the_same_sha256(
    config: AggregatorConfig, kind: str
) -> None:
    conn = store.connect(config.store.path)
    query = plots.PlotQuery(kind=kind)
    row = plots.make_plot(conn, query, plots_dir=config.store.plots_dir, code_version="test")
    png = plots.plot_path(config.store.plots_dir, row.id).read_bytes()
    assert png.startswith(PNG_MAGIC) and hashlib.sha256(png).hexdigest() == row.id
    assert b"matplotlib" not in png and b"Software" not in png  # no tool or date in metadata
    assert row.event_ids == [1, 2, 3, 4]
    # Re-rendered from the recorded query and data: byte for byte the same image.
    again, sha = plots.rerender(conn, row.id)
    assert sha == row.id and again == png
    # Asking again makes the same plot (content-addressed), recorded once.
    assert (
        plots.make_plot(conn, query, plots_dir=config.store.plots_dir, code_version="test").id
        == row.id
    )
    assert conn.execute("SELECT COUNT(*) FROM runs WHERE kind = 'plot'").fetchone()[0] == 1
    # Its lineage: the query, the events it covers and, through them, the model version.
    graph = lineage.graph(conn, f"plot:{row.id}")
    conn.close()
    inputs = lineage.inputs_of(graph)
    assert inputs["event"] == [f"event:{i}" for i in (1, 2, 3, 4)]
    assert inputs["model"] == [f"model:{MODEL_SHA}"] and "code:test" in inputs["code"]
    run = next(n for n in graph.nodes if n["type"] == "run" and n["kind"] == "plot")
    assert run["meta"]["query"]["kind"] == kind


def test_filters_and_range_shape_the_data_and_the_title(config: AggregatorConfig) -> None:
    conn = store.connect(config.store.path, readonly=True)
    t0 = conn.execute("SELECT MIN(captured_ts) FROM threats").fetchone()[0]
    query = plots.PlotQuery(
        kind="threats_per_hour",
        camera="yard",
        since=datetime.fromtimestamp(t0, UTC),
        until=datetime.fromtimestamp(t0 + 3600, UTC),
    )
    data, event_ids = plots.collect(conn, query)
    assert sum(n for _, cam, n in data["rows"] if cam == "yard") == 5
    assert {cam for _, cam, _ in data["rows"]} == {"yard"} and event_ids == [1]
    with pytest.raises(plots.PlotError, match="nothing to plot"):
        plots.collect(conn, plots.PlotQuery(kind="timeline", camera="garage"))
    conn.close()
    title = plots._title("Threats per hour, by camera", query.recorded(), (0.0, 0.0))
    assert "yard" in title and datetime.fromtimestamp(t0, UTC).strftime("%Y-%m-%d %H:%M") in title


def test_secagg_plot_writes_the_png(config: AggregatorConfig, tmp_path: Path) -> None:
    cfg_file = tmp_path / "secagg.yaml"
    cfg_file.write_text(
        f"store: {{path: {config.store.path}, snapshots_dir: {config.store.snapshots_dir}, "
        f"plots_dir: {config.store.plots_dir}}}\n"
    )
    out = tmp_path / "labels.png"
    result = CliRunner().invoke(
        secagg, ["plot", "events_by_label", "--config", str(cfg_file), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    sha = hashlib.sha256(out.read_bytes()).hexdigest()
    assert result.output.startswith(f"plot:{sha} ") and "(4 event(s))" in result.output
    explained = CliRunner().invoke(secagg, ["explain", f"plot:{sha}", "--config", str(cfg_file)])
    assert explained.exit_code == 0 and "plot run" in explained.output
    assert MODEL_SHA in explained.output
