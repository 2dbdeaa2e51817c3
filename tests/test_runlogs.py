"""The logs of any run: a real ``secagent run`` on stills, some of them broken, logs warnings
with their camera and frame; they reach a real ``secagg serve`` and are stored with their
run. ``secagg logs --agent/--frame/--event`` and ``GET /api/logs`` show them, with secagg's
own warnings about the same result (a webhook that fails once). A flood is held to the rate,
and an agent cannot log under another's name."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from demo.broker import Mosquitto
from demo.footage import write_door_stills
from tests.support import wait_for
from tests.support.auth import HEADERS
from tests.support.processes import (
    BIN,
    run_agent_to_completion,
    running_aggregator,
    write_agent_config,
    write_aggregator_config,
)
from tests.support.servers import WebhookServer


def publish(broker: Mosquitto, topic: str, doc: dict[str, object]) -> None:
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        client.publish(topic, json.dumps(doc), qos=1).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()


def logs_message(agent_id: str, lines: list[dict[str, object]]) -> dict[str, object]:
    return {
        "schema": "secagent.logs/1",
        "agent_id": agent_id,
        "lines": lines,
        "sent_at": datetime.now(UTC).isoformat(),
    }


def line(msg: str, **ids: object) -> dict[str, object]:
    return {
        "at": datetime.now(UTC).isoformat(),
        "level": "WARNING",
        "logger": "agent.test",
        "msg": msg,
        **ids,
    }


def secagg_logs(config: Path, *args: str) -> str:
    done = subprocess.run(
        [str(BIN / "secagg"), "logs", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_agent_and_secagg_logs_of_a_result(broker: Mosquitto, tmp_path: Path) -> None:
    door = tmp_path / "door"
    expected = write_door_stills(door)
    with WebhookServer(fail_first=1) as hook:
        config, api = write_aggregator_config(
            tmp_path,
            broker,
            client_id="secagg-runlogs",
            extra_yaml=(
                "run_logs: {max_lines_per_minute: 50}\n"
                "notify:\n  notifiers:\n"
                f"    - {{name: soc, type: webhook, url: '{hook.url}', "
                "retry: {backoff_base_s: 0.2}}\n"
            ),
        )
        agent_conf = write_agent_config(
            tmp_path,
            broker,
            agent_id="logs-host",
            cameras=f"  - name: door\n    source: {{type: directory, path: {door}, watch: false}}\n"
            "",
        )
        with running_aggregator(config, api, tmp_path / "secagg.log"):
            summary = run_agent_to_completion(agent_conf)
            rejected = sum(1 for v in expected.values() if v != "ok")
            assert sum(summary["frames_rejected"].values()) == rejected

            def agent_lines() -> list[dict[str, object]]:
                r = httpx.get(f"{api}/api/logs", params={"agent_id": "logs-host"}, headers=HEADERS)
                return [x for x in r.json() if x["source"] == "agent"]

            def all_agent_lines() -> list[dict[str, object]] | None:
                found = agent_lines()
                return found if len(found) >= rejected else None

            found = wait_for(all_agent_lines, what="the agent's warnings stored")
            broken = [x for x in found if "rejected" in str(x["msg"])]
            assert len(broken) == rejected
            assert all(x["camera"] == "door" and x["frame_id"] for x in broken)
            assert all(x["level"] == "WARNING" for x in broken)

            # one frame's lines, through the CLI
            frame_id = str(broken[0]["frame_id"])
            out = secagg_logs(config, "--frame", frame_id)
            assert "rejected" in out and out.count("\n") == 1
            assert "logs-host" in secagg_logs(
                config, "--agent", "logs-host", "--since", "2000-01-01"
            )

            # a result: the person at the door (event 1), a line the agent logged about its
            # lineage, and secagg's own warning when the webhook failed once
            event = httpx.get(f"{api}/api/events/1", headers=HEADERS).json()
            lineage = event["threats"][0]["provenance"]["lineage_id"]
            publish(
                broker,
                "secagent/v1/logs-host/logs",
                logs_message(
                    "logs-host", [line("slow inference on this frame", lineage_id=lineage)]
                ),
            )
            wait_for(lambda: hook.requests, what="the webhook delivered after a failure")

            def about_event() -> list[dict[str, object]]:
                r = httpx.get(f"{api}/api/logs", params={"event_id": 1}, headers=HEADERS)
                return list(r.json())

            def both_sides() -> list[dict[str, object]] | None:
                found = about_event()
                return found if len(found) >= 2 else None

            lines = wait_for(both_sides, what="both sides' lines")
            sources = {(x["source"], x["msg"]) for x in lines}
            assert ("agent", "slow inference on this frame") in sources
            assert any(s == "secagg" and "attempt 1 failed" in str(m) for s, m in sources)
            out = secagg_logs(config, "--event", "1")
            assert "slow inference" in out and "attempt 1 failed" in out
            page_ok = httpx.get(f"{api}/api/events/1", headers=HEADERS).status_code
            assert page_ok == 200

            # a flood is held to the rate; a line under another agent's name is refused
            flood = [line(f"flood {i}") for i in range(100)]
            publish(broker, "secagent/v1/flood-host/logs", logs_message("flood-host", flood))
            publish(
                broker,
                "secagent/v1/flood-host/logs",
                logs_message("logs-host", [line("spoofed", lineage_id=lineage)]),
            )

            def flood_counted() -> str | None:
                text = httpx.get(f"{api}/metrics", headers=HEADERS).text
                return (
                    text
                    if 'secagg_run_log_lines_dropped_total{reason="rate"} 50.0' in text
                    else None
                )

            metrics = wait_for(flood_counted, what="the flood counted")
            assert "secagg_run_log_lines_stored_total" in metrics
            stored = httpx.get(
                f"{api}/api/logs", params={"agent_id": "flood-host", "limit": 1000}, headers=HEADERS
            ).json()
            assert len(stored) == 50
            assert all(x["msg"] != "spoofed" for x in about_event())
