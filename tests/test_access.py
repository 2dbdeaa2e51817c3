"""Access control of the API: every route of the OpenAPI schema without a credential (401),
with a role too low (403), with a revoked token (401) and with the role it needs; tokens made,
listed and revoked through the API and ``secagg token``; secrets never in logs, answers or the
database file; signed snapshot links; health and metrics public only when configured."""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from aggregator import store
from aggregator.api import create_app
from aggregator.auth import accounts, links
from aggregator.auth.roles import Role
from aggregator.config import AggregatorConfig
from tests.support.auth import TOKENS, headers, seed_tokens
from tests.support.ingest import (
    JPEG_SHA,
    T0,
    make_config,
    payload,
    status_payload,
    store_payloads,
)
from tests.support.processes import BIN

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ROLES: dict[tuple[str, str], str] = {
    ("GET", "/api/ping"): "viewer",
    ("GET", "/api/health"): "viewer",
    ("GET", "/metrics"): "viewer",
    ("GET", "/api/threats"): "viewer",
    ("GET", "/api/events"): "viewer",
    ("GET", "/api/events/{event_id}"): "viewer",
    ("GET", "/api/events/{event_id}/snapshot.jpg"): "viewer",
    ("GET", "/api/snapshots/{sha256}.jpg"): "viewer",
    ("GET", "/api/agents"): "viewer",
    ("GET", "/api/agents/{agent_id}"): "viewer",
    ("GET", "/api/agents/{agent_id}/history"): "viewer",
    ("GET", "/api/notifications"): "viewer",
    ("GET", "/api/notifications/{notification_id}"): "viewer",
    ("GET", "/api/provenance/{artifact_id}"): "viewer",
    ("GET", "/api/plots/{plot_id}.png"): "viewer",
    ("GET", "/api/plots/{plot_id}"): "viewer",
    ("GET", "/api/releases"): "viewer",
    ("GET", "/api/releases/{release_id}"): "viewer",
    ("GET", "/api/rollouts"): "viewer",
    ("GET", "/api/rollouts/{rollout_id}"): "viewer",
    ("GET", "/api/rollouts/{rollout_id}/compare"): "viewer",
    ("GET", "/api/logs"): "viewer",
    ("GET", "/api/me"): "viewer",
    ("POST", "/api/plots"): "operator",
    ("POST", "/api/events/review"): "operator",
    ("POST", "/api/events/{event_id}/reproduce"): "operator",
    ("GET", "/api/tokens"): "admin",
    ("POST", "/api/tokens"): "admin",
    ("DELETE", "/api/tokens/{token_id}"): "admin",
    ("GET", "/api/links/events/{event_id}/snapshot.jpg"): "signed",
    ("GET", "/ota/v1/metadata/{name}"): "agent",
    ("GET", "/ota/v1/targets/{kind}/{name}"): "agent",
}
"""The role each route needs: ``signed`` (a signed link), ``agent`` (an agent's OTA token,
never a user's: tests/test_ota_refusals.py)."""

PATHS = {
    "event_id": "1",
    "sha256": JPEG_SHA,
    "agent_id": "cam-host",
    "notification_id": "1",
    "artifact_id": "event:1",
    "plot_id": "0" * 64,
    "release_id": "1",
    "rollout_id": "1",
    "token_id": "999",
    "name": "timestamp.json",
    "kind": "model",
}
QUERIES = {("GET", "/api/logs"): {"event_id": "1"}}
BODIES: dict[tuple[str, str], Any] = {
    ("POST", "/api/plots"): {"kind": "timeline"},
    ("POST", "/api/events/review"): {"event_ids": [1]},
    ("POST", "/api/tokens"): {"name": "made-in-test", "role": "viewer"},
}
BELOW = {Role.operator: Role.viewer, Role.admin: Role.operator}


@dataclass
class Site:
    config: AggregatorConfig
    client: TestClient


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    work = tmp_path_factory.mktemp("access")
    config = make_config(work, store={"plots_dir": str(work / "plots")})
    store_payloads(
        config,
        [payload(at_s=t) for t in (0, 1)] + [status_payload(sent_at=T0.replace(minute=1))],
    )
    seed_tokens(config.store.path)
    yield Site(config, TestClient(create_app(config)))


def request(client: TestClient, method: str, path: str, **kwargs: Any) -> httpx.Response:
    concrete = path
    for name, value in PATHS.items():
        concrete = concrete.replace("{" + name + "}", value)
    key = (method, path)
    response: httpx.Response = client.request(
        method, concrete, params=QUERIES.get(key), json=BODIES.get(key), **kwargs
    )
    return response


def test_the_table_names_every_route(site: Site) -> None:
    schema = site.client.get("/openapi.json").json()
    routes = {(m.upper(), p) for p, ops in schema["paths"].items() for m in ops}
    assert routes == set(ROLES)


@pytest.mark.parametrize(("method", "path"), sorted(ROLES))
def test_each_route_needs_its_role(site: Site, method: str, path: str) -> None:
    needed = ROLES[(method, path)]
    anonymous = request(site.client, method, path)
    if needed == "agent":  # OTA off here: nothing is served to anyone, a user's token included
        assert anonymous.status_code == 404
        assert request(site.client, method, path, headers=headers(Role.admin)).status_code == 404
        return
    assert anonymous.status_code == 401, anonymous.text
    if needed == "signed":
        admin = request(site.client, method, path, headers=headers(Role.admin))
        assert admin.status_code == 401  # a user's token is no signature
        return
    assert anonymous.headers["www-authenticate"] == "Bearer"
    wrong = request(site.client, method, path, headers={"Authorization": "Bearer sga_nope"})
    assert wrong.status_code == 401
    role = Role[needed]
    if role in BELOW:
        low = request(site.client, method, path, headers=headers(BELOW[role]))
        assert low.status_code == 403, low.text
        assert f"{needed} role needed" in low.json()["detail"]
    ok = request(site.client, method, path, headers=headers(role))
    assert ok.status_code not in (401, 403), ok.text


def test_tokens_through_the_api_never_show_their_secret_again(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    admin = headers(Role.admin)
    made = site.client.post(
        "/api/tokens", json={"name": "grafana", "role": "viewer"}, headers=admin
    )
    assert made.status_code == 201
    secret = made.json()["token"]
    assert secret.startswith("sga_") and made.json()["hint"] == secret[:8]
    mine = {"Authorization": f"Bearer {secret}"}
    assert site.client.get("/api/me", headers=mine).json() == {
        "name": "grafana",
        "role": "viewer",
        "kind": "token",
    }
    assert site.client.get("/api/events", headers=mine).status_code == 200
    assert (
        site.client.post("/api/events/review", json={"event_ids": [1]}, headers=mine).status_code
        == 403
    )
    listed = site.client.get("/api/tokens", headers=admin)
    assert secret not in listed.text and "grafana" in listed.text
    assert site.client.delete(f"/api/tokens/{made.json()['id']}", headers=admin).status_code == 204
    assert site.client.get("/api/events", headers=mine).status_code == 401  # at once
    assert site.client.delete(f"/api/tokens/{made.json()['id']}", headers=admin).status_code == 404
    assert (
        site.client.post(
            "/api/tokens", json={"name": "x", "role": "root"}, headers=admin
        ).status_code
        == 422
    )
    # the secret is nowhere: not in a log line, nor in the database's files
    assert all(secret not in r.getMessage() for r in caplog.records)
    for token in TOKENS.values():
        assert all(token not in r.getMessage() for r in caplog.records)
    db = site.config.store.path
    for path in (db, db.with_name(db.name + "-wal")):
        if path.exists():
            assert secret.encode() not in path.read_bytes()


def test_secagg_token_and_user_commands(tmp_path: Path) -> None:
    conf = tmp_path / "secagg.yaml"
    conf.write_text("store: {path: secagg.sqlite}\n")

    def secagg(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "secagg"), *args, "--config", str(conf)],
            capture_output=True,
            text=True,
            input=stdin,
            timeout=60,
        )

    made = secagg("token", "create", "--name", "grafana", "--role", "viewer")
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert secret.startswith("sga_") and "shown this once" in made.stderr
    listed = secagg("token", "list")
    assert "grafana" in listed.stdout and secret not in listed.stdout
    assert secret[:8] in listed.stdout
    assert secagg("token", "revoke", "1").returncode == 0
    assert "grafana" not in secagg("token", "list").stdout
    assert "grafana" in secagg("token", "list", "--all").stdout
    assert secagg("token", "revoke", "1").returncode == 1
    assert secagg("token", "create", "--name", "x", "--role", "root").returncode == 2

    added = secagg(
        "user", "add", "ann", "--role", "operator", "--password-stdin", stdin="s3cret-enough\n"
    )
    assert added.returncode == 0, added.stderr
    assert (
        secagg(
            "user", "add", "ann", "--role", "viewer", "--password-stdin", stdin="another-one-ok\n"
        ).returncode
        == 1
    )
    short = secagg("user", "add", "bob", "--role", "viewer", "--password-stdin", stdin="short\n")
    assert short.returncode == 1 and "at least 10 characters" in short.stderr
    generated = secagg("user", "add", "root", "--role", "admin", "--generate")
    assert "password: " in generated.stdout
    users = secagg("user", "list").stdout
    assert "ann" in users and "operator" in users and "s3cret" not in users
    assert (
        secagg("user", "passwd", "ann", "--password-stdin", stdin="a-new-password\n").returncode
        == 0
    )
    assert secagg("user", "remove", "ann").returncode == 0
    assert secagg("user", "remove", "ann").returncode == 1
    db = (tmp_path / "secagg.sqlite").read_bytes()
    assert b"s3cret-enough" not in db and b"a-new-password" not in db
    assert secret.encode() not in db


def test_signed_snapshot_links(site: Site) -> None:
    conn = store.connect(site.config.store.path, readonly=True)
    try:
        key = store.access.link_key(conn)
    finally:
        conn.close()
    now = int(time.time())
    good = links.snapshot_link("", key, 1, expires_ts=now + 60)
    got = site.client.get(good)
    assert got.status_code == 200 and got.headers["content-type"] == "image/jpeg"
    expired = links.snapshot_link("", key, 1, expires_ts=now - 1)
    assert site.client.get(expired).status_code == 401
    other_event = good.replace("/events/1/", "/events/2/")
    assert site.client.get(other_event).status_code == 401
    forged = links.snapshot_link("", b"another key", 1, expires_ts=now + 60)
    assert site.client.get(forged).status_code == 401
    later = good.replace(f"exp={now + 60}", f"exp={now + 10**6}")
    assert site.client.get(later).status_code == 401


def test_health_and_metrics_public_only_when_configured(tmp_path: Path) -> None:
    closed = make_config(tmp_path / "closed")
    store.migrate(closed.store.path)
    client = TestClient(create_app(closed))
    for path in ("/api/ping", "/api/health", "/metrics"):
        assert client.get(path).status_code == 401, path
    opened = make_config(tmp_path / "open", auth={"public_health": True, "public_metrics": True})
    store.migrate(opened.store.path)
    client = TestClient(create_app(opened))
    assert client.get("/api/ping").status_code == 200
    assert client.get("/api/health").status_code == 503  # no ingest beside it: degraded
    assert client.get("/metrics").status_code == 200
    assert client.get("/api/events").status_code == 401  # and nothing else


def test_a_session_is_no_way_around_the_role(site: Site) -> None:
    """A viewer's page login cannot do an operator's action, and an operator's cannot without
    the CSRF token (another site's form would have the cookie, never the token)."""
    conn = store.connect(site.config.store.path)
    try:
        with store.transaction(conn):
            for name, role in (("vera", Role.viewer), ("otto", Role.operator)):
                if store.access.get_user(conn, name) is None:
                    accounts.add_user(conn, name=name, role=role, password="password-of-" + name)
    finally:
        conn.close()
    for name, expected in (("vera", 403), ("otto", 200)):
        client = TestClient(create_app(site.config))
        r = client.post(
            "/login",
            data={"username": name, "password": "password-of-" + name},
            follow_redirects=False,
        )
        assert r.status_code == 303
        body = {"event_ids": [2]}
        assert client.post("/api/events/review", json=body).status_code == 403  # no CSRF token
        page = client.get("/").text
        csrf = page.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]
        answer = client.post("/api/events/review", json=body, headers={"X-CSRF-Token": csrf})
        assert answer.status_code == expected, answer.text
        wrong = client.post("/api/events/review", json=body, headers={"X-CSRF-Token": "x" * 43})
        assert wrong.status_code == 403
