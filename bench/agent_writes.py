"""What the agent writes to its disk per threat (flash wear at the edge), side by side with what
it sends, in one run: the current agent and, with ``--baseline REV``, the agent of an earlier
commit on the same footage.

Each agent is a real ``secagent run --exit-when-done`` process with two cameras, as in the
soak that found the problem: ``yard``, the sample clip at 2 fps, and ``door``, a folder of
stills (people in some, an empty scene in the others, each still distinct). A real
``secagg serve`` stores the threats and sends the receipts. Measured:

- written: the agent process's ``write_bytes`` (``/proc/<pid>/io``; what it sent towards the
  disk, its outbox and the record of processed files; from ``wait4``'s ``ru_oublock``);
- sent: the bytes of the threat payloads the broker delivered (a subscriber counts them);
- secagg: the aggregator's ``write_bytes`` over the run, per threat stored.

Then "where the bytes go": one outbox operation at a time in a process of its own (a 250 KB
payload put, the broker's acknowledgement, the receipt, a still without threats recorded).

    python bench/agent_writes.py [--stills 40] [--baseline 1fb4329]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from io import BytesIO
from pathlib import Path
from typing import Any

import cv2
import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from demo.broker import Mosquitto, free_port  # noqa: E402
from demo.footage import sample_clip, scene  # noqa: E402

AGENT_MAIN = "import sys; from agent.cli import main; sys.exit(main())"


class Counter:
    """Counts the threat payloads the broker delivers (first delivery of each message id)."""

    def __init__(self, broker: Mosquitto) -> None:
        self.bytes = 0
        self.messages = 0
        self.lock = threading.Lock()
        self.ready = threading.Event()
        c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        c.on_connect = lambda cl, u, f, rc, p: cl.subscribe("secagent/v1/+/threats", qos=1)
        c.on_subscribe = lambda cl, u, mid, rcs, p: self.ready.set()
        c.on_message = self._on_message
        c.connect(broker.host, broker.port)
        c.loop_start()
        self.client = c
        self.ready.wait(10)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.bytes += len(msg.payload)
            self.messages += 1

    def take(self) -> tuple[int, int]:
        with self.lock:
            found, self.bytes, self.messages = (self.bytes, self.messages), 0, 0
        return found

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def write_stills(folder: Path, count: int) -> None:
    """``count`` distinct stills: a person in every other one."""
    folder.mkdir(parents=True)
    for i in range(count):
        frame = scene(200 + 13 * i if i % 2 == 0 else None, noise_index=i % 8)
        ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        (folder / f"{i:04d}.jpg").write_bytes(jpeg.tobytes())


def io_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


HEADERS: dict[str, str] = {}
"""A viewer token of the bench's store: the API asks for a credential."""


def bench_token(db: Path) -> str:
    from aggregator import store
    from aggregator.auth import accounts
    from aggregator.auth.roles import Role

    store.migrate(db)
    conn = store.connect(db)
    try:
        with store.transaction(conn):
            return accounts.create_token(conn, name="bench", role=Role.viewer).token
    finally:
        conn.close()


def stored(api: str) -> int:
    health = httpx.get(f"{api}/api/health", headers=HEADERS, timeout=5)
    return int(health.json()["threats"])


def run_agent(
    work: Path, *, code: Path | None, broker: Mosquitto, clip: Path, stills: int, name: str
) -> dict[str, Any]:
    """One agent run; its write_bytes and summary."""
    run_dir = work / name
    door = run_dir / "door"
    write_stills(door, stills)
    config = run_dir / "secagent.yaml"
    config.write_text(
        f"agent_id: {name}\n"
        f"mqtt: {{host: {broker.host}, port: {broker.port}, status_interval_s: 5}}\n"
        f"detect: {{model: {ROOT / 'models/fall-detection-yolov8.yaml'}, "
        "providers: [CPUExecutionProvider]}\n"
        f"rules: {ROOT / 'rules/default.yaml'}\n"
        "outbox: {path: outbox.sqlite}\n"
        "cameras:\n"
        f"  - name: yard\n    source: {{type: video, path: {clip}, fps: 2}}\n"
        f"  - name: door\n    source: {{type: directory, path: {door}, watch: false}}\n"
    )
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = str(code)
    proc = subprocess.Popen(
        [sys.executable, "-c", AGENT_MAIN, "run", "--config", str(config), "--exit-when-done"],
        cwd=run_dir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=(run_dir / "secagent.log").open("wb"),
    )
    _, status, usage = os.wait4(proc.pid, 0)
    out = proc.stdout.read().decode() if proc.stdout else ""
    if status != 0:
        raise SystemExit(
            f"{name} failed ({status}): {(run_dir / 'secagent.log').read_text()[-2000:]}"
        )
    summary = json.loads(out.strip().splitlines()[-1])["summary"]
    return {"written": usage.ru_oublock * 512, "summary": summary}


BREAKDOWN = """
import json, os, sys, tempfile
from pathlib import Path
from agent.outbox import Outbox
from agent.ledger import FileMark, SqliteLedger

def written():
    os.sync()
    for line in open("/proc/self/io"):
        if line.startswith("write_bytes"):
            return int(line.split()[1])

payload = os.urandom(250 * 1024)
n = 40
found = {}
with tempfile.TemporaryDirectory(dir=sys.argv[1]) as d:
    box = Outbox(Path(d) / "outbox.sqlite", max_bytes=1 << 30)
    ledger = SqliteLedger(box)
    def measure(label, step):
        before = written()
        step()
        found[label] = found.get(label, 0) + written() - before
    for i in range(n):
        mid = f"{i:032x}"
        mark = FileMark("door", f"{i}.jpg", 1, i)
        measure("put (commit before publishing)", lambda: box.put(
            message_id=mid, topic="t", payload=payload))
        seq = box.pending()[-1].seq
        measure("broker's PUBACK (mark sent)", lambda: box.mark_sent(seq))
        measure("still without threats recorded", lambda: ledger.record([mark]))
        measure("aggregator's receipt (delete)", lambda: box.confirm([mid]))
    box.close()
print(json.dumps({k: v / n for k, v in found.items()}))
"""


def breakdown(work: Path, code: Path | None) -> dict[str, float]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(code or ROOT)
    done = subprocess.run(
        [sys.executable, "-c", BREAKDOWN, str(work)],
        env=env,
        cwd=work,
        capture_output=True,
        text=True,
        check=True,
    )
    found: dict[str, float] = json.loads(done.stdout)
    return found


def extract(rev: str, into: Path) -> Path:
    """The code of commit ``rev`` under ``into`` (``git archive``)."""
    tar = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=BytesIO(tar)) as archive:
        archive.extractall(into, filter="data")
    return into


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stills", type=int, default=40, help="stills in the door's folder")
    parser.add_argument("--baseline", help="also run the agent of this commit (before)")
    parser.add_argument(
        "--dir", type=Path, default=ROOT / "var" / "bench", help="on the disk to measure"
    )
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    clip = sample_clip(ROOT / "var/cache")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        work = Path(tmp)
        codes: list[tuple[str, Path | None]] = [("now", None)]
        if args.baseline:
            codes.insert(0, (f"at {args.baseline}", extract(args.baseline, work / "baseline")))
        with Mosquitto(work / "broker") as broker:
            api_port = free_port()
            agg = work / "secagg.yaml"
            agg.write_text(
                f"mqtt: {{host: {broker.host}, port: {broker.port}, client_id: bench}}\n"
                "store: {path: secagg.sqlite, snapshots_dir: snapshots}\n"
                f"api: {{host: 127.0.0.1, port: {api_port}}}\n"
            )
            api = f"http://127.0.0.1:{api_port}"
            HEADERS["Authorization"] = f"Bearer {bench_token(work / 'secagg.sqlite')}"
            secagg = subprocess.Popen(
                [str(Path(sys.executable).parent / "secagg"), "serve", "--config", str(agg)],
                cwd=work,
                stdout=subprocess.DEVNULL,
                stderr=(work / "secagg.log").open("wb"),
            )
            counter = Counter(broker)
            try:
                deadline = time.monotonic() + 60
                while True:
                    try:
                        health = httpx.get(f"{api}/api/health", headers=HEADERS, timeout=1)
                        if health.status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    if time.monotonic() > deadline:
                        raise SystemExit("secagg did not start")
                    time.sleep(0.2)  # polling for readiness, not synchronising anything
                rows: list[tuple[str, dict[str, Any], int, int, int, int]] = []
                for label, code in codes:
                    agg_before, threats_before = io_of(secagg.pid), stored(api)
                    run = run_agent(
                        work,
                        code=code,
                        broker=broker,
                        clip=clip,
                        stills=args.stills,
                        name=f"bench-{len(rows)}",
                    )
                    sent, messages = counter.take()
                    threats = stored(api) - threats_before
                    rows.append(
                        (label, run, sent, messages, io_of(secagg.pid) - agg_before, threats)
                    )
            finally:
                counter.close()
                secagg.terminate()
                secagg.wait(30)
        print(
            f"{'agent':>14s} {'threats':>8s} {'sent/threat':>12s} {'written/threat':>15s} "
            f"{'written/sent':>13s} {'secagg written/threat':>22s}"
        )
        for label, run, sent, messages, agg_written, threats in rows:
            n = max(1, messages)
            print(
                f"{label:>14s} {messages:8d} {sent / n / 1024:9.1f} KiB "
                f"{run['written'] / n / 1024:11.1f} KiB {run['written'] / max(1, sent):12.2f}x "
                f"{agg_written / max(1, threats) / 1024:18.1f} KiB"
            )
        print("where the bytes go (one outbox operation at a time, 250 KiB payload):")
        parts = {label: breakdown(work, code) for label, code in codes}
        for op in next(iter(parts.values())):
            cells = "  ".join(
                f"{label}: {parts[label].get(op, 0) / 1024:7.1f} KiB" for label, _ in codes
            )
            print(f"  {op:34s} {cells}")
        totals = "  ".join(
            f"{label}: {sum(parts[label].values()) / (250 * 1024):.2f}x" for label, _ in codes
        )
        print(f"  {'all of them, per payload byte':34s} {totals}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
