"""Is secagg doing its job? ``/api/health`` answers 503 (with the same body) while the broker is
unreachable or the store writer is stalled or gone, and 200 once it recovers; an unreachable
broker is logged with its host, port, the reason and when the next attempt comes."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from aggregator import store
from aggregator.ingest import Ingest
from demo.broker import Mosquitto, free_port
from tests.support import wait_for
from tests.support.auth import api_client
from tests.support.ingest import Harness, ingest_config, threat_payload

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def started() -> Iterator[list[Ingest]]:
    ingests: list[Ingest] = []
    yield ingests
    for ingest in ingests:
        ingest.stop()


def _unreachable(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]


def test_an_unreachable_broker_is_logged_and_health_is_503_until_it_is_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, started: list[Ingest]
) -> None:
    caplog.set_level(logging.INFO, logger="aggregator.ingest")
    port = free_port()  # nothing listens here yet
    broker = Mosquitto(tmp_path / "late-broker", port=port)
    config = ingest_config(broker, tmp_path)
    ingest = Ingest(config)
    started.append(ingest)
    ingest.start()
    client = api_client(config, liveness=ingest.liveness)
    wait_for(lambda: len(_unreachable(caplog)) >= 2, what="two failed connection attempts logged")
    first, second = _unreachable(caplog)[:2]
    assert re.fullmatch(
        rf"broker 127\.0\.0\.1:{port} unreachable: ConnectionRefusedError: .*; retrying in 1 s",
        first,
    ), first
    assert second.endswith("; retrying in 2 s"), second  # paho doubles its wait
    r = client.get("/api/health")
    assert r.status_code == 503
    assert r.json()["status"] == "degraded" and r.json()["problems"] == ["broker not connected"]
    with broker:
        wait_for(ingest.connected.is_set, what="the ingest connected once the broker is up")
        r = client.get("/api/health")
        assert r.status_code == 200 and r.json()["problems"] == []


def test_a_stalled_store_writer_is_503_and_it_survives_the_stall(
    broker: Mosquitto, tmp_path: Path, started: list[Ingest]
) -> None:
    config = ingest_config(
        broker, tmp_path, ingest={"writer_stall_s": 0.5}, events={"sweep_interval_s": 0.1}
    )
    ingest = Ingest(config)
    started.append(ingest)
    ingest.start()
    wait_for(ingest.connected.is_set, what="ingest connected")
    client = api_client(config, liveness=ingest.liveness)
    assert client.get("/api/health").status_code == 200
    other = store.connect(config.store.path)  # another writer (a plot, say) holds the lock
    try:
        with store.transaction(other):
            stalled = wait_for(
                lambda: (r := client.get("/api/health")).status_code == 503 and r.json(),
                what="health to report the stalled writer",
            )
            assert stalled["writer_alive"] and stalled["writer_stalled"]
            assert stalled["problems"][0].startswith("store writer stalled")
            # The writer's sweep gives up when SQLite's busy timeout passes; the writer goes on.
            wait_for(lambda: ingest.stats.failed_sweeps >= 1, what="the sweep to give up")
    finally:
        other.close()
    assert ingest.liveness().writer_alive
    h = Harness(ingest, broker, config.store.path)
    try:
        h.send(threat_payload())
        wait_for(lambda: ingest.stats.stored == 1, what="a threat stored after the stall")
    finally:
        h.pub.loop_stop()
        h.pub.disconnect()
    assert client.get("/api/health").status_code == 200
