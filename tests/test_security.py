"""The generated broker config, enforced by a real Mosquitto: agents are confined to their own
topics, wrong passwords and anonymous clients are refused, the aggregator still hears the
legitimate agent."""

from __future__ import annotations

import json
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from aggregator.broker_config import DeploymentSpec, acl_text, write_broker_config
from aggregator.config import AggregatorConfig
from aggregator.ingest import Ingest
from demo.broker import Mosquitto, free_port
from tests.support import wait_for
from tests.support.ingest import threat_payload
from tests.support.processes import BIN


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mosquitto, dict[str, str]]]:
    work = tmp_path_factory.mktemp("site")
    port = free_port()
    spec = DeploymentSpec.model_validate(
        {
            "listener": {"host": "127.0.0.1", "port": port},
            "persistence_dir": str(work / "data"),
            "run_as": "root",
            "agents": ["garage", "door"],
            "readers": ["home-assistant"],
            "ingest_workers": ["w1", "w2"],
        }
    )
    (work / "data").mkdir()
    creds = write_broker_config(spec, work / "broker")
    broker = Mosquitto(work, port=port, config_file=work / "broker" / "mosquitto.conf")
    with broker:
        yield broker, creds


class Client:
    """A paho MQTT 5 client that records its CONNACK, PUBACK reason codes and messages."""

    def __init__(
        self,
        broker: Mosquitto,
        username: str | None,
        password: str | None,
        client_id: str | None = None,
    ) -> None:
        self.connack: ReasonCode | None = None
        self.pubacks: dict[int, ReasonCode] = {}
        self.messages: list[tuple[str, bytes]] = []
        self.subscribed = threading.Event()
        self.c = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id or f"t-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        if username:
            self.c.username_pw_set(username, password)
        self.c.on_connect = lambda c, u, f, rc, p: setattr(self, "connack", rc)
        self.c.on_publish = lambda c, u, mid, rc, p: self.pubacks.__setitem__(mid, rc)
        self.c.on_message = lambda c, u, m: self.messages.append((m.topic, bytes(m.payload)))
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.set()
        self.c.reconnect_delay_set(60, 120)  # no retry storm with a refused password
        self.c.connect_async(broker.host, broker.port)
        self.c.loop_start()
        wait_for(lambda: self.connack is not None, what="CONNACK")

    def publish(self, topic: str, payload: bytes) -> ReasonCode:
        info = self.c.publish(topic, payload, qos=1)
        return wait_for(lambda: self.pubacks.get(info.mid), what="PUBACK")

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def test_a_wrong_password_is_refused(site) -> None:  # type: ignore[no-untyped-def]
    broker, creds = site
    client = Client(broker, "garage", creds["garage"] + "x")
    try:
        assert client.connack is not None and client.connack.is_failure
        assert "authori" in str(client.connack).lower()
    finally:
        client.close()


def test_anonymous_clients_are_refused(site) -> None:  # type: ignore[no-untyped-def]
    broker, _ = site
    client = Client(broker, None, None)
    try:
        assert client.connack is not None and client.connack.is_failure
    finally:
        client.close()


def test_an_agent_cannot_publish_as_another_and_nothing_is_stored(  # type: ignore[no-untyped-def]
    site, tmp_path: Path
) -> None:
    broker, creds = site
    config = AggregatorConfig.model_validate(
        {
            "mqtt": {
                "host": broker.host,
                "port": broker.port,
                "username": "secagg",
                "password": creds["secagg"],
                "client_id": f"secagg-{uuid.uuid4().hex[:6]}",
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
    door = Client(broker, "door", creds["door"])
    garage = Client(broker, "garage", creds["garage"])
    try:
        wait_for(ingest.connected.is_set, what="aggregator connected with its account")
        forged = json.dumps(threat_payload(agent_id="garage")).encode()
        refused = door.publish("secagent/v1/garage/threats", forged)
        assert refused.is_failure and "authori" in str(refused).lower()
        # On its own topic, a payload claiming another id is refused by the aggregator.
        assert not door.publish("secagent/v1/door/threats", forged).is_failure
        wait_for(lambda: ingest.stats.rejected["agent_mismatch"] == 1, what="mismatch refused")
        legit = threat_payload(agent_id="garage")
        assert not garage.publish(
            "secagent/v1/garage/threats", json.dumps(legit).encode()
        ).is_failure
        wait_for(lambda: ingest.stats.stored == 1, what="the legitimate threat stored")
        assert ingest.stats.stored == 1 and sum(ingest.stats.rejected.values()) == 1
    finally:
        door.close()
        garage.close()
        ingest.stop()


def test_agents_read_only_their_own_topics(site) -> None:  # type: ignore[no-untyped-def]
    broker, creds = site
    door = Client(broker, "door", creds["door"])
    reader = Client(broker, "home-assistant", creds["home-assistant"])
    garage = Client(broker, "garage", creds["garage"])
    try:
        door.c.subscribe("secagent/v1/+/threats", qos=1)
        reader.c.subscribe("secagent/v1/#", qos=1)
        wait_for(
            lambda: door.subscribed.is_set() and reader.subscribed.is_set(),
            what="subscriptions answered",
        )
        garage.publish("secagent/v1/garage/threats", b"{}")
        garage.publish("secagent/v1/garage/status", b"{}")
        wait_for(lambda: reader.messages, what="the reader gets the status")
        assert [t for t, _ in reader.messages] == ["secagent/v1/garage/status"]
        assert door.messages == []
        assert garage.publish("secagent/v1/events", b"{}").is_failure
    finally:
        for client in (door, reader, garage):
            client.close()


def test_rerunning_keeps_passwords_and_adds_the_new_agent(tmp_path: Path) -> None:
    spec_path = tmp_path / "site.yaml"
    spec_path.write_text("listener: {host: 127.0.0.1, port: 18883}\nagents: [a1]\n")
    run = [
        str(BIN / "secagg"),
        "broker-config",
        "--spec",
        str(spec_path),
        "--out",
        str(tmp_path / "out"),
    ]
    subprocess.run(run, check=True, capture_output=True)
    first = yaml.safe_load((tmp_path / "out" / "credentials.yaml").read_text())
    spec_path.write_text("listener: {host: 127.0.0.1, port: 18883}\nagents: [a1, a2]\n")
    subprocess.run(run, check=True, capture_output=True)
    second = yaml.safe_load((tmp_path / "out" / "credentials.yaml").read_text())
    assert second["a1"] == first["a1"] and second["secagg"] == first["secagg"]
    assert set(second) == {"secagg", "a1", "a2"}
    assert (tmp_path / "out" / "credentials.yaml").stat().st_mode & 0o077 == 0
    passwd = (tmp_path / "out" / "passwd").read_text()
    assert "a2:$" in passwd and second["a2"] not in passwd  # hashed, not plain
    conf = (tmp_path / "out" / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf and "listener 18883 127.0.0.1" in conf
    assert "use_username_as_clientid true" in conf


LOCAL = {"host": "127.0.0.1", "port": 1883}
TLS = {"cafile": "/ca.crt", "certfile": "/server.crt", "keyfile": "/server.key"}
CENTRAL = {"host": "central.example", "cafile": "/ca.crt"}


def a_site(name: str, agents: list[str], **more: Any) -> dict[str, Any]:
    return {"name": name, "listener": LOCAL, "central": CENTRAL, "agents": agents, **more}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        # (spec, None: accepted, else a part of the error)
        ({"agents": [], "listener": LOCAL}, "agents"),
        ({"agents": ["a/b"], "listener": LOCAL}, "agent id"),
        ({"agents": ["secagg"], "listener": LOCAL}, "distinct"),
        ({"agents": ["a"], "readers": ["a"], "listener": LOCAL}, "distinct"),
        ({"agents": ["a"], "listener": {"port": 0, "host": "127.0.0.1"}}, "listener.port"),
        ({"agents": ["a"]}, "listener"),
        # plain text on the network is refused unless explicitly allowed
        ({"agents": ["a"], "listener": {"host": "0.0.0.0", "port": 1883}}, "plain text"),
        ({"agents": ["a"], "listener": {"host": "10.0.0.5", "port": 1883}}, "plain text"),
        ({"agents": ["a"], "listener": {"host": "::", "port": 1883}}, "plain text"),
        ({"agents": ["a"], "listener": {"host": "0.0.0.0", "port": 8883, "tls": TLS}}, None),
        ({"agents": ["a"], "listener": {"host": "::1", "port": 1883}}, None),
        ({"agents": ["a"], "listener": LOCAL}, None),
        # site brokers (docs/deploy.md, "Site brokers")
        ({"sites": [a_site("north", ["n1"])], "listener": LOCAL}, None),
        ({"sites": [a_site("north", ["n1"])], "listener": {"port": 8883, "tls": TLS}}, None),
        ({"sites": [a_site("north", [])], "listener": LOCAL}, "agents"),
        ({"sites": [a_site("n/1", ["n1"])], "listener": LOCAL}, "sites.0.name"),
        ({"agents": ["n1"], "sites": [a_site("north", ["n1"])], "listener": LOCAL}, "distinct"),
        (
            {"sites": [a_site("north", ["n1"]), a_site("north", ["n2"])], "listener": LOCAL},
            "site names must be distinct",
        ),
        (
            {"agents": ["bridge-north"], "sites": [a_site("north", ["n1"])], "listener": LOCAL},
            "distinct",
        ),
        (
            {
                "sites": [a_site("north", ["n1"], central={"host": "c"})],
                "listener": {"port": 8883, "tls": TLS},
            },
            "central.cafile",
        ),
        (
            {"sites": [a_site("north", ["n1"], max_queued_messages=10)], "listener": LOCAL},
            "max_queued_messages",
        ),
        (
            {
                "sites": [a_site("north", ["n1"], listener={"host": "0.0.0.0", "port": 1883})],
                "listener": LOCAL,
            },
            "plain text",
        ),
        (
            {
                "agents": ["a"],
                "listener": {"host": "0.0.0.0", "port": 1883, "allow_plaintext": True},
            },
            None,
        ),
    ],
)
def test_bad_specs_are_refused(spec: dict[str, Any], message: str | None, tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(spec))
    done = subprocess.run(
        [str(BIN / "secagg"), "broker-config", "--spec", str(path), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
    )
    if message is None:
        assert done.returncode == 0, done.stderr
    else:
        assert done.returncode != 0 and message in done.stderr, done.stderr


class Watched(Client):
    """A client that counts how often the broker disconnected it."""

    def __init__(self, broker: Mosquitto, username: str, password: str, client_id: str) -> None:
        self.disconnects = 0
        super().__init__(broker, username, password, client_id)
        self.c.on_disconnect = lambda c, u, f, rc, p: setattr(
            self, "disconnects", self.disconnects + 1
        )


# the victim's account, the client id it connects with (agent/mqtt.py, aggregator.config) and
# a topic it may publish on
VICTIMS = [
    ("garage", "secagent-garage", "secagent/v1/garage/status"),
    ("secagg", "secagg", "secagent/v1/events"),
]


@pytest.mark.parametrize(("victim", "client_id", "topic"), VICTIMS, ids=[v[0] for v in VICTIMS])
def test_an_agent_cannot_take_over_another_client_id(  # type: ignore[no-untyped-def]
    site, victim: str, client_id: str, topic: str
) -> None:
    """Agent ``door`` connects 20 times with the victim's client id (another agent's, or the
    aggregator's): the broker binds client ids to accounts, so the victim is never kicked."""
    broker, creds = site
    target = Watched(broker, victim, creds[victim], client_id)
    assert target.connack is not None and not target.connack.is_failure
    try:
        for _ in range(20):
            rogue = mqtt.Client(
                callback_api_version=CallbackAPIVersion.VERSION2,
                client_id=client_id,
                protocol=mqtt.MQTTv5,
            )
            rogue.username_pw_set("door", creds["door"])
            rogue.reconnect_delay_set(60, 120)
            rogue.connect(broker.host, broker.port)
            rogue.loop_start()
            wait_for(rogue.is_connected, what="the rogue's own session")
            rogue.disconnect()
            rogue.loop_stop()
            # a round trip through the broker on the victim's session: it is still there
            assert not target.publish(topic, b"{}").is_failure
        assert target.disconnects == 0 and target.c.is_connected()
    finally:
        target.close()


def test_the_acl_confines_agents_to_their_own_prefix() -> None:
    acl = acl_text(DeploymentSpec.model_validate({"agents": ["cam1"], "listener": LOCAL}))
    agent_block = acl.split("user cam1\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert all("secagent/v1/cam1/" in line for line in agent_block)
    assert not any("+" in line or "#" in line for line in agent_block)


def test_site_files_keep_their_passwords_and_hide_the_bridges(tmp_path: Path) -> None:
    """A spec with a site: its folder holds the site's agents only; the bridge's password is
    the central account's, kept across runs, in a config only root and mosquitto may read."""
    spec_path = tmp_path / "site.yaml"
    north_spec = a_site("north", ["n1"])
    spec = {"agents": ["a1"], "sites": [north_spec], "listener": LOCAL}
    spec_path.write_text(yaml.safe_dump(spec))
    run = [str(BIN / "secagg"), "broker-config", "--spec", str(spec_path), "--out", str(tmp_path)]
    subprocess.run(run, check=True, capture_output=True)
    central = yaml.safe_load((tmp_path / "credentials.yaml").read_text())
    north = tmp_path / "sites" / "north"
    conf = (north / "mosquitto.conf").read_text()
    assert set(central) == {"secagg", "a1", "bridge-north"}
    assert set(yaml.safe_load((north / "credentials.yaml").read_text())) == {"n1"}
    assert f"remote_password {central['bridge-north']}\n" in conf
    assert (north / "mosquitto.conf").stat().st_mode & 0o007 == 0
    assert "user n1\n" in (north / "acl").read_text()
    assert "n1" not in (tmp_path / "passwd").read_text()  # no account centrally
    north_spec["agents"] = ["n1", "n2"]
    spec_path.write_text(yaml.safe_dump(spec))
    subprocess.run(run, check=True, capture_output=True)
    assert f"remote_password {central['bridge-north']}\n" in (north / "mosquitto.conf").read_text()
    assert "topic write secagent/v1/n2/threats" in (tmp_path / "acl").read_text()


def test_ingest_workers_share_the_threats_each_on_its_own_account(  # type: ignore[no-untyped-def]
    site,
) -> None:
    """``ingest_workers: [w1, w2]``: accounts ``secagg-w1`` and ``secagg-w2`` with the
    aggregator's password, each its own client id, both members of the shared subscription;
    each threat reaches one of them; they may not publish threats."""
    broker, creds = site
    assert creds["secagg-w1"] == creds["secagg-w2"] == creds["secagg"]
    workers = [Client(broker, f"secagg-{w}", creds["secagg"]) for w in ("w1", "w2")]
    agent = Client(broker, "garage", creds["garage"])
    try:
        for worker in workers:
            assert worker.connack is not None and not worker.connack.is_failure
            worker.c.subscribe("$share/secagg/secagent/v1/+/threats", qos=1)
            wait_for(worker.subscribed.is_set, what="the shared subscription")
        for i in range(20):
            assert not agent.publish("secagent/v1/garage/threats", b"%d" % i).is_failure
        wait_for(lambda: sum(len(w.messages) for w in workers) >= 20, what="20 threats")
        got = sorted(int(p) for w in workers for _, p in w.messages)
        assert got == list(range(20))  # each once
        assert all(w.messages for w in workers)  # shared, not all to one
        assert workers[0].publish("secagent/v1/garage/threats", b"x").value == 0x87
    finally:
        for client in (*workers, agent):
            client.close()


def test_worker_accounts_are_named_after_the_aggregators() -> None:
    spec = DeploymentSpec.model_validate(
        {"agents": ["cam1"], "listener": LOCAL, "aggregator_user": "agg", "ingest_workers": ["a"]}
    )
    block = acl_text(spec).split("user agg-a\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert block == [
        "topic read secagent/v1/+/threats",
        "topic write secagent/v1/+/receipts",
        "topic readwrite secagent/v1/events",
    ]
