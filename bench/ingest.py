"""Aggregator ingest vs a bare paho subscriber, side by side in one run, zero lost: the rate,
the CPU each spends on a message, and the database each stored threat costs.

Both consumers run in processes of their own and hold a persistent MQTT session on the same
private Mosquitto. While each is away, the same N threat messages are queued for it at the
broker (real payloads, by default ``secagent.threat/2`` with a distinct JPEG snapshot each as
the binary attachment); then it connects and the time to drain the queue is measured:

- bare: a paho subscriber that only counts messages (QoS 1, auto-ack);
- secagg: the aggregator's ingest (validate, snapshot to disk, SQLite commit with lineage,
  event grouping, ack after commit, receipts to the agent), in a process built as
  ``secagg serve`` builds its own (the service with its API app, logging at info, start-up's
  objects frozen); only the API is not started.

CPU per message is the process's user + system time (all its threads, ``time.process_time``)
from the moment it connects to the moment it has the last message, divided by N. Database
bytes per threat: the growth of the SQLite file plus its WAL, both measured after a
``wal_checkpoint(TRUNCATE)`` (secagg's clean stop), over the threats stored; the snapshot
files are counted apart. Rounds alternate which consumer goes first.

    python bench/ingest.py [--messages 3000] [--rounds 3] [--no-snapshot] [--wire 1]
    python bench/ingest.py --profile secagg.prof   # cProfile of the secagg process's drain
    python bench/ingest.py --backend postgresql    # the store on a private PostgreSQL cluster
    python bench/ingest.py --snapshot-sync filesystem  # one syncfs a batch, not an fsync a file

With ``--backend postgresql`` the store is a new database of a private cluster
(``demo/postgres.py``, fsync off as in the tests) for each round; the server's own CPU (its
processes, from ``/proc``, from "go" to the result) is printed beside secagg's as ``+ server``,
since there it is not in secagg's process as SQLite's is; the database bytes per threat are the
growth of ``pg_database_size``.

Targets (issue 13): rate ratio >= 0.5 for 1 KiB messages, >= 0.3 with a snapshot, zero lost,
<= 2 KB of database per threat.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import cv2
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from demo.broker import Mosquitto  # noqa: E402
from demo.footage import sample_still  # noqa: E402
from demo.postgres import Postgres  # noqa: E402
from wire.envelope import pack_threat, snapshot_ref  # noqa: E402
from wire.payloads import ThreatMessage  # noqa: E402

AGENT = "bench-host"
TOPIC = f"secagent/v1/{AGENT}/threats"
DRAIN_TIMEOUT_S = 600.0


# the messages ----------------------------------------------------------------------------------
def snapshots(n: int) -> list[bytes]:
    """n distinct JPEG snapshots (640x360, quality 80, about 70 KB): a stored snapshot is
    content-addressed, so one JPEG for all would be written once."""
    still = cv2.resize(sample_still("person"), (640, 360))
    out = []
    for i in range(n):
        frame = still.copy()
        cv2.putText(frame, f"{i:06d}", (8, 40), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (255, 255, 255), 2)
        ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 80])
        assert ok
        out.append(jpeg.tobytes())
    return out


def threat_doc(i: int, at: str, *, agent: str, kind: str, source: str) -> dict[str, Any]:
    """The i-th threat message of ``agent`` (no schema, no snapshot): one person threat on
    camera ``cam-<i % 4>``, captured (and sent) at ``at``."""
    box = {"label": "person", "class_id": 0, "score": 0.8, "xyxy": [486.7, 358, 794.2, 720]}
    return {
        "message_id": uuid.uuid4().hex,
        "agent_id": agent,
        "camera": f"cam-{i % 4}",
        "lineage_id": uuid.uuid4().hex,
        "frame": {
            "frame_id": uuid.uuid4().hex,
            "sha256": f"{i:064x}",
            "kind": kind,
            "source": source,
            "captured_at": at,
            "width": 1280,
            "height": 720,
        },
        "detections": [box],
        "threats": [{**box, "rule": "person_on_premises", "severity": "high"}],
        "versions": {
            "code": "bench",
            "model_sha256": "a" * 64,
            "rules_sha256": "b" * 64,
            "config_sha256": "c" * 64,
        },
        "sent_at": at,
    }


def payloads(n: int, *, snapshot: bool = True, wire: int = 2) -> list[bytes]:
    """n threat messages of one agent over four cameras, one threat each, half a second apart
    (so they group into four events)."""
    jpegs: list[bytes | None] = list(snapshots(n)) if snapshot else [None] * n
    t0 = datetime.now(UTC)
    out = []
    for i, jpeg in enumerate(jpegs):
        at = (t0 + timedelta(seconds=i * 0.5)).isoformat()
        doc = threat_doc(i, at, agent=AGENT, kind="video", source=f"bench.avi#{i}")
        if wire == 1:
            doc["schema"] = "secagent.threat/1"
            doc["snapshot_jpeg_b64"] = None if jpeg is None else base64.b64encode(jpeg).decode()
            out.append(json.dumps(doc).encode())
        else:
            doc["snapshot"] = None if jpeg is None else snapshot_ref(jpeg).model_dump()
            out.append(pack_threat(ThreatMessage.model_validate(doc), jpeg))
    return out


def publish_all(broker: Mosquitto, messages: list[bytes]) -> None:
    pub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    pub.max_queued_messages_set(0)
    pub.max_inflight_messages_set(1000)
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    infos = [pub.publish(TOPIC, m, qos=1) for m in messages]
    for info in infos:
        info.wait_for_publish(120)
    pub.loop_stop()
    pub.disconnect()


# the consumers, each in a process of its own (``--child``) -------------------------------------
class BareSubscriber:
    def __init__(self, host: str, port: int, client_id: str) -> None:
        self.host, self.port = host, port
        self.count = 0
        self.target = 0
        self.done = threading.Event()
        self.subscribed = threading.Event()
        c = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
        )
        c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(TOPIC, qos=1)
        c.on_subscribe = lambda cl, u, mid, rcs, p: self.subscribed.set()
        c.on_message = self._on_message
        self.c = c

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        self.count += 1
        if self.count >= self.target:
            self.done.set()

    def connect(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.c.connect(self.host, self.port, clean_start=False, properties=props)
        self.c.loop_start()

    def disconnect(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _wait_for(word: str) -> None:
    line = sys.stdin.readline().strip()
    if line != word:
        raise SystemExit(f"child: expected {word!r} from the bench, got {line!r}")


def _db_bytes(db: Path, url: str | None = None) -> int:
    if url:
        import psycopg

        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
            assert row is not None
            return int(row[0])
    wal = db.with_name(db.name + "-wal")
    return db.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def _tree_bytes(top: Path) -> tuple[int, int]:
    files = [p for p in top.rglob("*") if p.is_file()] if top.is_dir() else []
    return sum(p.stat().st_size for p in files), len(files)


def child_bare(args: argparse.Namespace) -> dict[str, Any]:
    sub = BareSubscriber(args.host, args.port, args.client_id)
    sub.connect()  # make the persistent session, then go away
    if not sub.subscribed.wait(10):
        raise SystemExit("bare: not subscribed")
    sub.disconnect()
    _say("ready")
    _wait_for("go")
    sub.target = args.target
    cpu0, t0 = time.process_time(), time.perf_counter()
    sub.connect()
    if not sub.done.wait(DRAIN_TIMEOUT_S):
        raise SystemExit(f"bare subscriber got {sub.count} of {args.target}")
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    sub.disconnect()
    return {"elapsed_s": elapsed, "cpu_s": cpu, "received": sub.count}


def child_secagg(args: argparse.Namespace) -> dict[str, Any]:
    from aggregator.cli import freeze_startup_objects
    from aggregator.config import AggregatorConfig
    from aggregator.ingest import Ingest
    from aggregator.service import Service
    from appcommon.cli import setup_logging
    from demo.broker import free_port

    # As `secagg serve` logs (a line per stored message at info), to a file (the bench's stderr)
    setup_logging(args.log_level)

    work = Path(args.work)
    db = work / f"{args.client_id}.sqlite"
    where: dict[str, str] = {"url": args.store_url} if args.store_url else {"path": str(db)}
    config = AggregatorConfig.model_validate(
        {
            "mqtt": {
                "host": args.host,
                "port": args.port,
                "client_id": args.client_id,
                "session_expiry_s": 3600,
            },
            "store": {
                **where,
                "snapshots_dir": str(work / f"{args.client_id}-snapshots"),
                "snapshot_sync": args.snapshot_sync,
            },
            "events": {"cutoff_s": 30, "sweep_interval_s": 5},
            "api": {"port": free_port()},  # built, never started
        }
    )
    first = Ingest(config)  # the schema and the persistent session, then away
    first.start()
    if not first.connected.wait(10):
        raise SystemExit("secagg: not subscribed")
    first.stop()
    db_before = _db_bytes(db, args.store_url)
    # As `secagg serve` builds it (the API's app and all: the same heap), then freezes what
    # start-up made; only the ingest is started.
    service = Service(config)
    freeze_startup_objects()
    ingest = service.ingest
    drained = threading.Event()

    def on_batch(size: int, seconds: float) -> None:
        if ingest.stats.stored + sum(ingest.stats.rejected.values()) >= args.target:
            drained.set()

    ingest.on_batch = on_batch
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile(time.thread_time)  # CPU of the writer thread, not waits
    _say("ready")
    _wait_for("go")
    if profiler is not None:
        _profile_writer(ingest, profiler)
    cpu0, t0 = time.process_time(), time.perf_counter()
    ingest.start()
    if not drained.wait(DRAIN_TIMEOUT_S):
        raise SystemExit(f"secagg stored {ingest.stats.stored} of {args.target}")
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    ingest.stop()  # checkpoints the WAL into the database
    if profiler is not None:
        profiler.dump_stats(args.profile)
    snap_bytes, snap_files = _tree_bytes(work / f"{args.client_id}-snapshots")
    return {
        "elapsed_s": elapsed,
        "cpu_s": cpu,
        "received": ingest.stats.received,
        "stored": ingest.stats.stored,
        "rejected": dict(ingest.stats.rejected),
        "db_growth_bytes": _db_bytes(db, args.store_url) - db_before,
        "snapshot_bytes": snap_bytes,
        "snapshot_files": snap_files,
    }


def _profile_writer(ingest: Any, profiler: Any) -> None:
    """Run the ingest's store writer under ``profiler`` (the thread that does the work)."""
    loop = ingest._guarded_loop

    def profiled() -> None:
        profiler.enable()
        try:
            loop()
        finally:
            profiler.disable()

    ingest._writer = threading.Thread(target=profiled, name="store-writer", daemon=True)


def child_main(args: argparse.Namespace) -> int:
    result = child_bare(args) if args.child == "bare" else child_secagg(args)
    _say("result " + json.dumps(result))
    return 0


# the bench ------------------------------------------------------------------------------------
@dataclass
class Round:
    rate: float  # messages/s
    cpu_us: float  # CPU µs per message
    result: dict[str, Any]
    server_cpu_us: float | None = None  # the PostgreSQL cluster's CPU µs per message


def run_child(
    kind: str,
    *,
    broker: Mosquitto,
    messages: list[bytes],
    work: Path,
    client_id: str,
    profile: str | None = None,
    log_level: str = "info",
    store_url: str | None = None,
    server: Postgres | None = None,
    snapshot_sync: str = "file",
) -> Round:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        kind,
        "--host",
        broker.host,
        "--port",
        str(broker.port),
        "--client-id",
        client_id,
        "--work",
        str(work),
        "--target",
        str(len(messages)),
    ]
    if profile:
        cmd += ["--profile", profile]
    if store_url:
        cmd += ["--store-url", store_url]
    if kind == "secagg":
        cmd += ["--snapshot-sync", snapshot_sync]
    log = (work / f"{client_id}.log").open("wb")
    with (
        log,
        subprocess.Popen(
            [*cmd, "--log-level", log_level],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            cwd=ROOT,
        ) as proc,
    ):
        assert proc.stdin is not None and proc.stdout is not None
        _expect(proc.stdout, "ready", kind)
        publish_all(broker, messages)  # queued for the child's session while it is away
        server_cpu0 = server.cpu_s() if server else 0.0
        proc.stdin.write("go\n")
        proc.stdin.flush()
        line = _expect(proc.stdout, "result ", kind)
        server_cpu = server.cpu_s() - server_cpu0 if server else None
        if proc.wait(60) != 0:
            raise SystemExit(f"{kind}: exit status {proc.returncode}")
    result: dict[str, Any] = json.loads(line.removeprefix("result "))
    n = len(messages)
    if result["received"] < n or result.get("stored", n) < n or result.get("rejected"):
        raise SystemExit(f"{kind}: lost or refused messages: {result}")
    return Round(
        rate=n / result["elapsed_s"],
        cpu_us=result["cpu_s"] / n * 1e6,
        result=result,
        server_cpu_us=None if server_cpu is None else server_cpu / n * 1e6,
    )


def _expect(stream: IO[str], prefix: str, kind: str) -> str:
    line = stream.readline()
    if not line.startswith(prefix):
        raise SystemExit(f"{kind}: expected {prefix.strip()!r}, got {line!r}")
    return line.strip()


def _median(values: list[float]) -> float:
    s = sorted(values)
    return s[len(s) // 2] if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--no-snapshot", action="store_true", help="threat messages without a snapshot (~1 KiB)"
    )
    parser.add_argument(
        "--wire",
        type=int,
        choices=(1, 2),
        default=2,
        help="2: secagent.threat/2, the snapshot a binary attachment (the agent's default); "
        "1: secagent.threat/1, the snapshot in base64 inside the JSON (older agents)",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        help="where the stores and snapshots go (default: the system's temporary directory; "
        "/dev/shm takes the disk out of the figures)",
    )
    parser.add_argument(
        "--snapshot-sync",
        choices=("file", "filesystem"),
        default="file",
        help="secagg's store.snapshot_sync: an fsync a snapshot file (default) or one syncfs "
        "of the snapshots' filesystem a batch",
    )
    parser.add_argument("--profile", help="write a cProfile of secagg's writer thread here")
    parser.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="secagg's log level (to a file), as `secagg serve --log-level` (default info)",
    )
    parser.add_argument(
        "--backend",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="secagg's store: a SQLite file (default), or a new database of a private "
        "PostgreSQL cluster each round (demo/postgres.py)",
    )
    parser.add_argument("--child", choices=("bare", "secagg"), help=argparse.SUPPRESS)
    parser.add_argument("--store-url", help=argparse.SUPPRESS)
    parser.add_argument("--host", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--client-id", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--target", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child_main(args)

    messages = payloads(args.messages, snapshot=not args.no_snapshot, wire=args.wire)
    size_kb = sum(map(len, messages)) / len(messages) / 1024
    bare: list[Round] = []
    agg: list[Round] = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        pg = stack.enter_context(Postgres()) if args.backend == "postgresql" else None
        # No broker persistence: this measures the consumers, not Mosquitto saving its queue.
        with Mosquitto(work / "broker", persistence=False) as broker:
            for r in range(args.rounds):

                def secagg(r: int = r) -> Round:
                    profile = args.profile if r == args.rounds - 1 else None
                    return run_child(
                        "secagg",
                        broker=broker,
                        messages=messages,
                        work=work,
                        client_id=f"secagg-{r}",
                        profile=profile,
                        log_level=args.log_level,
                        store_url=pg.create_database(f"secagg_{r}") if pg else None,
                        server=pg,
                        snapshot_sync=args.snapshot_sync,
                    )

                def plain(r: int = r) -> Round:
                    return run_child(
                        "bare", broker=broker, messages=messages, work=work, client_id=f"bare-{r}"
                    )

                # Alternate which goes first, so drift on a busy machine hits both alike.
                if r % 2:
                    agg.append(secagg())
                    bare.append(plain())
                else:
                    bare.append(plain())
                    agg.append(secagg())
                a, b = agg[-1], bare[-1]
                server = "" if a.server_cpu_us is None else f" + server {a.server_cpu_us:.0f}"
                print(
                    f"round {r + 1}: bare {b.rate:.0f} msg/s {b.cpu_us:.0f} µs CPU/msg; "
                    f"secagg {a.rate:.0f} msg/s {a.cpu_us:.0f}{server} µs CPU/msg; "
                    f"ratio {a.rate / b.rate:.2f}; database {a.result['db_growth_bytes']} B, "
                    f"snapshots {a.result['snapshot_bytes']} B in {a.result['snapshot_files']} "
                    "files",
                    flush=True,
                )
    n = args.messages
    ratio = _median([a.rate / b.rate for a, b in zip(agg, bare, strict=True)])
    db_per_threat = _median([a.result["db_growth_bytes"] / a.result["stored"] for a in agg])
    snap_per_threat = _median([a.result["snapshot_bytes"] / a.result["stored"] for a in agg])
    kind = "no snapshot" if args.no_snapshot else f"threat/{args.wire} with a snapshot"
    server = ""
    if not args.no_snapshot and args.snapshot_sync != "file":
        kind += f", snapshot_sync {args.snapshot_sync}"
    if args.backend != "sqlite":
        kind += f", store on {args.backend}"
        server = f" + server {_median([a.server_cpu_us or 0.0 for a in agg]):.0f}"
    print(
        f"{n} threat messages of {size_kb:.1f} KiB ({kind}), zero lost, medians of "
        f"{args.rounds} alternating rounds: bare paho {_median([b.rate for b in bare]):.0f} "
        f"msg/s, {_median([b.cpu_us for b in bare]):.0f} µs CPU/msg; secagg "
        f"{_median([a.rate for a in agg]):.0f} msg/s, {_median([a.cpu_us for a in agg]):.0f}"
        f"{server} µs CPU/msg; ratio {ratio:.2f}; database {db_per_threat:.0f} B/threat, snapshots "
        f"{snap_per_threat:.0f} B/threat"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
