"""How many agents one Mosquitto, one ingest worker and one PostgreSQL serve: the CPU each
spends on a threat message and the broker's memory per connected agent, measured on real
processes in one run, and what that makes per core for an agent's load.

- **Broker.** A private Mosquitto (persistence on, as deployed) with ``--connections`` idle
  agents connected (raw MQTT 5 sockets: CONNECT with a clean start, SUBSCRIBE to the agent's
  receipts and OTA topics, as ``secagent`` does): its resident memory before and after, per
  connection. Then the threat messages are published while the ingest worker is paused
  (SIGSTOP: the broker takes each message, acknowledges it and queues it for the shared
  subscription), and drained once it resumes: the broker's CPU in both phases, per message.
- **Ingest worker.** One real ``secagg serve --role ingest`` process: its CPU over the drain,
  per message (validation, snapshot, commit, grouping, ack, receipt).
- **PostgreSQL** (``--backend postgresql``): a private cluster (``demo/postgres.py``) with
  fsync and synchronous commit on, as a server would run; the CPU of all its processes over
  the drain, per message (SQLite runs inside the worker: its cost is in the worker's figure).

CPU is user + system time from ``/proc/<pid>/stat``: it does not depend on what else runs on
the machine, where rates do. The capacity lines divide a core by those figures for an agent of
``--cameras`` cameras, each sending ``--threat-fps`` threat messages a second while something
is in view (a person walking through: 2 fps) for ``--busy`` of the time, plus a status every
``--status-interval-s`` (the agent's ``mqtt.status_interval_s``, 30 s by default). The peak line
is every camera of every agent in view at once.

    python bench/capacity.py [--messages 3000] [--connections 1000] [--backend postgresql]
        [--snapshot] [--cameras 4] [--threat-fps 2] [--busy 0.1]

The messages are those of ``bench/ingest.py`` (about 1 KiB; ``--snapshot``: ``threat/2``
with a 73 KB snapshot).
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aggregator import store  # noqa: E402
from bench.ingest import payloads, publish_all  # noqa: E402
from demo.broker import Mosquitto, free_port  # noqa: E402
from demo.postgres import Postgres  # noqa: E402
from tests.support.certs import make_certs  # noqa: E402

BIN = Path(sys.executable).parent
DRAIN_TIMEOUT_S = 600.0


# MQTT 5 packets of an idle agent ----------------------------------------------------------------
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _utf8(s: str) -> bytes:
    raw = s.encode()
    return len(raw).to_bytes(2, "big") + raw


def connect_packet(client_id: str, keepalive_s: int = 600) -> bytes:
    # protocol name, level 5, flags: clean start, keep alive, no properties; payload: client id
    body = _utf8("MQTT") + bytes([5, 0x02]) + keepalive_s.to_bytes(2, "big") + b"\x00"
    body += _utf8(client_id)
    return b"\x10" + _varint(len(body)) + body


def subscribe_packet(packet_id: int, topics: list[str]) -> bytes:
    body = packet_id.to_bytes(2, "big") + b"\x00"  # no properties
    for topic in topics:
        body += _utf8(topic) + b"\x01"  # QoS 1
    return b"\x82" + _varint(len(body)) + body


def read_packet(sock: socket.socket) -> int:
    """The type of the next packet on ``sock`` (its body read and dropped)."""

    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("the broker closed the connection")
            data += chunk
        return data

    kind = exactly(1)[0] >> 4
    length, shift = 0, 0
    while True:
        byte = exactly(1)[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    exactly(length)
    return kind


def connect_idle_agents(
    host: str, port: int, n: int, tls: ssl.SSLContext | None = None
) -> list[socket.socket]:
    """n connected agents, each subscribed to its receipts and OTA topics."""
    socks = []
    for i in range(n):
        agent = f"idle-{'tls' if tls else 'tcp'}-{i:05d}"
        sock = socket.create_connection((host, port), timeout=30)
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname=host)
        sock.sendall(connect_packet(agent))
        if read_packet(sock) != 2:  # CONNACK
            raise SystemExit(f"{agent}: no CONNACK")
        sock.sendall(
            subscribe_packet(1, [f"secagent/v1/{agent}/receipts", f"secagent/v1/{agent}/ota"])
        )
        if read_packet(sock) != 9:  # SUBACK
            raise SystemExit(f"{agent}: no SUBACK")
        socks.append(sock)
    return socks


# processes ---------------------------------------------------------------------------------------
def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise SystemExit(f"no VmRSS for {pid}")


def cpu_s(pid: int) -> float:
    """CPU seconds the threads of a process have run so far (``/proc/<pid>/task/*/schedstat``,
    in nanoseconds: ``/proc/<pid>/stat`` counts in clock ticks of 10 ms, too coarse for a
    broker that spends a few µs a message)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError):
            continue  # a thread that ended meanwhile
    return total / 1e9


def stored(target: str) -> int:
    """Messages stored so far, as the store counts them (on PostgreSQL, summed over the rows of
    each writing process)."""
    try:
        conn = store.connect(target, readonly=True)
    except store.StoreUnavailable:
        return 0
    try:
        return store.counters.row_counts(conn).messages
    except store.DatabaseError:
        return 0  # not migrated yet
    finally:
        conn.close()


@dataclass
class Costs:
    n: int
    broker_in_us: float  # accepting a message from an agent (PUBACK, queue, persistence)
    broker_out_us: float  # handing it to the worker and taking its ack and the receipt
    worker_us: float
    database_us: float | None  # PostgreSQL's processes; None on SQLite (in the worker)
    rate: float  # messages/s drained by the one worker


def measure(
    broker: Mosquitto,
    store: str,
    messages: list[bytes],
    work: Path,
    *,
    server_cpu: Callable[[], float] | None,
) -> Costs:
    """``server_cpu``: the database server's CPU seconds so far (PostgreSQL's processes)."""
    assert broker.proc is not None
    store_line = f"url: {store}" if store.startswith("postgresql://") else f"path: {store}"
    config = work / "secagg.yaml"
    config.write_text(
        f"mqtt: {{host: {broker.host}, port: {broker.port}, client_id: capacity}}\n"
        f"store: {{{store_line}, snapshots_dir: {work / 'snapshots'}}}\n"
        "events: {cutoff_s: 30, sweep_interval_s: 5}\n"
        f"api: {{host: 127.0.0.1, port: {free_port()}}}\n"
        "run_logs: {enabled: false}\n"
    )
    log = work / "worker.log"
    command = [str(BIN / "secagg"), "serve", "--config", str(config), "--role", "ingest"]
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [*command, "--worker", "w1"], stdout=out, stderr=subprocess.STDOUT, cwd=work
        )
    try:
        deadline = time.monotonic() + 60
        while "ready: broker connected" not in log.read_text():
            if time.monotonic() > deadline or worker.poll() is not None:
                raise SystemExit(f"the worker did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.05)  # polling a deadline wait
        worker.send_signal(signal.SIGSTOP)
        b0 = cpu_s(broker.proc.pid)
        publish_all(broker, messages)  # the broker queues them for the paused member
        b1 = cpu_s(broker.proc.pid)
        d0 = server_cpu() if server_cpu else 0.0
        w0 = cpu_s(worker.pid)
        t0 = time.perf_counter()
        worker.send_signal(signal.SIGCONT)
        while stored(store) < len(messages):
            if time.perf_counter() - t0 > DRAIN_TIMEOUT_S:
                raise SystemExit(f"stored {stored(store)} of {len(messages)}")
            time.sleep(0.02)  # polling a deadline wait
        elapsed = time.perf_counter() - t0
        b2, w1 = cpu_s(broker.proc.pid), cpu_s(worker.pid)
        d1 = server_cpu() if server_cpu else 0.0
    finally:
        worker.send_signal(signal.SIGCONT)
        worker.terminate()
        if worker.wait(30) != 0:
            raise SystemExit(f"the worker exited {worker.returncode}:\n{log.read_text()[-3000:]}")
    n = len(messages)
    if stored(store) != n:
        raise SystemExit(f"stored {stored(store)} of {n}: lost or stored twice")
    return Costs(
        n=n,
        broker_in_us=(b1 - b0) / n * 1e6,
        broker_out_us=(b2 - b1) / n * 1e6,
        worker_us=(w1 - w0) / n * 1e6,
        database_us=(d1 - d0) / n * 1e6 if server_cpu else None,
        rate=n / elapsed,
    )


def raise_open_files(n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, n + 1024))
    if want < n + 64:
        raise SystemExit(f"{n} connections need more open files than the hard limit {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--connections", type=int, default=1000, help="idle agents connected")
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--snapshot", action="store_true", help="threat/2 with a 73 KB snapshot")
    parser.add_argument("--cameras", type=int, default=4, help="cameras an agent has")
    parser.add_argument("--threat-fps", type=float, default=2.0, help="a camera's threats/s")
    parser.add_argument("--busy", type=float, default=0.1, help="share of time in an event")
    parser.add_argument("--status-interval-s", type=float, default=30.0)
    args = parser.parse_args()
    raise_open_files(args.connections)  # Mosquitto inherits the limit

    messages = payloads(args.messages, snapshot=args.snapshot)
    size_kb = sum(map(len, messages)) / len(messages) / 1024
    print(
        f"{args.messages} threat messages of {size_kb:.1f} KiB, {args.connections} idle agents, "
        f"{os.cpu_count()} cores, store: {args.backend}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        certs = make_certs(Path(tmp) / "certs")
        tls_port = free_port()
        tls_listener = (
            f"listener {tls_port} 127.0.0.1\ncafile {certs['cafile']}\n"
            f"certfile {certs['certfile']}\nkeyfile {certs['keyfile']}\n"
        )
        context = ssl.create_default_context(cafile=str(certs["cafile"]))
        with Mosquitto(Path(tmp) / "broker", extra_config=tls_listener) as broker:
            costs, per_conn = run(broker, tls_port, context, messages, Path(tmp), args)
    report(costs, per_conn, args)
    return 0


def run(
    broker: Mosquitto,
    tls_port: int,
    context: ssl.SSLContext,
    messages: list[bytes],
    tmp: Path,
    args: argparse.Namespace,
) -> tuple[Costs, float]:
    """The broker's memory per agent (TCP, then TLS), then the costs with the TLS agents
    connected; returns the costs and the KiB per TLS agent."""
    assert broker.proc is not None
    per_conn: dict[str, float] = {}
    socks: list[socket.socket] = []
    for kind, port, tls in (("TCP", broker.port, None), ("TLS", tls_port, context)):
        for sock in socks:
            sock.close()
        before = rss_kib(broker.proc.pid)
        socks = connect_idle_agents(broker.host, port, args.connections, tls)
        after = rss_kib(broker.proc.pid)
        per_conn[kind] = (after - before) / max(1, args.connections)
        print(
            f"broker memory: {before} KiB, {after} KiB with {args.connections} agents "
            f"connected over {kind} and subscribed: {per_conn[kind]:.1f} KiB an agent",
            flush=True,
        )
    try:
        if args.backend == "postgresql":
            with Postgres(durable=True) as pg:
                assert pg.proc is not None
                store = pg.create_database("capacity")
                costs = measure(broker, store, messages, tmp, server_cpu=pg.cpu_s)
        else:
            costs = measure(broker, str(tmp / "secagg.sqlite"), messages, tmp, server_cpu=None)
    finally:
        for sock in socks:
            sock.close()
    return costs, per_conn["TLS"]


def report(c: Costs, per_conn_kib: float, args: argparse.Namespace) -> None:
    broker = c.broker_in_us + c.broker_out_us
    print(
        f"CPU a threat message: broker {broker:.0f} µs (accept {c.broker_in_us:.0f}, "
        f"deliver {c.broker_out_us:.0f}), ingest worker {c.worker_us:.0f} µs"
        + (f", PostgreSQL {c.database_us:.0f} µs" if c.database_us is not None else "")
        + f"; one worker drained {c.rate:.0f} msg/s",
        flush=True,
    )
    status = 1.0 / args.status_interval_s  # a status costs the broker about a message
    peak = args.cameras * args.threat_fps + status
    average = args.cameras * args.threat_fps * args.busy + status
    print(
        f"an agent: {args.cameras} cameras x {args.threat_fps:g} threats/s while in view, "
        f"{args.busy:.0%} of the time, a status every {args.status_interval_s:g} s: "
        f"{peak:.2f} msg/s at peak, {average:.2f} on average"
    )
    parts = [("broker", broker), ("ingest worker", c.worker_us)]
    if c.database_us is not None:
        parts.append(("PostgreSQL", c.database_us))
    for name, us in parts:
        per_core = 1e6 / us
        print(
            f"one core of {name}: {per_core:,.0f} msg/s = {per_core / average:,.0f} agents "
            f"on average, {per_core / peak:,.0f} with all in view at once"
        )
    if per_conn_kib > 0:
        agents = f"{1024 * 1024 / per_conn_kib:,.0f}"
    else:  # too few connections to move the resident size by a page
        agents = "(too few connections to tell)"
    print(f"broker memory: {agents} agents connected over TLS a GiB")


if __name__ == "__main__":
    sys.exit(main())
