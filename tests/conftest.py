"""Shared fixtures: a private Mosquitto per test session, the sample model, the sample clip."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from demo.broker import Mosquitto
from demo.footage import sample_clip

ROOT = Path(__file__).resolve().parent.parent
MODEL_MANIFEST = ROOT / "models" / "fall-detection-yolov8.yaml"
DEFAULT_RULES = ROOT / "rules" / "default.yaml"
T = TypeVar("T")


def wait_for(check: Callable[[], T], *, timeout_s: float = 30.0, what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)  # poll interval of a deadline wait, not a synchronisation


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
