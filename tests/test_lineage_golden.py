"""A message's lineage is kept in its own row since migration m013, instead of some 30 rows of
the lineage tables: the graphs the API and ``secagg explain`` give must be what they gave when
every run was a row. ``tests/data/lineage_golden.json`` holds the graphs that the code of the
last release with rows (commit 1fb4329) gave for a fixed set of messages, a notification and a
plot (:mod:`tests.support.lineage_golden`); the same messages stored now give the same graphs:
nodes, edges, run ids, and the tree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import ROOT
from tests.support.lineage_golden import GRAPHS, golden

GOLDEN = json.loads((ROOT / "tests" / "data" / "lineage_golden.json").read_text())


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, object]]:
    return golden(tmp_path_factory.mktemp("golden"))


@pytest.mark.parametrize(("artifact", "direction"), GRAPHS)
def test_the_graph_is_the_one_the_lineage_tables_gave(
    graphs: dict[str, dict[str, object]], artifact: str, direction: str
) -> None:
    key = f"{artifact} {direction}"
    got, want = graphs[key], GOLDEN[key]
    assert got["nodes"] == want["nodes"]
    assert got["edges"] == want["edges"]
    assert got["tree"] == want["tree"]
    assert got == want


def test_the_golden_graphs_hold_what_they_should(tmp_path: Path) -> None:
    """The data file is no empty success: shared artifacts made by several runs, a message with
    two events, notify and plot runs among the message runs."""
    up = GOLDEN["event:1 upstream"]
    runs = [n for n in up["nodes"] if n["type"] == "run"]
    assert sorted({r["kind"] for r in runs}) == ["detect", "group", "rules", "validate"]
    frame = "frame:" + "5e" * 32
    made_frame = [e for e in GOLDEN[f"{frame} downstream"]["edges"] if e["to"] == frame]
    assert len(made_frame) == 6  # three validate and three detect runs used the one frame
    two = GOLDEN["message:" + f"{4:032x} downstream"]
    assert {n["id"] for n in two["nodes"]} >= {"event:2", "event:3"}
    notify = GOLDEN["notification:1 upstream"]
    assert any(n["type"] == "run" and n["kind"] == "notify" for n in notify["nodes"])
