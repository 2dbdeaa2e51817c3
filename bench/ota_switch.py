"""What an over-the-air model update costs the live pipeline, measured side by side in one run
with the sample model on the real detection engine.

1. Frames delayed by a switch. Frames of the sample scene (1280x720 JPEG) are admitted at a
   steady pace (``--fps``), as a camera thread admits them, into the engine's queue; the
   detection worker and the results thread run as in ``secagent run``. First a stretch with no
   update; then, every ``--every-s``, a "manager" thread does what the agent's update loop
   does: it loads a new ONNX Runtime session of the model, tries it on 5 recent frames, and
   switches the engine to it between two batches. A frame's latency is admission -> results.
   A frame counts as delayed when its latency exceeds the worst latency of the stretch without
   updates by more than one frame interval (target: none). Switches alone (two sessions loaded
   beforehand) and whole updates (load, try, switch) are measured in stretches of their own.
2. Shadow overhead. ``--frames`` stills go through the engine as fast as it takes them, once
   with the active model alone, then with a candidate (a second session of the model) in
   shadow mode on a fraction f of the frames (nothing skipped: the shadow queue holds every
   sampled frame, and the run ends when the shadow is through too). Time per frame with shadow
   vs (1 + f) x the time per frame of the active model alone.

    python bench/ota_switch.py [--fps 4] [--seconds 12] [--every-s 3] [--frames 40]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import cv2
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.capture import Frame  # noqa: E402
from agent.config import CameraConfig, ValidateConfig  # noqa: E402
from agent.engine import Admitted, Camera, DetectionEngine  # noqa: E402
from agent.ota.shadow import ShadowRunner  # noqa: E402
from demo.footage import WIDTH, scene  # noqa: E402
from modelrt import Detections, Detector, load_manifest  # noqa: E402
from modelrt.rules import load_rules  # noqa: E402

MANIFEST = ROOT / "models/fall-detection-yolov8.yaml"


def detector() -> Detector:
    return Detector(load_manifest(MANIFEST), providers=["CPUExecutionProvider"])


def jpegs(count: int) -> list[bytes]:
    span = WIDTH - 300
    out = []
    for i in range(count):
        step = (i * 37) % (2 * span)
        x = step if step < span else 2 * span - step
        ok, buf = cv2.imencode(".jpg", scene(x, noise_index=i % 8), [cv2.IMWRITE_JPEG_QUALITY, 80])
        assert ok
        out.append(buf.tobytes())
    return out


def camera(folder: Path) -> Camera:
    return Camera(
        CameraConfig.model_validate(
            {
                "name": "bench",
                "source": {"type": "directory", "path": str(folder), "watch": False},
                "motion": {"enabled": False},
            }
        )
    )


# 1. switches ---------------------------------------------------------------------------------
def switch_run(args: argparse.Namespace, frames: list[bytes]) -> dict[str, object]:
    """Three stretches of ``--seconds`` at ``--fps``: no update; switches alone (between two
    sessions loaded beforehand); full updates (load, try, switch)."""
    latencies: dict[int, float] = {}
    admitted_at: dict[str, tuple[int, float]] = {}
    lock = threading.Lock()

    def on_detections(admitted: Admitted, detections: Detections) -> None:
        done = time.perf_counter()
        with lock:
            index, started = admitted_at[admitted.frame.frame_id]
            latencies[index] = done - started

    interval = 1.0 / args.fps
    per_phase = int(args.seconds * args.fps)
    total = 3 * per_phase
    switches = {"switch": 0, "update": 0}
    spare = [detector(), detector()]
    with tempfile.TemporaryDirectory() as tmp:
        cam = camera(Path(tmp))
        stop = threading.Event()
        engine = DetectionEngine(
            detector(),
            [cam],
            validate=ValidateConfig(),
            on_detections=on_detections,
            stop=stop,
        )
        engine.start()  # the camera's folder is empty: the pacer below admits its frames

        def manager() -> None:
            while not stop.wait(args.every_s):
                with lock:
                    phase = len(admitted_at) // per_phase
                if phase == 1:  # a switch alone: the new session is loaded and warm
                    new = spare[switches["switch"] % 2]
                    engine.switch(new, None)
                    switches["switch"] += 1
                elif phase == 2:  # a whole update, as the agent's update loop does it:
                    # each step that takes the CPU waits for an idle moment of the worker
                    engine.wait_quiet(2.0)
                    new = detector()
                    for image in list(engine.recent)[-5:]:
                        engine.wait_quiet(2.0)
                        new.detect(image)
                    engine.switch(new, None)
                    switches["update"] += 1

        threading.Thread(target=manager, daemon=True).start()
        start = time.perf_counter()
        for i in range(total):
            time.sleep(max(0.0, start + i * interval - time.perf_counter()))  # a camera's pace
            frame = Frame(
                camera="bench",
                kind="file",
                source=f"{i}.jpg",
                captured_at=datetime.now(UTC),
                data=frames[i % len(frames)],
            )
            with lock:
                admitted_at[frame.frame_id] = (i, time.perf_counter())
            item = engine.admit(cam, frame)
            assert item is not None
            engine.queues.put(item, stop=stop)
        deadline = time.perf_counter() + 30
        while len(latencies) < total and time.perf_counter() < deadline:
            time.sleep(0.05)
        stop.set()
        engine.join()

    def phase(n: int) -> list[float]:
        return [latencies[i] for i in range(n * per_phase, (n + 1) * per_phase) if i in latencies]

    base = phase(0)[2:]  # the first frames warm the pipeline up
    worst = max(base)
    out: dict[str, object] = {
        "frames": total,
        "received": len(latencies),
        "interval_ms": 1000 * interval,
        "base": (1000 * statistics.median(base), 1000 * worst),
    }
    for n, name in ((1, "switch"), (2, "update")):
        lat = phase(n)
        out[name] = {
            "count": switches[name],
            "median_ms": 1000 * statistics.median(lat),
            "worst_ms": 1000 * max(lat),
            "delayed": sum(1 for x in lat if x > worst + interval),
        }
    return out


# 2. shadow overhead --------------------------------------------------------------------------
def shadow_run(paths_dir: Path, count: int, fraction: float | None) -> tuple[float, int]:
    """Seconds per frame through the engine (and the shadow, when on); frames shadowed."""
    rules = load_rules(ROOT / "rules/default.yaml")
    active = detector()
    runner: ShadowRunner | None = None
    if fraction is not None:
        shim = SimpleNamespace(rules=rules, detector=active, agent_id="bench")
        runner = ShadowRunner(
            shim,  # type: ignore[arg-type]
            detector(),
            release_id=1,
            fraction=fraction,
            ids={},
            seed=1,
            queue_size=count,
        )
        runner.start()

    def on_detections(admitted: Admitted, detections: Detections) -> None:
        rules.apply(admitted.camera.name, detections)
        if runner is not None:
            runner.offer(admitted, detections)

    stop = threading.Event()
    cam = camera(paths_dir)
    engine = DetectionEngine(
        active,
        [cam],
        validate=ValidateConfig(),
        on_detections=on_detections,
        stop=stop,
    )
    start = time.perf_counter()
    engine.start()
    if not engine.wait_idle(600):
        raise SystemExit("the engine did not finish")
    while runner is not None and not runner.drained():
        time.sleep(0.005)
    elapsed = time.perf_counter() - start
    stop.set()
    engine.join()
    shadowed = 0
    if runner is not None:
        shadowed = runner.frames
        runner.stop()
    return elapsed / count, shadowed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fps", type=float, default=4.0)
    parser.add_argument("--seconds", type=float, default=12.0, help="each phase")
    parser.add_argument("--every-s", type=float, default=3.0)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(
        f"machine: {os.cpu_count()} cores {platform.machine()}, onnxruntime {ort.__version__}, "
        "CPU; model: sample YOLOv8 640x640; frames: 1280x720 JPEG"
    )
    frames = jpegs(40)
    s = switch_run(args, frames)
    base = s["base"]
    print(
        f"pace {args.fps:g} fps (interval {s['interval_ms']:.0f} ms), {s['received']}/"
        f"{s['frames']} frames through; latency with no update: median {base[0]:.0f} ms, "  # type: ignore[index]
        f"worst {base[1]:.0f} ms"  # type: ignore[index]
    )
    for name, what in (("switch", "switches alone"), ("update", "whole updates")):
        r = s[name]
        print(
            f"{what}: {r['count']}, latency median {r['median_ms']:.0f} ms, worst "  # type: ignore[index]
            f"{r['worst_ms']:.0f} ms; frames delayed beyond one interval: {r['delayed']} "  # type: ignore[index]
            "(target 0)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for i, data in enumerate(jpegs(args.frames)):
            (folder / f"{i:04d}.jpg").write_bytes(data)
        for fraction in (0.25, 0.5, 1.0):
            alone_runs, shadow_runs, shadowed = [], [], 0
            for _ in range(args.rounds):
                alone_runs.append(shadow_run(folder, args.frames, None)[0])
                per_frame, shadowed = shadow_run(folder, args.frames, fraction)
                shadow_runs.append(per_frame)
            alone, with_shadow = min(alone_runs), min(shadow_runs)
            f_eff = shadowed / args.frames
            print(
                f"shadow f={fraction:g}: {1000 * with_shadow:.1f} ms/frame with shadow "
                f"({shadowed}/{args.frames} frames shadowed), active alone "
                f"{1000 * alone:.1f} ms/frame; ratio {with_shadow / alone:.3f} vs 1 + f = "
                f"{1 + f_eff:.3f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
