"""The JPEG structure check (:func:`modelrt.images.jpeg_structure_problem`) that the aggregator
runs on every snapshot it keeps: what it refuses, and that its cost does not grow with the
entropy-coded data it does not need to read."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from demo.footage import sample_still
from modelrt.images import jpeg_structure_problem


def jpeg(width: int, height: int, quality: int = 80) -> bytes:
    still = cv2.resize(sample_still("person"), (width, height))
    ok, encoded = cv2.imencode(".jpg", still, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return bytes(encoded.tobytes())


SMALL = jpeg(640, 360)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(SMALL, None, id="whole"),
        pytest.param(SMALL[: len(SMALL) // 2], "cut short", id="cut-in-the-scan"),
        pytest.param(SMALL[:-2], "cut short", id="no-end-marker"),
        pytest.param(SMALL + b"\x00" * 10, None, id="trailing-bytes-after-the-end"),
        pytest.param(SMALL[:200], "does not fit", id="cut-in-the-headers"),
        pytest.param(b"<html>" + SMALL, "no start-of-image", id="not-a-jpeg"),
    ],
)
def test_structure_problem(data: bytes, expected: str | None) -> None:
    problem = jpeg_structure_problem(data)
    if expected is None:
        assert problem is None
    else:
        assert problem is not None and expected in problem


def _best_s(data: bytes, runs: int = 30) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        jpeg_structure_problem(data)
        best = min(best, time.perf_counter() - start)
    return best


def test_cost_does_not_grow_with_the_scan() -> None:
    """The end-of-image marker is looked for from the end: a 1.5 MB JPEG costs about what a
    70 KB one does (a scan of its entropy-coded bytes from the start cost 25 times more)."""
    rng = np.random.default_rng(0)
    noisy = np.clip(
        cv2.resize(sample_still("person"), (3840, 2160)).astype(np.int16)
        + rng.integers(-20, 20, (2160, 3840, 3), dtype=np.int16),
        0,
        255,
    ).astype(np.uint8)
    ok, encoded = cv2.imencode(".jpg", noisy, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    big = encoded.tobytes()
    assert len(big) > 20 * len(SMALL)
    assert jpeg_structure_problem(big) is None
    assert _best_s(big) < 4 * _best_s(SMALL)
