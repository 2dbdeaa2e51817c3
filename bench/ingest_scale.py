"""Ingest workers on one store, SQLite or PostgreSQL: messages/s and CPU µs per message with
1, 2 and 4 ``secagg serve --role ingest`` workers on the MQTT 5 shared subscription, against a
bare paho subscriber, side by side in one run, zero lost.

Each consumer is a real process connected to one private Mosquitto. The consumers are paused
(SIGSTOP) while the N threat messages are published, so the broker holds them for them (a
shared subscription gives each message to one member at publish time); then they are resumed
(SIGCONT) and the time until the last message is stored (secagg: the store's ``row_counts``
through the store layer, read every 20 ms on one connection) or counted (bare) is the drain.
CPU per message: the user + system time each process spent over the drain
(``/proc/<pid>/stat``), summed over the workers, over N; the per-worker figures are printed
too, so the scaling can be read where the cores are fewer than the workers (on 2 cores, 4
workers share them with the broker and, on PostgreSQL, the server).

    python bench/ingest_scale.py [--messages 3000] [--workers 1 2 4] [--no-snapshot]
        [--backend sqlite|postgresql|both]

``--backend postgresql``: the workers' store is a new database of one private PostgreSQL
cluster (``demo/postgres.py``, fsync off as in the tests) for each figure, and the server's
CPU over the drain (its processes, from ``/proc``; the 20 ms polls of the row count included)
is printed beside the workers' as ``+ server``: there the store's work is not in the workers'
processes as SQLite's is. ``both`` runs SQLite's figures and PostgreSQL's in each round, after
one bare subscriber's.

The messages are those of ``bench/ingest.py`` (one agent, four cameras, four events).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aggregator import store  # noqa: E402
from bench.ingest import BareSubscriber, payloads, publish_all  # noqa: E402
from demo.broker import Mosquitto, free_port  # noqa: E402
from demo.postgres import Postgres  # noqa: E402

BIN = Path(sys.executable).parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
DRAIN_TIMEOUT_S = 600.0


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@dataclass
class Drain:
    workers: int
    rate: float  # messages/s
    cpu_us: float  # CPU µs a message, all workers together
    per_worker_cpu_s: list[float]
    server_cpu_us: float | None = None  # PostgreSQL's processes, µs a message


def stored(conn: store.Connection) -> int:
    """Messages stored, as the store counts them (``row_counts``, which every worker updates
    in its transaction)."""
    return store.counters.row_counts(conn).messages


def secagg_round(
    broker: Mosquitto,
    messages: list[bytes],
    *,
    workers: int,
    work: Path,
    log_level: str,
    pg: Postgres | None = None,
) -> Drain:
    work.mkdir()
    config = work / "secagg.yaml"
    target: store.schema.Target = work / "secagg.sqlite"
    where = "path: secagg.sqlite"
    if pg is not None:
        target = pg.create_database(work.name.replace("-", "_"))
        where = f"url: '{target}'"
    config.write_text(
        f"mqtt: {{host: {broker.host}, port: {broker.port}, client_id: bench-{workers}}}\n"
        f"store: {{{where}, snapshots_dir: snapshots}}\n"
        "events: {cutoff_s: 30, sweep_interval_s: 5}\n"
        f"api: {{host: 127.0.0.1, port: {free_port()}}}\n"
        "run_logs: {enabled: false}\n"
    )
    procs = []
    logs = [work / f"w{i}.log" for i in range(workers)]
    for i, log in enumerate(logs):
        with log.open("wb") as out:
            procs.append(
                subprocess.Popen(
                    [
                        str(BIN / "secagg"),
                        "serve",
                        "--config",
                        str(config),
                        "--role",
                        "ingest",
                        "--worker",
                        f"w{i}",
                        "--log-level",
                        log_level,
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=work,
                )
            )
    conn: store.Connection | None = None
    try:
        deadline = time.monotonic() + 60
        while not all("ready: broker connected" in log.read_text() for log in logs):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise SystemExit(f"workers did not start: {[log.read_text() for log in logs]}")
            time.sleep(0.05)  # polling a deadline wait
        conn = store.connect(target, readonly=True)  # migrated: the workers are ready
        for p in procs:
            p.send_signal(signal.SIGSTOP)
        publish_all(broker, messages)  # held by the broker for the paused members
        before = [cpu_s(p.pid) for p in procs]
        server_before = pg.cpu_s() if pg else 0.0
        t0 = time.perf_counter()
        for p in procs:
            p.send_signal(signal.SIGCONT)
        while stored(conn) < len(messages):
            if time.perf_counter() - t0 > DRAIN_TIMEOUT_S:
                raise SystemExit(f"secagg stored {stored(conn)} of {len(messages)}")
            time.sleep(0.02)  # polling a deadline wait
        elapsed = time.perf_counter() - t0
        spent = [cpu_s(p.pid) - b for p, b in zip(procs, before, strict=True)]
        server = pg.cpu_s() - server_before if pg else None
    finally:
        for p in procs:
            p.send_signal(signal.SIGCONT)
            p.terminate()
        for p in procs:
            if p.wait(30) != 0:
                raise SystemExit(f"a worker exited {p.returncode}")
        found = None
        if conn is not None:
            found = stored(conn)
            conn.close()
    n = len(messages)
    if found != n:
        raise SystemExit(f"stored {found} of {n}: lost or stored twice")
    return Drain(
        workers,
        n / elapsed,
        sum(spent) / n * 1e6,
        spent,
        None if server is None else server / n * 1e6,
    )


def bare_child(host: str, port: int, target: int) -> int:
    """The bare subscriber's process: subscribe, say ready, count to ``target``, say done."""
    sub = BareSubscriber(host, port, f"bare-{os.getpid()}")
    sub.target = target
    sub.connect()
    if not sub.subscribed.wait(10):
        raise SystemExit("bare: not subscribed")
    print("ready", flush=True)
    if not sub.done.wait(DRAIN_TIMEOUT_S):
        raise SystemExit(f"bare got {sub.count} of {target}")
    print("done", flush=True)
    sub.disconnect()
    return 0


def bare_round(broker: Mosquitto, messages: list[bytes]) -> Drain:
    with subprocess.Popen(
        [sys.executable, __file__, "--bare-child", f"{broker.host}:{broker.port}:{len(messages)}"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    ) as proc:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise SystemExit("bare: not ready")
        proc.send_signal(signal.SIGSTOP)
        publish_all(broker, messages)
        before = cpu_s(proc.pid)
        t0 = time.perf_counter()
        proc.send_signal(signal.SIGCONT)
        if proc.stdout.readline().strip() != "done":
            raise SystemExit("bare: did not finish")
        elapsed = time.perf_counter() - t0
        spent = cpu_s(proc.pid) - before
        proc.wait(30)
    n = len(messages)
    return Drain(0, n / elapsed, spent / n * 1e6, [spent])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--rounds", type=int, default=1, help="rounds of every figure")
    parser.add_argument("--no-snapshot", action="store_true", help="~1 KiB messages")
    parser.add_argument(
        "--backend",
        choices=("sqlite", "postgresql", "both"),
        default="sqlite",
        help="the workers' store: a SQLite file, a database of a private PostgreSQL cluster, "
        "or both in each round",
    )
    parser.add_argument("--dir", type=Path, help="where the stores go (default: the temp dir)")
    parser.add_argument("--log-level", default="info", help="the workers' (as secagg serve)")
    parser.add_argument("--bare-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_child:
        host, port, target = args.bare_child.split(":")
        return bare_child(host, int(port), int(target))
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]

    messages = payloads(args.messages, snapshot=not args.no_snapshot)
    size_kb = sum(map(len, messages)) / len(messages) / 1024
    names = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}
    print(
        f"{args.messages} threat messages of {size_kb:.1f} KiB, {os.cpu_count()} cores, "
        + " and ".join(names[b] for b in backends)
        + (" stores" if len(backends) > 1 else " store"),
        flush=True,
    )
    with (
        tempfile.TemporaryDirectory(dir=args.dir) as tmp,
        contextlib.ExitStack() as stack,
        Mosquitto(Path(tmp) / "broker", persistence=False) as broker,
    ):
        pg = stack.enter_context(Postgres()) if "postgresql" in backends else None
        for r in range(args.rounds):
            bare = bare_round(broker, messages)
            print(
                f"round {r + 1}: bare paho {bare.rate:.0f} msg/s, {bare.cpu_us:.0f} µs CPU/msg",
                flush=True,
            )
            for backend in backends:
                on = f" on {names[backend]}" if backend != "sqlite" or len(backends) > 1 else ""
                for n in args.workers:
                    d = secagg_round(
                        broker,
                        messages,
                        workers=n,
                        work=Path(tmp) / f"r{r}-{backend}-w{n}",
                        log_level=args.log_level,
                        pg=pg if backend == "postgresql" else None,
                    )
                    each = ", ".join(f"{s:.2f}" for s in d.per_worker_cpu_s)
                    server = (
                        ""
                        if d.server_cpu_us is None
                        else f"; server {d.server_cpu_us:.0f} µs CPU/msg"
                    )
                    print(
                        f"round {r + 1}: {n} worker(s){on} {d.rate:.0f} msg/s (ratio "
                        f"{d.rate / bare.rate:.2f} of bare), {d.cpu_us:.0f} µs CPU/msg in all; "
                        f"CPU s per worker [{each}]{server}",
                        flush=True,
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
