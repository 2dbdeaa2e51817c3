"""Large lineage graphs come a page at a time: ``GET /api/provenance/{id}?limit=&offset=``
returns at most ``limit`` artifacts (with the runs that generated them and their edges),
``truncated`` and ``next_offset``; walking every page gives exactly the whole graph, and one
page's size does not grow with the store."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from aggregator import lineage, store
from tests.support.auth import api_client
from tests.support.ingest import T0, make_config, payload, store_payloads


def _store(tmp_path: Path, messages: int) -> Any:
    config = make_config(tmp_path)
    start_s = (datetime.now(UTC) - T0).total_seconds()
    store_payloads(config, [payload(at_s=start_s + i) for i in range(messages)])
    return config


def _walk(client: TestClient, artifact: str, direction: str, limit: int) -> list[dict[str, Any]]:
    pages: list[dict[str, Any]] = []
    offset: int | None = 0
    while offset is not None:
        got = client.get(
            f"/api/provenance/{artifact}",
            params={"direction": direction, "limit": limit, "offset": offset},
        )
        assert got.status_code == 200, got.text
        pages.append(got.json())
        offset = pages[-1]["next_offset"]
    return pages


@pytest.mark.parametrize(
    ("artifact", "direction"),
    [("code:0.1.0+gtest", "downstream"), ("event:1", "upstream"), ("model:a1a1", "downstream")],
)
@pytest.mark.parametrize(("limit", "runs_cut"), [(1, True), (7, False), (500, False)])
def test_the_pages_of_a_graph_add_up_to_the_whole_graph(
    tmp_path: Path, artifact: str, direction: str, limit: int, runs_cut: bool
) -> None:
    """12 messages of one still scene: its frame and snapshot are one artifact each, made by
    12 runs. A page lists at most 4 x limit runs: with limit 1 that cuts them (said so)."""
    config = _store(tmp_path, 12)
    conn = store.connect(config.store.path, readonly=True)
    try:
        whole = lineage.graph(conn, artifact, direction=direction)
    finally:
        conn.close()
    with api_client(config) as client:
        pages = _walk(client, artifact, direction, limit)
    artifacts = [n["id"] for p in pages for n in p["nodes"] if n["type"] == "artifact"]
    runs = {n["id"] for p in pages for n in p["nodes"] if n["type"] == "run"}
    edges = {tuple(sorted(e.items())) for p in pages for e in p["edges"]}
    assert all(sum(n["type"] == "artifact" for n in p["nodes"]) <= limit for p in pages)
    assert [p["truncated"] for p in pages] == [True] * (len(pages) - 1) + [False]
    assert len(artifacts) == len(set(artifacts))  # each artifact on one page
    assert set(artifacts) == {n["id"] for n in whole.nodes if n["type"] == "artifact"}
    assert any(p["runs_truncated"] for p in pages) == runs_cut
    if not runs_cut:
        assert runs == {n["id"] for n in whole.nodes if n["type"] == "run"}
        assert edges == {tuple(sorted(e.items())) for e in whole.edges}


def test_a_page_is_bounded_however_large_the_graph(tmp_path: Path) -> None:
    """The downstream graph of a code version grows with every message; a page does not."""
    sizes = []
    for n in (40, 160):
        config = _store(tmp_path / str(n), n)
        with api_client(config) as client:
            got = client.get("/api/provenance/code:0.1.0+gtest?direction=downstream&limit=20")
            body = got.json()
            assert got.status_code == 200 and body["truncated"]
            assert len(body["nodes"]) <= 20 + 4 * 20
            sizes.append(len(got.content))
    assert sizes[1] <= sizes[0] * 1.1


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"limit": 0}, 422),
        ({"limit": 501}, 200),  # capped at api.graph_nodes_max
        ({"limit": 2**64}, 422),
        ({"offset": -1}, 422),
        ({"offset": 2**63}, 422),
        ({"offset": 10**9}, 422),  # past MAX_OFFSET
        ({"offset": 10**5}, 200),  # past the end: an empty last page
    ],
)
def test_paging_parameters_are_bounded(tmp_path: Path, params: dict[str, int], status: int) -> None:
    config = _store(tmp_path, 2)
    with api_client(config) as client:
        got = client.get("/api/provenance/event:1", params=params)
    assert got.status_code == status, got.text
