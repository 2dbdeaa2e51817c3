"""Shared fixtures: a private Mosquitto per test session, the sample model, the sample clip."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from aggregator.ingest import Ingest
from demo.broker import Mosquitto
from demo.footage import sample_clip
from tests.support import MODEL_MANIFEST, ROOT, wait_for
from tests.support.ingest import Harness, ingest_config


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """A private Mosquitto on a free loopback port for the whole test session."""
    with Mosquitto(tmp_path_factory.mktemp("mosquitto")) as b:
        yield b


@pytest.fixture(scope="session")
def clip_path() -> Path:
    """The deterministic sample clip (cached under var/cache)."""
    return sample_clip(ROOT / "var" / "cache")


@pytest.fixture(scope="session")
def sample_detector():  # type: ignore[no-untyped-def]
    """The real sample model in a real ONNX Runtime session (loaded once)."""
    from modelrt import Detector, load_manifest

    return Detector(load_manifest(MODEL_MANIFEST), providers=["CPUExecutionProvider"])


@pytest.fixture
def harness(broker: Mosquitto, tmp_path: Path) -> Iterator[Harness]:
    config = ingest_config(broker, tmp_path)
    ingest = Ingest(config)
    ingest.start()
    wait_for(ingest.connected.is_set, what="ingest connected")
    h = Harness(ingest, broker, config.store.path)
    try:
        yield h
    finally:
        h.pub.loop_stop()
        h.pub.disconnect()
        ingest.stop()
