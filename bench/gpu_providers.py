"""Execution providers side by side: ms per inference of the sample model on CPU, CUDA and
``auto`` (TensorRT -> CUDA -> CPU), through secagent's Detector and through ONNX Runtime alone.

Run on any host: providers that are not installed are reported as such. On a GPU host install
the ``gpu`` extra (``onnxruntime-gpu``) instead of ``cpu`` first (``make setup ORT=gpu``; see
README, "GPU hosts").

    python bench/gpu_providers.py [--model-file PATH] [--runs 100]

The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from demo.footage import sample_still  # noqa: E402
from modelrt import Detector, DetectorError, load_manifest  # noqa: E402
from modelrt.manifest import ModelFile  # noqa: E402

CONFIGS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "auto": ["auto"],
}


def timed_ms(fn, runs: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return {
        "mean": round(statistics.fmean(samples), 3),
        "p50": round(samples[len(samples) // 2], 3),
        "p95": round(samples[int(len(samples) * 0.95) - 1], 3),
    }


def iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / area) if area > 0 else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-file", type=Path, help="the ONNX file, if not installed")
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()
    manifest = load_manifest(ROOT / "models/fall-detection-yolov8.yaml")
    if args.model_file:
        manifest = manifest.model_copy(update={"file": ModelFile(path=args.model_file.resolve())})
    if hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()  # CUDA/cuDNN from the nvidia-* wheels, when present
        except Exception as exc:
            print(f"preload_dlls: {exc}")
    image = sample_still("person")
    report: dict[str, object] = {
        "onnxruntime": ort.__version__,
        "available": ort.get_available_providers(),
        "device": ort.get_device(),
        "cpu": platform.processor() or platform.machine(),
        "image": f"{image.shape[1]}x{image.shape[0]}",
        "runs": args.runs,
        "results": {},
    }
    print(json.dumps({k: v for k, v in report.items() if k != "results"}))
    reference = None
    results: dict[str, object] = {}
    for name, providers in CONFIGS.items():
        start = time.perf_counter()
        try:
            det = Detector(manifest, providers=providers)
        except DetectorError as exc:
            results[name] = {"error": str(exc)[:300]}
            print(name, "->", results[name])
            continue
        load_s = time.perf_counter() - start
        tensor, _ = det.preprocess(image)
        for _ in range(10):
            det.infer(tensor)
        feed = {det.input_name: tensor}
        session_alone = timed_ms(partial(det.session.run, None, feed), args.runs)
        through_agent = timed_ms(partial(det.detect, image), args.runs)
        found = det.detect(image)
        best = int(np.argmax(found.score)) if len(found) else -1
        entry: dict[str, object] = {
            "requested": providers,
            "in_use": det.provider,
            "session_providers": det.session.get_providers(),
            "load_and_warmup_s": round(load_s, 2),
            "ort_alone_ms": session_alone,
            "detect_ms": through_agent,
            "detections": len(found),
            "top": None
            if best < 0
            else {"label": found.labels[best], "score": round(float(found.score[best]), 4)},
        }
        if best >= 0:
            if reference is None:
                reference = (found.xyxy[best], float(found.score[best]))
            else:
                entry["vs_cpu"] = {
                    "iou": round(iou(reference[0], found.xyxy[best]), 4),
                    "score_delta": round(abs(reference[1] - float(found.score[best])), 4),
                }
        results[name] = entry
        print(name, "->", json.dumps(entry))
    report["results"] = results
    cpu, cuda = results.get("cpu"), results.get("cuda")
    if (
        isinstance(cpu, dict)
        and isinstance(cuda, dict)
        and "ort_alone_ms" in cuda
        and cuda.get("in_use") == "CUDAExecutionProvider"
    ):
        report["cuda_speedup_vs_cpu"] = round(
            cpu["ort_alone_ms"]["mean"] / cuda["ort_alone_ms"]["mean"], 2
        )
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
