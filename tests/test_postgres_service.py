"""secagg's own code over a PostgreSQL store, end to end: the ingest over a real Mosquitto
(threats stored once, grouped into events, receipted), the REST API reading them, the commands,
and the real ``secagg serve`` process with a webhook notifier."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from aggregator import store
from aggregator.api import create_app
from aggregator.config import AggregatorConfig
from demo.broker import Mosquitto
from demo.postgres import Postgres
from tests.support import wait_for
from tests.support.auth import HEADERS, seed_tokens
from tests.support.ingest import Harness, running_ingest, subscribe_json, threat_payload

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def pg_config(postgres: Postgres, broker: Mosquitto, tmp_path: Path) -> AggregatorConfig:
    """An in-process aggregator config (as tests/support/ingest.py's ingest_config) whose store
    is a new PostgreSQL database."""
    doc: dict[str, Any] = {
        "mqtt": {
            "host": broker.host,
            "port": broker.port,
            "client_id": f"secagg-{uuid.uuid4().hex[:8]}",
            "session_expiry_s": 0,
        },
        "store": {
            "url": postgres.create_database(f"service_{uuid.uuid4().hex[:8]}"),
            "snapshots_dir": str(tmp_path / "snapshots"),
            "plots_dir": str(tmp_path / "plots"),
        },
        "events": {"cutoff_s": 10},
    }
    return AggregatorConfig.model_validate(doc)


@pytest.fixture
def pg_harness(pg_config: AggregatorConfig, broker: Mosquitto) -> Iterator[Harness]:
    with running_ingest(pg_config, broker) as h:
        yield h


def test_the_ingest_stores_into_postgresql_once_each_and_receipts(
    pg_harness: Harness, pg_config: AggregatorConfig, broker: Mosquitto
) -> None:
    sub, receipts = subscribe_json(broker, "secagent/v1/cam-host/receipts")
    try:
        sent = [threat_payload(at_s=i) for i in range(3)] + [threat_payload(at_s=60)]
        for p in [*sent, sent[0]]:  # and a redelivery
            pg_harness.send(p)
        stats = pg_harness.ingest.stats
        wait_for(lambda: stats.stored + stats.duplicates == 5, what="five deliveries")
        assert (stats.stored, stats.duplicates) == (4, 1)
        wait_for(
            lambda: (
                {m for r in receipts for m in r.get("stored", [])}
                >= {p["message_id"] for p in sent}
            ),
            what="receipts",
        )
    finally:
        sub.loop_stop()
        sub.disconnect()
    conn = store.connect(pg_config.store.target, readonly=True)
    try:
        counts = store.counters.row_counts(conn)
        events = store.events.list_events(conn, limit=10)
    finally:
        conn.close()
    assert (counts.messages, counts.threats, counts.events) == (4, 4, 2)
    assert [e.threat_count for e in events] == [1, 3]  # newest first; 60 s is past the cutoff


def test_the_api_reads_a_postgresql_store(pg_config: AggregatorConfig, broker: Mosquitto) -> None:
    from tests.support.ingest import store_payloads

    store_payloads(
        pg_config,
        [threat_payload(camera=("yard", "door")[i % 2], at_s=60 * i) for i in range(6)],
        target=pg_config.store.target,
    )
    seed_tokens(pg_config.store.target)
    with TestClient(create_app(pg_config), headers=HEADERS) as client:
        events = client.get("/api/events", params={"limit": 4})
        assert events.status_code == 200, events.text
        assert [e["id"] for e in events.json()] == [6, 5, 4, 3]
        following = client.get(events.links["next"]["url"])
        assert [e["id"] for e in following.json()] == [2, 1]
        door = client.get("/api/events", params={"camera": "door"}).json()
        assert [e["id"] for e in door] == [6, 4, 2]
        event = client.get("/api/events/1")
        assert event.status_code == 200, event.text
        threats = client.get("/api/threats", params={"limit": 10})
        assert threats.status_code == 200 and len(threats.json()) == 6
        health = client.get("/api/health")
        assert health.status_code in (200, 503), health.text
        assert (health.json()["threats"], health.json()["events"]) == (6, 6)


def test_secagg_commands_on_a_postgresql_store(pg_config: AggregatorConfig, tmp_path: Path) -> None:
    """Tokens, plots with their lineage, the notifications list; backup says to use pg_dump."""
    from click.testing import CliRunner

    from aggregator.cli import main
    from tests.support.ingest import store_payloads

    store_payloads(
        pg_config, [threat_payload(at_s=60 * i) for i in range(3)], target=pg_config.store.target
    )
    config_path = tmp_path / "secagg.yaml"
    config_path.write_text(
        f"store:\n  url: {pg_config.store.url}\n  snapshots_dir: {tmp_path / 'snapshots'}\n"
        f"  plots_dir: {tmp_path / 'plots'}\n"
    )

    def run(*args: str) -> str:
        result = CliRunner().invoke(main, [*args, "--config", str(config_path)])
        assert result.exit_code == 0, (args, result.output)
        return result.output

    run("token", "create", "--name", "grafana", "--role", "viewer")
    assert "grafana" in run("token", "list")
    drawn = run("plot", "events_by_label")
    plot_id = drawn.split()[0]
    assert plot_id.startswith("plot:") and "(3 event(s))" in drawn
    assert "event:1" in run("explain", plot_id)
    assert "event:3" in run("explain", "3")
    run("notifications")
    refused = CliRunner().invoke(
        main, ["backup", "--config", str(config_path), "--out", str(tmp_path / "b.sqlite")]
    )
    assert refused.exit_code == 1 and "pg_dump" in refused.output


def test_secagg_serve_runs_on_postgresql(
    postgres: Postgres, broker: Mosquitto, tmp_path: Path
) -> None:
    """The real ``secagg serve`` process on a PostgreSQL store: threats over MQTT are stored
    and grouped, the API answers over HTTP, the webhook notifier delivers one notification per
    event, run logs are on, and SIGTERM stops it cleanly."""
    import signal

    import httpx
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from demo.broker import free_port
    from tests.support.processes import running_aggregator
    from tests.support.servers import WebhookServer

    url = postgres.create_database(f"serve_{uuid.uuid4().hex[:8]}")
    seed_tokens(url)
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    with WebhookServer() as hook:
        config = tmp_path / "secagg.yaml"
        config.write_text(
            f"mqtt: {{host: {broker.host}, port: {broker.port}, "
            f"client_id: secagg-{uuid.uuid4().hex[:8]}}}\n"
            f"store: {{url: '{url}', snapshots_dir: snapshots, plots_dir: plots}}\n"
            "events: {cutoff_s: 10, sweep_interval_s: 0.5}\n"
            f"api: {{host: 127.0.0.1, port: {port}}}\n"
            f"notify: {{notifiers: [{{name: soc, type: webhook, url: '{hook.url}'}}]}}\n"
        )
        log = tmp_path / "secagg.log"
        with running_aggregator(config, api, log) as proc:

            def health() -> dict[str, Any] | None:
                assert proc.poll() is None, f"secagg exited: {log.read_text()[-3000:]}"
                try:
                    found: dict[str, Any] = httpx.get(
                        f"{api}/api/health", headers=HEADERS, timeout=1
                    ).json()
                except httpx.HTTPError:
                    return None
                return found if found.get("broker_connected") else None

            pub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
            pub.connect(broker.host, broker.port)
            pub.loop_start()
            try:
                for p in [threat_payload(at_s=0), threat_payload(at_s=1), threat_payload(at_s=60)]:
                    raw = json.dumps(p).encode()
                    pub.publish("secagent/v1/cam-host/threats", raw, qos=1).wait_for_publish(10)
            finally:
                pub.loop_stop()
                pub.disconnect()
            wait_for(lambda: (health() or {}).get("threats") == 3, what="three threats stored")
            events = httpx.get(f"{api}/api/events", headers=HEADERS, timeout=5).json()
            assert [e["threat_count"] for e in events] == [1, 2]
            wait_for(lambda: len(hook.requests) >= 2, what="one notification per event")
            notified = sorted(body["event"]["event_id"] for _, body in hook.requests)
            assert notified == [1, 2]
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, log.read_text()[-3000:]


def test_the_review_pages_on_a_postgresql_store(pg_config: AggregatorConfig) -> None:
    """Login, the events page with its cards, an event, the agents and plots pages."""
    import re

    from aggregator.auth import accounts
    from aggregator.auth.roles import Role
    from tests.support.ingest import payload, status_payload, store_payloads

    target = pg_config.store.target
    store_payloads(
        pg_config,
        [payload(at_s=0, camera="yard"), payload(at_s=30, camera="door"), status_payload()],
        target=target,
    )
    conn = store.connect(target)
    try:
        with store.transaction(conn):
            accounts.add_user(conn, name="ann", role=Role.operator, password="ann-password-1")
    finally:
        conn.close()
    with TestClient(create_app(pg_config)) as client:
        r = client.post(
            "/login",
            data={"username": "ann", "password": "ann-password-1", "next": "/"},
            follow_redirects=False,
        )
        assert r.status_code == 303, r.text
        events = client.get("/")
        assert events.status_code == 200, events.text
        cards = re.findall(r'class="card[^"]*" data-event-id="(\d+)"', events.text)
        assert [int(c) for c in cards] == [2, 1]
        for page in ("/events/1", "/agents", "/plots"):
            assert client.get(page).status_code == 200, page
