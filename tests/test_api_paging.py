"""Keyset pagination of the API's lists (:mod:`aggregator.api.paging`): every page names the
next in ``Link: <...>; rel="next"`` and ``X-Next-Cursor``; following them while the ingest
stores new events and threats gives each old row exactly once, newest first; a cursor combines
with the filters; a hostile cursor is a 422, never a 500. And the health counts, which are kept
by the writer instead of counted on each request, match the tables after more ingest and a
restart."""

from __future__ import annotations

import html
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from aggregator import store
from aggregator.api import create_app
from aggregator.config import AggregatorConfig
from tests.support import wait_for
from tests.support.auth import HEADERS, seed_tokens
from tests.support.ingest import make_config, store_payloads, threat_payload

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
CAMERAS = ("yard", "door", "gate")


def visits(first_s: float, count: int) -> list[dict[str, Any]]:
    """``count`` threats, each its own event (60 s apart: past the 10 s cutoff), the cameras
    in turn."""
    return [threat_payload(camera=CAMERAS[i % 3], at_s=first_s + 60 * i) for i in range(count)]


@pytest.fixture
def config(tmp_path: Path) -> AggregatorConfig:
    config = make_config(tmp_path)
    store_payloads(config, visits(0, 30))
    seed_tokens(config.store.path)
    return config


@pytest.fixture
def client(config: AggregatorConfig) -> Iterator[TestClient]:
    with TestClient(create_app(config), headers=HEADERS) as found:
        yield found


def pages(client: TestClient, url: str, params: dict[str, Any]) -> Iterator[list[dict[str, Any]]]:
    """Every page of a list, following ``rel="next"``."""
    r = client.get(url, params=params)
    while True:
        assert r.status_code == 200, r.text
        yield r.json()
        following = r.links.get("next")
        if following is None:
            assert "X-Next-Cursor" not in r.headers
            return
        assert following["url"].endswith("cursor=" + r.headers["X-Next-Cursor"])
        r = client.get(following["url"])


def ids(client: TestClient, url: str, params: dict[str, Any]) -> list[int]:
    return [item["id"] for page in pages(client, url, params) for item in page]


def all_ids(config: AggregatorConfig, what: str) -> list[int]:
    conn = store.connect(config.store.path, readonly=True)
    try:
        if what == "events":
            return [e.id for e in store.events.list_events(conn, limit=10**6)]
        return [t.threat.id for t in store.messages.list_threats(conn, limit=10**6)]
    finally:
        conn.close()


@pytest.mark.parametrize("what", ["events", "threats"])
def test_pages_are_stable_while_new_rows_arrive(
    config: AggregatorConfig, client: TestClient, what: str
) -> None:
    """A page, then a batch of new rows stored, then the next page, and so on: the pages give
    each row that was there before the first page exactly once, in order, and none twice."""
    before = all_ids(config, what)
    assert len(before) == 30
    seen: list[int] = []
    arrived = 0
    for page in pages(client, f"/api/{what}", {"limit": 4}):
        seen.extend(item["id"] for item in page)
        # New visits after the first page's newest: they start events of their own.
        store_payloads(config, visits(100_000 + 600 * arrived, 3))
        arrived += 1
    assert len(seen) == len(set(seen)), "a row came twice"
    assert seen == sorted(seen, reverse=True), "not newest first across pages"
    old = [i for i in seen if i <= max(before)]
    assert old == before, "a row that was there before paging began was skipped"
    assert len(all_ids(config, what)) == 30 + 3 * arrived


def test_pages_are_stable_under_a_concurrent_writer(
    config: AggregatorConfig, client: TestClient
) -> None:
    """The same with a writer thread storing new events the whole time the pages are read."""
    before = all_ids(config, "events")
    stop = threading.Event()
    stored = [0]

    def write() -> None:
        while not stop.is_set():
            store_payloads(config, visits(200_000 + 600 * stored[0], 1))
            stored[0] += 1

    writer = threading.Thread(target=write)
    writer.start()
    try:
        wait_for(lambda: stored[0] > 0, what="the writer storing")
        seen = [
            i
            for n, page in enumerate(pages(client, "/api/events", {"limit": 2}))
            for i in (item["id"] for item in page)
            if n < 100
        ]
    finally:
        stop.set()
        writer.join()
    assert len(seen) == len(set(seen))
    assert [i for i in seen if i <= max(before)] == before


@pytest.mark.parametrize(
    ("url", "params", "keep"),
    [
        ("/api/events", {"camera": "door"}, lambda e: e["camera"] == "door"),
        ("/api/events", {"state": "ended", "severity": "high"}, lambda e: e["state"] == "ended"),
        ("/api/threats", {"camera": "gate"}, lambda t: t["camera"] == "gate"),
        (
            "/api/threats",
            {"since": "2026-11-28T12:05:00Z", "until": "2026-11-28T12:20:00Z"},
            lambda t: "12:05:00" <= t["captured_at"][11:19] < "12:20:00",
        ),
    ],
)
def test_a_cursor_keeps_the_filters(
    client: TestClient, url: str, params: dict[str, Any], keep: Callable[[dict[str, Any]], bool]
) -> None:
    everything = client.get(url, params={"limit": 1000}).json()
    wanted = [item["id"] for item in everything if keep(item)]
    assert 3 <= len(wanted) < len(everything)
    paged = ids(client, url, {**params, "limit": 2})
    assert paged == wanted


def test_the_last_page_names_no_next(client: TestClient) -> None:
    full = client.get("/api/events", params={"limit": 30})
    assert full.links.get("next") is not None  # a full page: there may be more
    last = client.get(full.links["next"]["url"])
    assert last.json() == [] and "link" not in last.headers
    short = client.get("/api/events", params={"limit": 31})
    assert len(short.json()) == 30 and "link" not in short.headers


def test_before_id_still_pages(client: TestClient) -> None:
    first = client.get("/api/events", params={"limit": 5}).json()
    older = client.get("/api/events", params={"limit": 5, "before_id": first[-1]["id"]}).json()
    assert [e["id"] for e in older] == [first[-1]["id"] - i for i in range(1, 6)]


@pytest.mark.parametrize(
    ("url", "params"),
    [
        ("/api/events", {"cursor": "not-a-cursor"}),
        ("/api/events", {"cursor": "%%%"}),
        ("/api/events", {"cursor": ""}),
        ("/api/events", {"cursor": "1" * 20}),
        ("/api/events", {"cursor": "-3"}),
        ("/api/events", {"cursor": "1e5"}),
        ("/api/events", {"cursor": "5.0"}),
        ("/api/events", {"cursor": "1800000000.5_5"}),  # a log cursor
        ("/api/events", {"cursor": "5 OR 1=1"}),
        ("/api/events", {"cursor": "\u0661\u0662"}),  # digits, but not ASCII ones
        ("/api/threats", {"cursor": "0x10"}),
        ("/api/notifications", {"cursor": "5\n"}),
        ("/api/logs", {"cursor": "x_5"}),
        ("/api/logs", {"agent_id": "cam-host", "cursor": "nan_1"}),
        ("/api/logs", {"agent_id": "cam-host", "cursor": "inf_1"}),
        ("/api/logs", {"agent_id": "cam-host", "cursor": "1e300_1"}),
        ("/api/logs", {"agent_id": "cam-host", "cursor": "1.5_"}),
        ("/api/logs", {"event_id": 1, "cursor": "1_2_3"}),
        ("/api/logs", {"event_id": 1, "cursor": "1" * 18 + "_1"}),
    ],
)
def test_a_hostile_cursor_is_422(client: TestClient, url: str, params: dict[str, Any]) -> None:
    r = client.get(url, params=params)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["query", "cursor"]


def test_every_cursor_of_the_right_form_is_a_page(client: TestClient) -> None:
    """What the schema lets through is a page, never a 500: an id past the largest SQLite
    keeps is "from the top"; with before_id too, the lower bound wins."""
    top = client.get("/api/events", params={"limit": 5}).json()
    huge = client.get("/api/events", params={"limit": 5, "cursor": "9" * 19})
    assert huge.status_code == 200 and huge.json() == top
    assert client.get("/api/events", params={"cursor": "0"}).json() == []
    both = client.get("/api/events", params={"limit": 5, "cursor": "20", "before_id": 10})
    assert [e["id"] for e in both.json()] == [9, 8, 7, 6, 5]
    for params in ({"cursor": "17"}, {"agent_id": "cam-host", "cursor": "-5.5_17"}):
        assert client.get("/api/logs", params=params).status_code == 200


def test_log_lines_page_both_ways(config: AggregatorConfig, client: TestClient) -> None:
    conn = store.connect(config.store.path)
    try:
        with store.transaction(conn):
            store.logs.insert(
                conn,
                [
                    store.logs.LogRow(
                        0,
                        "agent",
                        "cam-host",
                        "WARNING",
                        "agent.capture",
                        f"line {i}",
                        1_800_000_000.0 + i // 2,
                        1_800_000_100.0,
                        None,
                        None,
                        "yard",
                        None,
                        None,
                        None,
                    )
                    for i in range(7)
                ],
            )
    finally:
        conn.close()
    later = [
        line["msg"]
        for page in pages(client, "/api/logs", {"agent_id": "cam-host", "limit": 2})
        for line in page
    ]
    assert later == [f"line {i}" for i in range(7)]  # oldest first, two lines share each time
    earlier = [[line["msg"] for line in page] for page in pages(client, "/api/logs", {"limit": 3})]
    assert earlier == [["line 4", "line 5", "line 6"], ["line 1", "line 2", "line 3"], ["line 0"]]


def test_health_counts_match_the_tables_after_ingest_and_a_restart(
    config: AggregatorConfig,
) -> None:
    """The counts are the writer's, kept in its transactions: a second app on the same file
    (a restart), after more ingest, still reports what the tables hold."""

    def health() -> dict[str, int]:
        with TestClient(create_app(config), headers=HEADERS) as c:
            body = c.get("/api/health").json()
        return {k: body[k] for k in ("messages", "threats", "events", "open_events", "agents")}

    def counted() -> dict[str, int]:
        conn = store.connect(config.store.path, readonly=True)
        try:
            events = store.events.list_events(conn, limit=10**6)
            return {
                "messages": len(store.messages.list_threats(conn, limit=10**6)),
                "threats": len(store.messages.list_threats(conn, limit=10**6)),
                "events": len(events),
                "open_events": sum(e.ended_ts is None for e in events),
                "agents": len(store.agents.list_agents(conn)),
            }
        finally:
            conn.close()

    assert health() == counted() == {
        "messages": 30, "threats": 30, "events": 30, "open_events": 1, "agents": 1,
    }  # fmt: skip
    store_payloads(config, [*visits(10_000, 4), threat_payload(agent_id="gate-host", at_s=10)])
    assert health() == counted() == {
        "messages": 35, "threats": 35, "events": 35, "open_events": 2, "agents": 2,
    }  # fmt: skip


def test_the_review_page_pages_by_the_same_cursor(tmp_path: Path) -> None:
    """The events page lists 50 events; its "Older events" link carries the cursor of the API
    and leads to the next 50, none shown twice, none left out, filters kept."""
    config = make_config(tmp_path)
    store_payloads(config, visits(0, 160))
    seed_tokens(config.store.path)
    with TestClient(create_app(config), headers=HEADERS) as client:
        shown: list[int] = []
        url: str | None = "/?camera=yard"
        while url is not None:
            page = client.get(url)
            assert page.status_code == 200
            shown.extend(
                int(i) for i in dict.fromkeys(re.findall(r'href="/events/(\d+)"', page.text))
            )
            older = re.search(r'<p class="more"><a href="([^"]+)">', page.text)
            url = None if older is None else "/" + html.unescape(older.group(1))
            assert url is None or ("cursor=" in url and "camera=yard" in url)
        wanted = [
            e["id"]
            for e in client.get("/api/events", params={"camera": "yard", "limit": 1000}).json()
        ]
    assert len(wanted) == 54 and len(shown) > 50 and shown == wanted
