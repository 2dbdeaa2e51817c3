"""Frames per second through the whole agent pipeline vs ONNX Runtime alone, side by side.

The agent: JPEG stills of a person walking across the sample scene (every frame has motion) are
read by a camera thread (read, validate, decode, motion gate, letterbox), inferred by the
detection worker and decoded, then the threat rules run, as in ``secagent run``. The outbox and
MQTT are left out: they are I/O, measured by the aggregator's benchmarks.

ONNX Runtime alone: the same session (same model, same threads) on the same frames, already
preprocessed, back to back. Each is run ``--rounds`` times, alternating; the best of each
counts (the machine's noise only ever slows a run down).

    python bench/agent_throughput.py [--frames 40] [--rounds 6] [--threads 0]

The last line: agent fps, ORT-alone fps and their ratio (target: >= 0.95).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.config import CameraConfig, ValidateConfig  # noqa: E402
from agent.engine import Admitted, Camera, DetectionEngine  # noqa: E402
from demo.footage import WIDTH, scene  # noqa: E402
from modelrt import Detections, Detector, load_manifest  # noqa: E402
from modelrt.rules import load_rules  # noqa: E402


def write_stills(folder: Path, frames: int) -> list[Path]:
    """A person walking left to right and back: every frame differs from the one before."""
    paths = []
    span = WIDTH - 300
    for i in range(frames):
        step = (i * 37) % (2 * span)
        x = step if step < span else 2 * span - step
        path = folder / f"{i:04d}.jpg"
        ok = cv2.imwrite(str(path), scene(x, noise_index=i % 8), [cv2.IMWRITE_JPEG_QUALITY, 80])
        assert ok
        paths.append(path)
    return paths


def read_image(path: Path) -> np.ndarray:
    image = cv2.imread(str(path))
    if image is None:
        raise SystemExit(f"cannot read {path}")
    return image


def ort_alone_fps(detector: Detector, paths: list[Path]) -> float:
    tensors = [detector.preprocess(read_image(p))[0] for p in paths]
    run, name = detector.session.run, detector.input_name
    run(None, {name: tensors[0]})
    start = time.perf_counter()
    for tensor in tensors:
        run(None, {name: tensor})
    return len(tensors) / (time.perf_counter() - start)


def agent_fps(detector: Detector, folder: Path, frames: int) -> tuple[float, dict[str, int]]:
    rules = load_rules(ROOT / "rules/default.yaml")
    threats = 0

    def on_detections(admitted: Admitted, detections: Detections) -> None:
        nonlocal threats
        threats += len(rules.apply(admitted.camera.name, detections))

    camera = Camera(
        CameraConfig.model_validate(
            {"name": "bench", "source": {"type": "directory", "path": str(folder), "watch": False}}
        )
    )
    stop = threading.Event()
    engine = DetectionEngine(
        detector,
        [camera],
        validate=ValidateConfig(),
        on_detections=on_detections,
        stop=stop,
    )
    start = time.perf_counter()
    engine.start()
    if not engine.wait_idle(600):
        raise SystemExit("the agent did not finish")
    elapsed = time.perf_counter() - start
    stop.set()
    engine.join()
    counts = camera.counters.as_dict()
    if counts["detected"] != frames:
        raise SystemExit(f"only {counts['detected']} of {frames} frames reached the model")
    counts["threats"] = threats
    return frames / elapsed, counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0 = ORT's)")
    parser.add_argument(
        "--spin", action="store_true", help="ORT threads spin when idle (the default sleeps)"
    )
    args = parser.parse_args()
    detector = Detector(
        load_manifest(ROOT / "models/fall-detection-yolov8.yaml"),
        providers=["CPUExecutionProvider"],
        intra_op_threads=args.threads,
        spin_wait=args.spin,
    )
    machine = f"{os.cpu_count()} cores {platform.machine()}, onnxruntime {ort.__version__}, CPU"
    print(
        f"machine: {machine}; model: sample YOLOv8 640x640; frames: 1280x720 JPEG; "
        f"intra-op threads {args.threads or 'ORT default'}, spin {args.spin}"
    )
    ort_runs: list[float] = []
    agent_runs: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = write_stills(folder, args.frames)
        for round_ in range(args.rounds):
            ort_runs.append(ort_alone_fps(detector, paths))
            fps, counts = agent_fps(detector, folder, args.frames)
            agent_runs.append(fps)
            print(
                f"round {round_ + 1}: ORT alone {ort_runs[-1]:.2f} fps, agent {fps:.2f} fps "
                f"(counters {json.dumps(counts)})"
            )
    best_ort, best_agent = max(ort_runs), max(agent_runs)
    median_ratio = statistics.median(a / o for a, o in zip(agent_runs, ort_runs, strict=True))
    print(
        f"agent {best_agent:.2f} fps, ONNX Runtime alone {best_ort:.2f} fps (best of "
        f"{args.rounds}), ratio {best_agent / best_ort:.3f} (target >= 0.95; "
        f"median of per-round ratios {median_ratio:.3f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
