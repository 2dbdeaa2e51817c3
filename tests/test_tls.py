"""The generated broker config with a TLS listener, on a real Mosquitto: agents and the
aggregator connect over TLS with the CA file from their configs; a plain-text client gets
nowhere."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from aggregator.broker_config import DeploymentSpec, write_broker_config
from aggregator.config import AggregatorConfig
from aggregator.ingest import Ingest
from demo.broker import Mosquitto, free_port
from tests.support import wait_for
from tests.support.certs import make_certs
from tests.support.processes import finish, start_test_threats, write_agent_config


@pytest.fixture(scope="module")
def tls_site(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Mosquitto, dict[str, str], Path]]:
    work = tmp_path_factory.mktemp("tls")
    certs = make_certs(work / "certs")
    port = free_port()
    spec = DeploymentSpec.model_validate(
        {
            "listener": {
                "host": "127.0.0.1",
                "port": port,
                "tls": {k: str(v) for k, v in certs.items()},
            },
            "persistence_dir": str(work / "data"),
            "run_as": "root",
            "agents": ["cam-tls"],
        }
    )
    (work / "data").mkdir()
    creds = write_broker_config(spec, work / "broker")
    broker = Mosquitto(work, port=port, config_file=work / "broker" / "mosquitto.conf")
    with broker:
        yield broker, creds, certs["cafile"]


def test_agent_and_aggregator_talk_over_tls(tls_site, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    broker, creds, ca = tls_site
    config = AggregatorConfig.model_validate(
        {
            "mqtt": {
                "host": "127.0.0.1",
                "port": broker.port,
                "username": "secagg",
                "password": creds["secagg"],
                "client_id": f"secagg-{uuid.uuid4().hex[:6]}",
                "tls_ca_file": str(ca),
                "session_expiry_s": 0,
            },
            "store": {
                "path": str(tmp_path / "secagg.sqlite"),
                "snapshots_dir": str(tmp_path / "snapshots"),
            },
        }
    )
    ingest = Ingest(config)
    ingest.start()
    try:
        wait_for(ingest.connected.is_set, what="aggregator connected over TLS")
        agent_conf = write_agent_config(
            tmp_path,
            broker,
            agent_id="cam-tls",
            cameras=f"  - name: unused\n    source: {{type: directory, path: {tmp_path}}}\n",
        )
        text = agent_conf.read_text().replace(
            "receipt_timeout_s: 5}",
            f"receipt_timeout_s: 5, username: cam-tls, password: '{creds['cam-tls']}', "
            f"tls_ca_file: {ca}}}",
        )
        agent_conf.write_text(text)
        summary = finish(start_test_threats(agent_conf, count=20, drain_timeout_s=60))
        assert summary["receipted"] == 20 and summary["outbox_depth"] == 0
        assert ingest.stats.stored == 20
    finally:
        ingest.stop()


def test_a_plain_text_client_gets_nowhere(tls_site) -> None:  # type: ignore[no-untyped-def]
    broker, creds, _ = tls_site
    connack, dropped = threading.Event(), threading.Event()
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    client.username_pw_set("cam-tls", creds["cam-tls"])
    client.on_connect = lambda c, u, f, rc, p: connack.set()
    client.on_disconnect = lambda c, u, f, rc, p: dropped.set()
    client.reconnect_delay_set(60, 120)
    client.connect("127.0.0.1", broker.port, keepalive=5)  # TCP is accepted ...
    client.loop_start()
    try:
        wait_for(dropped.is_set, timeout_s=15, what="the TLS listener to drop plain MQTT")
        assert not connack.is_set()  # ... but no MQTT session ever starts
    finally:
        client.loop_stop()
