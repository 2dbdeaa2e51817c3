"""The review pages over HTTP (FastAPI's TestClient): the login and its cookie, failed logins
throttled and logged, no open redirect, CSRF, logout, the pages' filters, live rows, reviews
with who and when, the agents page, and headers that keep the pages to this server. The same
pages in a real browser: tests/test_web_browser.py."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from aggregator import store
from aggregator.api import create_app
from aggregator.auth import accounts
from aggregator.auth.roles import Role
from aggregator.config import AggregatorConfig
from tests.support.ingest import T0, make_config, payload, status_payload, store_payloads

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
PASSWORDS = {"ann": "ann-password-1", "vic": "vic-password-1"}


@dataclass
class Site:
    config: AggregatorConfig


def add_users(config: AggregatorConfig) -> None:
    conn = store.connect(config.store.path)
    try:
        with store.transaction(conn):
            accounts.add_user(conn, name="ann", role=Role.operator, password=PASSWORDS["ann"])
            accounts.add_user(conn, name="vic", role=Role.viewer, password=PASSWORDS["vic"])
    finally:
        conn.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """Events 1 (yard), 2 (door), 3 (gate, site 'home' with door); two statuses 10 s apart."""
    work = tmp_path_factory.mktemp("web")
    config = make_config(
        work,
        events={"cutoff_s": 10, "sites": {"door": "home", "gate": "home"}, "site_window_s": 1},
        auth={"login_max_failures": 3, "login_window_s": 60},
    )
    store_payloads(
        config,
        [
            payload(at_s=0, camera="yard"),
            payload(at_s=30, camera="door"),
            payload(at_s=60, camera="gate"),
            status_payload(sent_at=T0 + timedelta(seconds=100)),
        ],
    )
    later = status_payload(sent_at=T0 + timedelta(seconds=110))
    later["cameras"][0]["counters"]["captured"] = 57  # 50 frames in 10 s
    store_payloads(config, [later])
    add_users(config)
    yield Site(config)


def login(config: AggregatorConfig, name: str, *, password: str | None = None) -> TestClient:
    client = TestClient(create_app(config))
    r = client.post(
        "/login",
        data={"username": name, "password": password or PASSWORDS[name], "next": "/agents"},
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == "/agents", r.text
    return client


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf-token" content="([^"]+)"', html)
    assert found
    return found.group(1)


def card_ids(html: str) -> list[int]:
    return [int(x) for x in re.findall(r'class="card[^"]*" data-event-id="(\d+)"', html)]


def test_pages_need_a_login(site: Site) -> None:
    client = TestClient(create_app(site.config))
    for path in ("/", "/events/1", "/agents", "/plots", "/events/rows"):
        r = client.get(path, follow_redirects=False)
        assert r.status_code == 303, path
        assert r.headers["location"].startswith("/login?next=")
    assert client.get("/login").status_code == 200
    assert client.get("/static/web/app.css").status_code == 200  # no data: public


def test_the_session_cookie(site: Site) -> None:
    client = TestClient(create_app(site.config))
    r = client.post(
        "/login", data={"username": "ann", "password": PASSWORDS["ann"]}, follow_redirects=False
    )
    cookie = r.headers["set-cookie"].lower()
    assert "secagg_session=" in cookie and "httponly" in cookie and "samesite=strict" in cookie
    assert "secure" not in cookie  # plain http here
    https = site.config.model_copy(
        update={"api": site.config.api.model_copy(update={"public_url": "https://secagg.example"})}
    )
    r = TestClient(create_app(https)).post(
        "/login", data={"username": "ann", "password": PASSWORDS["ann"]}, follow_redirects=False
    )
    assert "secure" in r.headers["set-cookie"].lower()


def test_failed_logins_are_logged_and_throttled(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(tmp_path, auth={"login_max_failures": 3, "login_window_s": 60})
    store.migrate(config.store.path)
    add_users(config)
    client = TestClient(create_app(config))
    caplog.set_level(logging.INFO)
    for attempt in range(3):
        r = client.post("/login", data={"username": "ann", "password": f"guess-{attempt}"})
        assert r.status_code == 401 and "Wrong user name or password" in r.text
    lines = [r.getMessage() for r in caplog.records if "failed login" in r.getMessage()]
    assert len(lines) == 3 and "'ann'" in lines[0] and "testclient" in lines[0]
    assert all("guess" not in r.getMessage() for r in caplog.records)
    # the right password now waits too, and so does any user from this address
    r = client.post("/login", data={"username": "ann", "password": PASSWORDS["ann"]})
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    r = client.post("/login", data={"username": "vic", "password": PASSWORDS["vic"]})
    assert r.status_code == 429
    assert any("too many failures" in r.getMessage() for r in caplog.records)
    # an unknown user is answered like a wrong password
    other = TestClient(create_app(config))
    assert other.post("/login", data={"username": "nobody", "password": "x"}).status_code == 401


@pytest.mark.parametrize(
    "target",
    ["//evil.example/", "https://evil.example/", "/\\evil.example", "javascript:alert(1)", ""],
)
def test_no_open_redirect(site: Site, target: str) -> None:
    client = TestClient(create_app(site.config))
    r = client.post(
        "/login",
        data={"username": "vic", "password": PASSWORDS["vic"], "next": target},
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == "/"


def test_a_login_form_posted_from_another_site_is_refused(site: Site) -> None:
    client = TestClient(create_app(site.config))
    r = client.post(
        "/login",
        data={"username": "vic", "password": PASSWORDS["vic"]},
        headers={"Origin": "https://evil.example"},
        follow_redirects=False,
    )
    assert r.status_code == 403 and "set-cookie" not in r.headers


def test_logout_needs_the_csrf_token_and_ends_the_session(site: Site) -> None:
    client = login(site.config, "vic")
    page = client.get("/")
    cookie = client.cookies.get("secagg_session")
    assert client.post("/logout", data={"csrf": "wrong"}).status_code == 403
    r = client.post("/logout", data={"csrf": csrf_of(page.text)}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    stale = TestClient(create_app(site.config), cookies={"secagg_session": cookie or ""})
    assert stale.get("/", follow_redirects=False).status_code == 303
    assert stale.get("/api/events").status_code == 401


def test_the_pages_load_nothing_from_elsewhere(site: Site) -> None:
    client = login(site.config, "ann")
    for path in ("/", "/events/1", "/agents", "/plots"):
        r = client.get(path)
        assert r.status_code == 200, path
        csp = r.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert r.headers["x-frame-options"] == "DENY"
        assert not re.search(r'(src|href)="(https?:)?//', r.text), path


def test_filters_and_live_rows(site: Site) -> None:
    client = login(site.config, "vic")
    assert card_ids(client.get("/").text) == [3, 2, 1]
    assert card_ids(client.get("/?camera=door").text) == [2]
    assert card_ids(client.get("/?site=home").text) == [3, 2]
    assert card_ids(client.get("/?severity=critical").text) == []
    assert card_ids(client.get("/?label=person&state=ended").text) == [3, 2, 1]
    assert card_ids(client.get("/?state=open").text) == []
    assert card_ids(client.get("/?since=2026-11-28T12:00:20").text) == [3, 2]
    assert card_ids(client.get("/?until=2026-11-28T12:00:20").text) == [1]
    rows = client.get("/events/rows?after_id=1")
    assert card_ids(rows.text) == [3, 2] and rows.headers["x-latest-id"] == "3"
    rows = client.get("/events/rows?after_id=3")
    assert card_ids(rows.text) == [] and rows.headers["x-latest-id"] == "3"
    assert card_ids(client.get("/events/rows?after_id=0&camera=yard").text) == [1]
    # a viewer sees no review controls; the snapshots have their boxes drawn
    page = client.get("/").text
    assert 'id="mark-reviewed"' not in page and 'class="pick"' not in page
    assert page.count('class="box"') == 3 and "/api/snapshots/" in page


def test_reviews_record_who_and_when(site: Site) -> None:
    client = login(site.config, "ann")
    csrf = csrf_of(client.get("/").text)
    r = client.post(
        "/api/events/review", json={"event_ids": [1, 3, 99]}, headers={"X-CSRF-Token": csrf}
    )
    assert r.status_code == 200
    assert r.json()["event_ids"] == [1, 3] and r.json()["reviewed_by"] == "ann"
    assert card_ids(client.get("/?reviewed=yes").text) == [3, 1]
    assert card_ids(client.get("/?reviewed=no").text) == [2]
    event = client.get("/api/events/1").json()
    assert event["reviewed_by"] == "ann" and event["reviewed_at"] is not None
    assert "reviewed by ann at" in client.get("/").text
    assert [e["id"] for e in client.get("/api/events?reviewed=false").json()] == [2]
    r = client.post(
        "/api/events/review",
        json={"event_ids": [3], "reviewed": False},
        headers={"X-CSRF-Token": csrf},
    )
    assert r.json()["reviewed_by"] is None
    assert card_ids(client.get("/?reviewed=no").text) == [3, 2]


def test_event_and_agents_pages(site: Site) -> None:
    client = login(site.config, "vic")
    page = client.get("/events/1").text
    for part in ("Provenance", "Timeline", "Notifications", "Logs of this result", "Frames (1)"):
        assert part in page
    assert "model" in page and "rules" in page and 'id="reproduce"' not in page
    assert client.get("/events/999").status_code == 404
    agents = client.get("/agents").text
    assert "cam-host" in agents and "CPUExecutionProvider" in agents
    assert "<td>5.0</td>" in agents  # 50 frames between two statuses 10 s apart
    assert "Drawing plots needs the operator role" in client.get("/plots").text
