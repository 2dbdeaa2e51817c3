"""Prometheus metrics, scraped from real processes: ``secagg serve`` (ingest counters, refusals
by reason, batch latency, events, notifications, API latency by route) and ``secagent run`` with
``metrics.enabled`` on loopback (frames by outcome, fps, motion, the inference histogram,
outbox, broker connection, the active model)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.metrics import MetricsConfig
from demo.broker import Mosquitto, free_port
from demo.footage import write_door_stills
from tests.support import wait_for
from tests.support.auth import HEADERS
from tests.support.ingest import payload, status_payload
from tests.support.processes import (
    BIN,
    running_aggregator,
    write_agent_config,
    write_aggregator_config,
)


def value(text: str, series: str) -> float | None:
    """The value of one series (``name{labels}``) in Prometheus' text format."""
    found = re.search(r"^" + re.escape(series) + r" ([0-9.e+-]+)$", text, re.MULTILINE)
    return None if found is None else float(found.group(1))


def test_secagg_metrics(broker: Mosquitto, tmp_path: Path) -> None:
    config, api = write_aggregator_config(tmp_path, broker, client_id="secagg-metrics")
    with running_aggregator(config, api, tmp_path / "secagg.log"):
        assert httpx.get(f"{api}/metrics").status_code == 401  # a viewer token is needed
        pub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        pub.connect(broker.host, broker.port)
        pub.loop_start()
        try:
            for i in range(3):
                p = payload(agent_id="m-host", camera="yard", at_s=i)
                p["frame"]["captured_at"] = datetime.now(UTC).isoformat()
                pub.publish("secagent/v1/m-host/threats", _json(p), qos=1).wait_for_publish(10)
            pub.publish("secagent/v1/m-host/threats", b"{not json", qos=1).wait_for_publish(10)
            status = status_payload(agent_id="m-host", sent_at=datetime.now(UTC))
            status.update(outbox_depth=4321, outbox_oldest_age_s=765.0)
            pub.publish("secagent/v1/m-host/status", _json(status), qos=1).wait_for_publish(10)
        finally:
            pub.loop_stop()
            pub.disconnect()
        httpx.get(f"{api}/api/events/1", headers=HEADERS)

        def scrape() -> str:
            r = httpx.get(f"{api}/metrics", headers=HEADERS)
            assert r.headers["content-type"].startswith("text/plain")
            return r.text

        def stored() -> str | None:
            t = scrape()
            waiting = value(t, "secagg_agent_outbox_messages") or 0
            ok = value(t, "secagg_messages_stored_total") == 3 and waiting >= 4321
            return t if ok else None

        text = wait_for(stored, what="three messages and the status stored")
        # the backlog the agents report, summed (other tests' retained statuses add theirs)
        assert (value(text, "secagg_agent_outbox_oldest_seconds") or 0) >= 765.0
        assert value(text, 'secagg_messages_rejected_total{reason="invalid_json"}') == 1
        # every message received is stored, a duplicate, a status or refused; the retained
        # statuses of other tests' agents on this session's broker come too
        rejected = sum(
            float(v)
            for v in re.findall(r"^secagg_messages_rejected_total\{.*\} (\S+)$", text, re.M)
        )
        outcomes = sum(
            value(text, f"secagg_messages_{name}_total") or 0
            for name in ("stored", "duplicate", "status")
        )
        assert value(text, "secagg_messages_received_total") == outcomes + rejected
        assert outcomes + rejected >= 4
        assert value(text, "secagg_broker_connected") == 1
        assert value(text, "secagg_events_open") == 1 and value(text, "secagg_events") == 1
        assert value(text, 'secagg_notifications{state="pending"}') == 0
        assert (value(text, "secagg_ingest_batch_seconds_count") or 0) >= 1
        assert (
            value(
                text,
                'secagg_api_request_seconds_count{method="GET",route="/api/events/{event_id}",'
                'status="200"}',
            )
            == 1
        )


def _json(doc: object) -> bytes:
    return json.dumps(doc).encode()


def test_the_agent_metrics_listener_is_off_by_default() -> None:
    assert MetricsConfig().enabled is False and MetricsConfig().host == "127.0.0.1"


def test_secagent_metrics(broker: Mosquitto, tmp_path: Path) -> None:
    door = tmp_path / "door"
    write_door_stills(door)
    port = free_port()
    agent_conf = write_agent_config(
        tmp_path,
        broker,
        agent_id="metrics-host",
        cameras=f"  - name: door\n    source: {{type: directory, path: {door}, watch: false}}\n",
    )
    with agent_conf.open("a") as f:
        f.write(f"metrics: {{enabled: true, port: {port}}}\n")
    log = (tmp_path / "secagent.log").open("wb")
    proc = subprocess.Popen(
        [str(BIN / "secagent"), "run", "--config", str(agent_conf)],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:

        def scrape() -> str | None:
            assert proc.poll() is None, (tmp_path / "secagent.log").read_text()[-3000:]
            try:
                return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            except httpx.HTTPError:
                return None

        def through() -> str | None:
            t = scrape()
            if t is None:
                return None
            captured = value(t, 'secagent_frames_total{camera="door",outcome="captured"}')
            detected = value(t, 'secagent_frames_total{camera="door",outcome="detected"}')
            return t if captured == 6 and detected else None

        text = wait_for(through, timeout_s=120, what="the door's stills through the agent")
        assert value(text, 'secagent_frames_total{camera="door",outcome="rejected"}') == 4
        assert (value(text, "secagent_inference_seconds_count") or 0) >= 1
        assert value(text, 'secagent_motion_fraction{camera="door"}') is not None
        assert value(text, 'secagent_camera_fps{camera="door"}') is not None
        assert value(text, "secagent_broker_connected") == 1
        assert (value(text, "secagent_outbox_bytes") or 0) > 0
        model = r'secagent_active_release_info\{kind="model",release_id="",sha256="[0-9a-f]{64}"\}'
        assert re.search(model + r" 1\.0", text)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        log.close()
