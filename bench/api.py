"""REST API speed: throughput and latency (p50, p99) of the data routes side by side with a
trivial route of the same server, under 20 concurrent clients, in one run.

``secagg serve`` runs as a real process (uvicorn, its pool of read connections) on a store of
``--messages`` threats in events of 10; a private Mosquitto gives it a broker. Each route is
hit for ``--seconds`` by 20 clients with keep-alive connections:

- ``GET /api/ping``: answers without the store (the floor: HTTP, routing, JSON);
- ``GET /api/health``: five counters and the ingest's liveness;
- ``GET /api/events?limit=100``: a page of 100 events.

The last column is the server process's CPU time per request (from /proc): on a machine with
fewer cores than the clients and the server need, the rates are bounded by the clients too.

    python bench/api.py [--messages 5000] [--seconds 5] [--clients 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aggregator import events, records, store  # noqa: E402
from aggregator.config import AggregatorConfig  # noqa: E402
from bench.ingest import threat_doc  # noqa: E402
from demo.broker import Mosquitto, free_port  # noqa: E402

BIN = Path(sys.executable).parent
ROUTES = ("/api/ping", "/api/health", "/api/events?limit=100")


HEADERS: dict[str, str] = {}
"""A viewer token of the bench's store (sent to a checkout without access control too: it is
ignored there)."""


def bench_token(config: AggregatorConfig) -> str:
    from aggregator.auth import accounts
    from aggregator.auth.roles import Role

    conn = store.connect(config.store.path)
    try:
        with store.transaction(conn):
            return accounts.create_token(conn, name="bench", role=Role.viewer).token
    finally:
        conn.close()


def populate(config: AggregatorConfig, messages: int) -> None:
    """``messages`` threats of one agent, a new event every 10 (60 s apart: past the cutoff)."""
    store.migrate(config.store.path)
    conn = store.connect(config.store.path)
    t0 = datetime.now(UTC) - timedelta(days=2)
    batch = []
    for i in range(messages):
        at = (t0 + timedelta(seconds=(i // 10) * 60 + i % 10)).isoformat()
        doc = threat_doc(i, at, agent="bench-host", kind="file", source=f"/incoming/{i}.jpg")
        doc["schema"] = "secagent.threat/1"
        batch.append(("secagent/v1/bench-host/threats", json.dumps(doc).encode()))
    grouping = events.Grouping.from_config(config.events)
    for start in range(0, len(batch), 500):
        records.store_batch(
            conn, batch[start : start + 500], config=config, grouping=grouping, now_ts=time.time()
        )
    conn.close()


async def hammer(base: str, route: str, *, clients: int, seconds: float) -> list[float]:
    """Latencies (s) of every request that ``clients`` concurrent clients made in ``seconds``."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def one(client: httpx.AsyncClient) -> None:
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            response = await client.get(route)
            latencies.append(time.perf_counter() - began)
            if response.status_code >= 500 and route != "/api/health":
                raise RuntimeError(f"{route}: {response.status_code}")

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(
        base_url=base, limits=limits, timeout=30, headers=HEADERS
    ) as client:
        await client.get(route)  # warm up
        await asyncio.gather(*(one(client) for _ in range(clients)))
    return latencies


def cpu_s(pid: int) -> float:
    """User + system CPU seconds the process has used (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument(
        "--code",
        type=Path,
        default=None,
        help="run the server from this checkout instead (an earlier commit: before/after)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        port = free_port()
        with Mosquitto(work / "broker") as broker:
            config = AggregatorConfig.model_validate(
                {
                    "mqtt": {"host": broker.host, "port": broker.port},
                    "store": {"path": str(work / "secagg.sqlite")},
                    "api": {"host": "127.0.0.1", "port": port},
                }
            )
            populate(config, args.messages)
            HEADERS["Authorization"] = f"Bearer {bench_token(config)}"
            (work / "secagg.yaml").write_text(  # only what an earlier checkout knows too
                json.dumps(
                    {
                        "mqtt": {"host": broker.host, "port": broker.port},
                        "store": {"path": str(config.store.path)},
                        "api": {"host": "127.0.0.1", "port": port},
                    }
                )
            )
            command = [str(BIN / "secagg")]
            if args.code is not None:
                command = [
                    sys.executable,
                    "-c",
                    f"import sys; sys.path.insert(0, {str(args.code)!r}); "
                    "from aggregator.cli import main; main()",
                ]
            server = subprocess.Popen(
                [*command, "serve", "--config", str(work / "secagg.yaml")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            base = f"http://127.0.0.1:{port}"
            try:
                deadline = time.monotonic() + 60
                while True:
                    try:
                        r = httpx.get(f"{base}/api/health", headers=HEADERS, timeout=1)
                        if r.status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    if time.monotonic() > deadline:
                        raise SystemExit("secagg did not come up")
                    time.sleep(0.2)
                found: dict[str, tuple[float, float, float, float]] = {}
                for route in ROUTES:
                    cpu_before = cpu_s(server.pid)
                    lat = asyncio.run(
                        hammer(base, route, clients=args.clients, seconds=args.seconds)
                    )
                    cpu_us = (cpu_s(server.pid) - cpu_before) / len(lat) * 1e6
                    q = statistics.quantiles(lat, n=100)
                    found[route] = (len(lat) / args.seconds, q[49] * 1000, q[98] * 1000, cpu_us)
            finally:
                server.terminate()
                server.wait(15)
    print(f"{args.messages} threats stored, {args.clients} clients, {args.seconds:g} s a route")
    print(
        f"{'route':24s} {'req/s':>7s} {'p50 ms':>7s} {'p99 ms':>7s} {'vs ping':>7s} "
        f"{'server CPU us/req':>18s}"
    )
    ping = found[ROUTES[0]][0]
    for route, (rate, p50, p99, cpu_us) in found.items():
        print(f"{route:24s} {rate:7.0f} {p50:7.1f} {p99:7.1f} {rate / ping:7.2f} {cpu_us:18.0f}")


if __name__ == "__main__":
    main()
