"""A site broker bridged to the central broker, with two real Mosquitto processes configured by
``secagg broker-config`` (a spec with ``sites``), a real ``secagg serve`` on the central broker
(TLS, its own account) and the agent's real outbox and MQTT link (``secagent send-test-threats``)
on the site broker.

Numbered threats (serials) must all be stored exactly once, in order per camera, whatever
happens to the central link; the bridge account of one site can touch no other site's topics.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from agent.synthetic import serial_of
from aggregator.broker_config import DeploymentSpec, site_dir, write_broker_config
from demo.broker import Mosquitto, free_port
from tests.support import wait_for
from tests.support.certs import make_certs
from tests.support.processes import (
    BIN,
    AggregatorProcess,
    finish,
    start_test_threats,
    write_agent_config,
    write_aggregator_config,
)

NORTH_AGENT = "north-cam"
SOUTH_AGENT = "south-cam"


def with_log(conf: Path, log: Path) -> Path:
    """The generated config, logging to a file (Mosquitto's stderr is a pipe nobody reads)."""
    conf.write_text(
        f"log_dest file {log}\nlog_type error\nlog_type warning\nlog_type notice\n"
        + conf.read_text()
    )
    return conf


class Rig:
    """Central broker (TLS) + north site broker bridged to it + secagg + north's agent config."""

    def __init__(self, work: Path, *, max_queued_messages: int = 100_000) -> None:
        self.work = work
        certs = make_certs(work / "certs")
        central_port, north_port, south_port = free_port(), free_port(), free_port()
        for name in ("central-data", "north-data", "south-data"):
            (work / name).mkdir()
        site = {
            "central": {"host": "127.0.0.1", "port": central_port, "cafile": str(certs["cafile"])},
            "run_as": "root",
            "autosave_interval_s": 1,
            "max_queued_messages": max_queued_messages,
        }
        self.spec = DeploymentSpec.model_validate(
            {
                "listener": {
                    "host": "127.0.0.1",
                    "port": central_port,
                    "tls": {k: str(v) for k, v in certs.items()},
                },
                "persistence_dir": str(work / "central-data"),
                "run_as": "root",
                "autosave_interval_s": 1,
                "readers": ["soc"],
                "sites": [
                    {
                        **site,
                        "name": "north",
                        "listener": {"host": "127.0.0.1", "port": north_port},
                        "persistence_dir": str(work / "north-data"),
                        "agents": [NORTH_AGENT],
                    },
                    {
                        **site,
                        "name": "south",
                        "listener": {"host": "127.0.0.1", "port": south_port},
                        "persistence_dir": str(work / "south-data"),
                        "agents": [SOUTH_AGENT],
                    },
                ],
            }
        )
        out = work / "broker"
        self.creds = write_broker_config(self.spec, out)
        self.cafile = certs["cafile"]
        self.central = Mosquitto(
            work / "central-data",
            port=central_port,
            config_file=with_log(out / "mosquitto.conf", work / "central.log"),
        )
        north = site_dir(out, "north")
        self.north_creds = yaml.safe_load((north / "credentials.yaml").read_text())
        self.north = Mosquitto(
            work / "north-data",
            port=north_port,
            config_file=with_log(north / "mosquitto.conf", work / "north.log"),
        )
        agg_conf, api = write_aggregator_config(work, self.central, client_id="secagg")
        agg_conf.write_text(
            agg_conf.read_text().replace(
                "client_id: secagg}",
                f"client_id: secagg, username: secagg, password: '{self.creds['secagg']}', "
                f"tls_ca_file: {self.cafile}}}",
            )
        )
        self.aggregator = AggregatorProcess(agg_conf, api)
        agent_work = work / "agent"
        agent_work.mkdir()
        conf = write_agent_config(
            agent_work,
            self.north,
            agent_id=NORTH_AGENT,
            cameras=f"  - name: unused\n    source: {{type: directory, path: {agent_work}}}\n",
        )
        conf.write_text(
            conf.read_text().replace(
                "receipt_timeout_s: 5}",
                f"receipt_timeout_s: 5, username: {NORTH_AGENT}, "
                f"password: '{self.north_creds[NORTH_AGENT]}'}}",
            )
        )
        self.agent_conf = conf
        self.outbox = agent_work / "outbox.sqlite"
        self.db = work / "secagg.sqlite"

    def stored(self) -> list[tuple[str, int]]:
        """(camera, serial) of every stored message of the north agent, in storing order."""
        if not self.db.exists():
            return []
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
        try:
            rows = conn.execute(
                "SELECT camera, frame_id FROM messages WHERE agent_id = ? ORDER BY rowid",
                (NORTH_AGENT,),
            ).fetchall()
        except sqlite3.OperationalError:
            return []
        finally:
            conn.close()
        return [(camera, serial_of(frame_id)) for camera, frame_id in rows]

    def outbox_state(self) -> tuple[int, int]:
        """(rows in the agent's outbox, rows of them the site broker has not acknowledged)."""
        if not self.outbox.exists():
            return 0, 0
        conn = sqlite3.connect(f"file:{self.outbox}?mode=ro", uri=True)
        try:
            total, unsent = conn.execute(
                "SELECT COUNT(*), COUNT(*) - COUNT(sent_at) FROM outbox"
            ).fetchone()
        except sqlite3.OperationalError:
            return 0, 0
        finally:
            conn.close()
        return int(total), int(unsent)

    def start(self) -> None:
        self.central.start()
        self.north.start()
        self.aggregator.start()
        # The central broker must have saved secagg's session (its subscriptions) before a test
        # kills it: one that restarts without it drops what the bridge forwards before secagg
        # subscribes again (the agents then send it again; the tests want the bridge's queue).
        subscribed = time.time()
        saved = self.central.workdir / "mosquitto.db"
        wait_for(
            lambda: saved.exists() and saved.stat().st_mtime > subscribed,
            what="the central broker's autosave with secagg's session",
        )

    def stop(self) -> None:
        self.aggregator.stop()
        self.north.stop()
        self.central.stop()


def assert_exactly(
    stored: list[tuple[str, int]], expected: range, *, in_order: bool = True
) -> None:
    """Each expected serial stored once, nothing else; in order per camera unless told."""
    serials = [s for _, s in stored]
    assert len(serials) == len(set(serials)), "a serial was stored twice"
    assert sorted(serials) == list(expected)
    if not in_order:
        return
    per_camera: dict[str, list[int]] = defaultdict(list)
    for camera, serial in stored:
        per_camera[camera].append(serial)
    for camera, seq in per_camera.items():
        assert seq == sorted(seq), f"camera {camera}: stored out of order"


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    r.start()
    try:
        yield r
    finally:
        r.stop()


def test_threats_flow_through_the_bridge_and_receipts_come_back(rig: Rig) -> None:
    n = 300
    started = time.monotonic()
    summary = finish(start_test_threats(rig.agent_conf, count=n, cameras=3))
    print(f"through the bridge: {n} threats in {time.monotonic() - started:.1f} s")
    assert summary["outbox_depth"] == 0 and summary["dropped"] == 0  # every receipt came back
    wait_for(lambda: len(rig.stored()) >= n, what="all stored")
    assert_exactly(rig.stored(), range(n))
    # The agent's retained status crossed the bridge too.
    wait_for(lambda: rig.aggregator.agent(NORTH_AGENT), what="the agent known centrally")


def publish_and_exit(rig: Rig, *, count: int, start: int) -> None:
    """The agent commits ``count`` threats and publishes them to the site broker, waits a few
    seconds for receipts that cannot come (the central broker is down) and exits with them in
    its outbox; its summary says the site broker acknowledged every one."""
    done = subprocess.run(
        [
            str(BIN / "secagent"),
            "send-test-threats",
            "--config",
            str(rig.agent_conf),
            "--count",
            str(count),
            "--start",
            str(start),
            "--cameras",
            "3",
            "--drain-timeout",
            "3",
            "--log-level",
            "error",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=rig.agent_conf.parent,
    )
    assert done.returncode == 3, done.stderr[-3000:]  # 3: the outbox did not drain
    summary = json.loads(done.stdout.strip().splitlines()[-1])["summary"]
    # (acknowledged can exceed count by a few: the counter counts PUBACKs, not messages)
    assert summary["acknowledged"] >= count and summary["receipted"] == 0, summary
    assert summary["outbox_depth"] == count


def wait_stored(rig: Rig, count: int, *, what: str) -> tuple[float, float]:
    """Wait until ``count`` threats are stored; seconds until the first new one and until the
    last."""
    began, before = time.monotonic(), len(rig.stored())
    wait_for(lambda: len(rig.stored()) > before, timeout_s=120, what=f"{what}: the first")
    first_s = time.monotonic() - began
    wait_for(lambda: len(rig.stored()) >= count, timeout_s=120, what=what)
    return first_s, time.monotonic() - began


def test_central_broker_down_then_back_loses_nothing(rig: Rig) -> None:
    """The central broker is SIGKILLed; meanwhile the agent publishes a backlog to its site
    broker and exits, so what reaches the store once the central broker is back comes from the
    bridge's queue, not from the agent sending again. The agent then starts again and sends
    its outbox again: duplicates are ignored, receipts come back through the bridge."""
    first, backlog = 100, 1000
    finish(start_test_threats(rig.agent_conf, count=first, cameras=3))
    wait_for(lambda: len(rig.stored()) >= first, what="the first threats stored")
    rig.central.stop(kill=True)
    publish_and_exit(rig, count=backlog, start=first)
    assert len(rig.stored()) == first
    rig.central.start()
    first_s, all_s = wait_stored(
        rig, first + backlog, what="the backlog delivered from the site broker's queue"
    )
    print(
        f"\nbacklog: {backlog} threats, first stored {first_s:.1f} s and all {all_s:.1f} s "
        "after the central broker was back"
    )
    assert_exactly(rig.stored(), range(first + backlog))
    summary = finish(start_test_threats(rig.agent_conf, count=0, drain_timeout_s=120))
    assert summary["outbox_depth"] == 0  # receipts reached the agent through the bridge
    assert_exactly(rig.stored(), range(first + backlog))  # the sends again stored nothing


def test_central_broker_killed_mid_stream_with_the_agent_running(rig: Rig) -> None:
    """The same outage with the agent streaming through it: while no receipt comes it sends its
    backlog again into the site broker's queue (5 s, then doubling), so the queue carries
    duplicates; the store still gets each serial once and in order per camera."""
    n = 1200
    gen = start_test_threats(rig.agent_conf, count=n, cameras=3, rate_hz=150, drain_timeout_s=300)
    wait_for(lambda: len(rig.stored()) >= 200, timeout_s=60, what="200 stored")
    rig.central.stop(kill=True)
    # down long enough for the agent's receipt timeout (5 s) to send its backlog again
    wait_for(lambda: rig.outbox_state()[0] >= 900, timeout_s=60, what="a backlog of 900")
    rig.central.start()
    back = time.monotonic()
    summary = finish(gen, timeout_s=300)
    assert summary["outbox_depth"] == 0 and summary["dropped"] == 0
    assert summary["published"] > n, summary  # it did send some again: the queue had copies
    wait_for(lambda: len(rig.stored()) >= n, timeout_s=60, what="all stored")
    print(f"\nmid-stream: outbox drained {time.monotonic() - back:.1f} s after central was back")
    assert_exactly(rig.stored(), range(n))


def test_site_broker_killed_while_the_central_link_is_down(rig: Rig) -> None:
    """The site broker keeps the bridge's queue as of its last autosave: SIGKILLed and
    restarted while the central broker is down, it delivers that queue once the central broker
    is back, with no agent running. The agent's outbox covers the rest."""
    n = 300
    rig.central.stop(kill=True)
    publish_and_exit(rig, count=n, start=0)
    acknowledged = time.time()
    saved = rig.north.workdir / "mosquitto.db"
    wait_for(
        lambda: saved.exists() and saved.stat().st_mtime > acknowledged,
        timeout_s=30,
        what="the site broker's autosave after the last acknowledgement",
    )
    rig.north.stop(kill=True)
    rig.north.start()
    rig.central.start()
    _, all_s = wait_stored(rig, n, what="the queue the site broker saved, delivered")
    print(f"\nsite broker killed: {n} threats kept, all stored {all_s:.1f} s after central")
    assert_exactly(rig.stored(), range(n))
    summary = finish(start_test_threats(rig.agent_conf, count=0))
    assert summary["outbox_depth"] == 0
    assert_exactly(rig.stored(), range(n))


class Client:
    """A paho MQTT 5 client over TLS that records CONNACK, PUBACK and SUBACK reason codes."""

    def __init__(self, rig: Rig, username: str, password: str, *, on_site: bool = False) -> None:
        """On the central broker (TLS), or on north's site broker with ``on_site``."""
        self.connack: ReasonCode | None = None
        self.pubacks: dict[int, ReasonCode] = {}
        self.subacks: dict[int, list[ReasonCode]] = {}
        self.messages: list[str] = []
        self.retained: list[str] = []
        self.c = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"t-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self.c.username_pw_set(username, password)
        if not on_site:
            self.c.tls_set(ca_certs=str(rig.cafile))
        self.c.on_connect = lambda c, u, f, rc, p: setattr(self, "connack", rc)
        self.c.on_publish = lambda c, u, mid, rc, p: self.pubacks.__setitem__(mid, rc)
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self.subacks.__setitem__(mid, rcs)
        self.c.on_message = self._on_message
        self.c.reconnect_delay_set(60, 120)
        self.c.connect_async("127.0.0.1", rig.north.port if on_site else rig.central.port)
        self.c.loop_start()
        wait_for(lambda: self.connack is not None, what="CONNACK")

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        self.messages.append(msg.topic)
        if msg.retain:
            self.retained.append(msg.topic)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> ReasonCode:
        info = self.c.publish(topic, payload, qos=1, retain=retain)
        return wait_for(lambda: self.pubacks.get(info.mid), what="PUBACK")

    def subscribe(self, topic: str) -> ReasonCode:
        _, mid = self.c.subscribe(topic, qos=1)
        assert mid is not None
        return wait_for(lambda: self.subacks.get(mid), what="SUBACK")[0]

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def test_a_site_bridge_account_cannot_touch_another_sites_topics(rig: Rig) -> None:
    """The attacker holds site south's bridge password (from south's mosquitto.conf) and logs
    in to the central broker with it: it may act for south's agents only."""
    attacker = Client(rig, "bridge-south", rig.creds["bridge-south"])
    try:
        assert attacker.connack is not None and not attacker.connack.is_failure
        for kind in ("threats", "status", "ota/report", "logs"):
            refused = attacker.publish(f"secagent/v1/{NORTH_AGENT}/{kind}", b"{}")
            assert refused.is_failure and "authori" in str(refused).lower(), kind
        # Mosquitto grants any subscription and checks the ACL on delivery: nothing of north's
        # reaches it while north's threats go through and are receipted.
        for topic in (f"secagent/v1/{NORTH_AGENT}/#", "secagent/v1/+/threats", "#"):
            attacker.subscribe(topic)
        summary = finish(start_test_threats(rig.agent_conf, count=20, cameras=1))
        assert summary["outbox_depth"] == 0
        assert attacker.messages == []
        for topic in ("secagent/v1/events", f"secagent/v1/{NORTH_AGENT}/receipts"):
            assert attacker.publish(topic, b"{}").is_failure, topic
        # its own site's topics are open to it (the control)
        assert not attacker.publish(f"secagent/v1/{SOUTH_AGENT}/status", b"{}").is_failure
    finally:
        attacker.close()
    # A site's agent has no account on the central broker at all.
    agent = Client(rig, NORTH_AGENT, rig.north_creds[NORTH_AGENT])
    try:
        assert agent.connack is not None and agent.connack.is_failure
    finally:
        agent.close()
    assert_exactly(rig.stored(), range(20))


def test_retained_messages_keep_their_flag_across_the_bridge(rig: Rig) -> None:
    """The desired state (ota, retained) published centrally is retained on the site broker for
    an agent that connects later; the agent's status (retained) is retained centrally for a
    reader that subscribes later."""
    secagg = Client(rig, "secagg", rig.creds["secagg"])
    try:
        topic = f"secagent/v1/{NORTH_AGENT}/ota"
        assert not secagg.publish(topic, b'{"desired": 1}', retain=True).is_failure
    finally:
        secagg.close()
    finish(start_test_threats(rig.agent_conf, count=1, cameras=1))  # its status is retained

    def later(username: str, password: str, topic: str, *, on_site: bool) -> None:
        client = Client(rig, username, password, on_site=on_site)
        try:
            client.subscribe(topic)
            wait_for(lambda: client.retained, what=f"the retained {topic}")
        finally:
            client.close()

    later(NORTH_AGENT, rig.north_creds[NORTH_AGENT], f"secagent/v1/{NORTH_AGENT}/ota", on_site=True)
    later("soc", rig.creds["soc"], "secagent/v1/+/status", on_site=False)


def test_a_backlog_beyond_the_queue_limit_is_sent_again_by_the_agent(tmp_path: Path) -> None:
    """The site broker queues at most ``max_queued_messages`` for the central link and drops
    the newest beyond it, having acknowledged them: the agent, which has no receipt for them,
    sends them again once the link is back. Nothing is lost, nothing stored twice, but the
    order per camera is not kept: what the agent sends again meets a queue still full and
    part of it is dropped again, to come back at its next round."""
    rig = Rig(tmp_path, max_queued_messages=1000)
    rig.start()
    try:
        n = 1500
        rig.central.stop(kill=True)
        publish_and_exit(rig, count=n, start=0)
        rig.central.start()
        wait_for(rig.stored, timeout_s=120, what="the queue being delivered")
        summary = finish(start_test_threats(rig.agent_conf, count=0, drain_timeout_s=120))
        assert summary["outbox_depth"] == 0
        assert_exactly(rig.stored(), range(n), in_order=False)
    finally:
        rig.stop()
