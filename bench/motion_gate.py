"""The motion gate's cost per 1280x720 frame, as a fraction of decoding that frame from JPEG.

Frames of the sample scene with a person walking (so the gate finds contours, its costly path),
JPEG quality 80. For each frame, in turn: decode it (``cv2.imdecode``), then gate it; the
medians of each over all frames and ``--rounds`` passes are compared.

    python bench/motion_gate.py [--frames 50] [--rounds 5]

The last line: gate ms, decode ms and their ratio (target: < 0.10).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.config import MotionConfig  # noqa: E402
from agent.motion import MotionGate  # noqa: E402
from demo.footage import scene  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    jpegs = []
    for i in range(args.frames):
        ok, buf = cv2.imencode(
            ".jpg", scene(40 + 20 * i, noise_index=i % 8), [cv2.IMWRITE_JPEG_QUALITY, 80]
        )
        assert ok
        jpegs.append(np.frombuffer(buf.tobytes(), np.uint8))
    print(
        f"machine: {os.cpu_count()} cores {platform.machine()}, OpenCV {cv2.__version__} "
        f"({cv2.getNumThreads()} threads); frames: {args.frames} x 1280x720 JPEG q80"
    )
    decode_ms: list[float] = []
    gate_ms: list[float] = []
    moved = 0
    for _ in range(args.rounds):
        gate = MotionGate(MotionConfig())
        for data in jpegs:
            start = time.perf_counter()
            image = cv2.imdecode(data, cv2.IMREAD_COLOR)
            decoded = time.perf_counter()
            assert image is not None
            result = gate.check(image)
            done = time.perf_counter()
            decode_ms.append((decoded - start) * 1000)
            gate_ms.append((done - decoded) * 1000)
            moved += result.moved
    decode, gated = statistics.median(decode_ms), statistics.median(gate_ms)
    print(f"frames with motion: {moved} of {len(gate_ms)}")
    print(
        f"motion gate {gated:.3f} ms, JPEG decode {decode:.3f} ms per 720p frame (medians), "
        f"ratio {gated / decode:.3f} (target < 0.10)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
