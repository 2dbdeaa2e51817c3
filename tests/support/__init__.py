"""What the tests share: paths of the sample model and rules, and waiting on a condition with a
deadline. The modules of this package hold the shared helpers (no test module imports another):

- :mod:`tests.support.processes`: the real ``secagent`` and ``secagg`` processes and their configs
- :mod:`tests.support.ingest`: threat payloads, an in-process ingest and what it stored
- :mod:`tests.support.models`: tiny ONNX models with known outputs
- :mod:`tests.support.servers`: real SMTP and webhook servers
- :mod:`tests.support.rtsp`: a real RTSP server (GStreamer's, run by the system Python)
- :mod:`tests.support.streams`: a small video file, a thread that drains a live source
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
MODEL_MANIFEST = ROOT / "models" / "fall-detection-yolov8.yaml"
DEFAULT_RULES = ROOT / "rules" / "default.yaml"
T = TypeVar("T")


def wait_for(
    check: Callable[[], T | None], *, timeout_s: float = 30.0, what: str = "condition"
) -> T:
    """Poll ``check`` until it returns something truthy (and return it); fail the test after
    ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)  # poll interval of a deadline wait, not a synchronisation
