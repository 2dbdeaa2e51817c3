"""The aggregator's disk per camera-hour under the default snapshot policy, side by side with
``store.snapshots.keep: all``, in one run.

A real ``secagent run --exit-when-done`` plays the sample clip (49 s, a person walks in, stays,
leaves and comes back) at 2 fps to a private Mosquitto. Two real ``secagg serve`` processes, each
with a session of its own, store every threat message: one keeps every snapshot, the other runs
the default policy (the best 3, first and last frame of each event). Once every event has ended
(the agent is silent for longer than the cutoff) and the aggregators stopped, measured for each:
snapshot files and bytes, database bytes, per threat and per camera-hour of the clip looped.

    python bench/snapshot_storage.py [--cameras 1]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aggregator import store  # noqa: E402
from demo.broker import Mosquitto, free_port  # noqa: E402
from demo.footage import sample_clip  # noqa: E402

BIN = Path(sys.executable).parent
CUTOFF_S = 5


def start_secagg(
    work: Path, broker: Mosquitto, *, name: str, snapshots: str
) -> subprocess.Popen[bytes]:
    work.mkdir(parents=True)
    port = free_port()
    config = work / "secagg.yaml"
    config.write_text(
        f"mqtt: {{host: {broker.host}, port: {broker.port}, client_id: {name}}}\n"
        f"store: {{path: secagg.sqlite, snapshots_dir: snapshots, snapshots: {snapshots}}}\n"
        f"events: {{cutoff_s: {CUTOFF_S}, sweep_interval_s: 0.5}}\n"
        f"api: {{host: 127.0.0.1, port: {port}}}\n"
    )
    proc = subprocess.Popen(
        [str(BIN / "secagg"), "serve", "--config", str(config)],
        cwd=work,
        stdout=subprocess.DEVNULL,
        stderr=(work / "secagg.log").open("wb"),
    )
    deadline = time.monotonic() + 60
    log = work / "secagg.log"
    while True:
        if "ready: broker connected" in log.read_text():
            return proc
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{name} did not start: {(work / 'secagg.log').read_text()[-2000:]}")
        time.sleep(0.2)  # polling for readiness, not synchronising anything


def counts(work: Path) -> tuple[int, int, int]:
    """(threats stored, events, events still open)."""
    conn = store.connect(work / "secagg.sqlite", readonly=True)
    try:
        c = store.counters.row_counts(conn)
        return c.threats, c.events, c.open_events
    finally:
        conn.close()


def disk(work: Path) -> tuple[int, int, int]:
    """(snapshot files, snapshot bytes, database bytes)."""
    files = list((work / "snapshots").rglob("*.jpg"))
    db = sum(p.stat().st_size for p in work.glob("secagg.sqlite*"))
    return len(files), sum(p.stat().st_size for p in files), db


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cameras", type=int, default=1, help="cameras of the agent, each playing the clip"
    )
    args = parser.parse_args()
    clip = sample_clip(ROOT / "var/cache")
    camera_s = 49.0 * args.cameras  # seconds of footage, all cameras together
    (ROOT / "var").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=ROOT / "var") as tmp:
        work = Path(tmp)
        with Mosquitto(work / "broker") as broker:
            kinds = {"keep: all": "{keep: all}", "default policy": "{}"}
            dirs = {label: work / f"secagg-{i}" for i, label in enumerate(kinds)}
            procs = {
                label: start_secagg(dirs[label], broker, name=f"bench-{i}", snapshots=snap)
                for i, (label, snap) in enumerate(kinds.items())
            }
            try:
                agent = work / "agent"
                agent.mkdir()
                cameras = "".join(
                    f"  - name: yard{n}\n    source: {{type: video, path: {clip}, fps: 2}}\n"
                    for n in range(args.cameras)
                )
                (agent / "secagent.yaml").write_text(
                    f"agent_id: bench-agent\n"
                    f"mqtt: {{host: {broker.host}, port: {broker.port}, status_interval_s: 2}}\n"
                    f"detect: {{model: {ROOT / 'models/fall-detection-yolov8.yaml'}, "
                    "providers: [CPUExecutionProvider]}\n"
                    f"rules: {ROOT / 'rules/default.yaml'}\n"
                    "outbox: {path: outbox.sqlite}\n"
                    f"cameras:\n{cameras}"
                )
                done = subprocess.run(
                    [str(BIN / "secagent"), "run", "--config", "secagent.yaml", "--exit-when-done"],
                    cwd=agent,
                    capture_output=True,
                    timeout=900,
                )
                if done.returncode != 0:
                    raise SystemExit(f"the agent failed: {done.stderr.decode()[-2000:]}")
                deadline = time.monotonic() + 120
                while True:
                    now = {label: counts(d) for label, d in dirs.items()}
                    same = len({c[0] for c in now.values()}) == 1
                    if same and all(c[1] > 0 and c[2] == 0 for c in now.values()):
                        break
                    if time.monotonic() > deadline:
                        raise SystemExit(f"events did not end: {now}")
                    time.sleep(0.5)  # polling for the events' end, not synchronising anything
            finally:
                for proc in procs.values():
                    proc.terminate()
                    proc.wait(30)
        print(
            f"sample clip 49 s at 2 fps on {args.cameras} camera(s); per camera-hour = the clip "
            f"looped ({3600 / 49:.1f} times)"
        )
        print(
            f"{'':>15s} {'threats':>8s} {'events':>7s} {'snapshots':>10s} {'snapshot KB':>12s} "
            f"{'db KB':>8s} {'KB/threat':>10s} {'MB/camera-hour':>15s}"
        )
        for label, d in dirs.items():
            threats, events, _ = counts(d)
            files, snap_bytes, db_bytes = disk(d)
            total = snap_bytes + db_bytes
            print(
                f"{label:>15s} {threats:8d} {events:7d} {files:10d} {snap_bytes / 1e3:12.1f} "
                f"{db_bytes / 1e3:8.1f} {total / max(1, threats) / 1e3:10.1f} "
                f"{total * 3600 / camera_s / 1e6:15.1f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
