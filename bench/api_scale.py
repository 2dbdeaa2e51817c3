"""REST API at scale: p50 / p99 latency of the list, event, health and plot routes on a store of
1M threats in 100k events, side by side with ``/api/ping`` of the same server, in one run.

The store is built straight through the typed store layer (:mod:`aggregator.store`: events,
messages with their compact lineage, threats, row counts, agents), in the real schema after the
migrations, a few thousand events a transaction: minutes, not the hours a broker would take.
It is kept at ``--db`` (with ``--db``.json saying what it holds), so a rerun with the same sizes
reuses it; ``--rebuild`` builds it again.

Then ``secagg serve`` runs as a real process (uvicorn, its pool of read connections, a private
Mosquitto for its ingest) on that file, and each route is asked ``--requests`` times over HTTP
with an operator's token (``--clients`` at a time, keep-alive), each request with parameters of
its own (a random camera, a random day, a random deep cursor, a random event). The server's CPU
time per request (from /proc) is printed beside the latencies: the API is one Python process,
so with several clients at once on few cores the latency grows with it.

- ``ping``: ``/api/ping``, no store (the floor: HTTP, routing, auth, JSON);
- ``health``: ``/api/health``;
- ``events first page``, ``events deep page`` (a cursor among the oldest tenth),
  ``events camera+day`` (one camera, one day), ``events camera+week page 2`` (the ``next``
  cursor of a week's first page; its server CPU counts that first page too), ``events
  camera, none`` (a camera without events: without an index on the filter, a scan of every
  row), ``events site, unreviewed`` (filters the page's list combines);
- ``event + threats``: ``/api/events/{id}``;
- ``threats first page``, ``threats deep page``, ``threats camera+day``, ``threats camera,
  none``;
- ``review page``: the events page ``/`` (its first page of events, rendered);
- ``plot png``: ``GET /api/plots/{id}.png``; ``plot draw`` (``POST /api/plots``, one new day
  of one camera each time: the query, the drawing and the record).

    python bench/api_scale.py [--db var/bench/api_scale.sqlite] [--events 100000]
        [--threats-per-event 10] [--requests 200] [--clients 1] [--backend sqlite]

``--backend postgresql``: the same store, built through the same store functions, in the
database ``api_scale`` of a private PostgreSQL cluster (``demo/postgres.py``, fsync on) kept in
``--pg-dir`` (``var/bench/api_scale-pg``; its ``.json`` beside it says what it holds) and
reused by later runs; ``VACUUM ANALYZE`` after the build, as autovacuum would do soon after.
The cluster's CPU per request (its processes, from /proc) is printed beside secagg's
(``db CPU us``): there the store's work is not in secagg's process as SQLite's is.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aggregator import store  # noqa: E402
from aggregator.store.backend import is_postgres  # noqa: E402
from aggregator.store.models import EventRow, MessageRow, NewEvent, NewThreat  # noqa: E402
from demo.broker import Mosquitto, free_port  # noqa: E402
from demo.postgres import Postgres  # noqa: E402

BIN = Path(sys.executable).parent
AGENTS = 20
CAMERAS_PER_AGENT = 4
EVENT_EVERY_S = 55.0
"""A new event every 55 s somewhere on the site: 100k events span about 64 days."""
THREAT_EVERY_S = 1.0
LAYOUT = 1
"""Bump when the generated data changes: a cached store of another layout is rebuilt."""
TARGET_MS = 50.0
SITE_OF = {f"cam-{a:02d}-{c}": f"site-{a % 5}" for a in range(AGENTS) for c in range(4)}


@dataclass(frozen=True)
class Layout:
    events: int
    threats_per_event: int
    t0: float

    def camera(self, event: int) -> tuple[str, str]:
        """(agent, camera) of the 0-based ``event``."""
        a = event % AGENTS
        c = (event // AGENTS) % CAMERAS_PER_AGENT
        return f"host-{a:02d}", f"cam-{a:02d}-{c}"

    def started_ts(self, event: int) -> float:
        return self.t0 + event * EVENT_EVERY_S

    @property
    def end_ts(self) -> float:
        return self.started_ts(self.events)


def _hex(rng: random.Random, bits: int) -> str:
    return f"{rng.getrandbits(bits):0{bits // 4}x}"


@dataclass(frozen=True)
class BenchStore:
    """Where the store is: a SQLite file, or the database ``api_scale`` of a PostgreSQL
    cluster kept between runs (``pg``, started by the bench)."""

    target: store.schema.Target
    meta: Path
    """What it holds (JSON: the layout, ``t0``, the build time)."""
    pg: Postgres | None = None

    def exists(self) -> bool:
        if self.pg is None:
            return Path(self.target).is_file()
        with psycopg.connect(self.pg.url()) as conn:
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname = 'api_scale'")
            return found.fetchone() is not None

    def empty(self) -> None:
        """Make a new empty store where this one is (deleting what was there)."""
        if self.pg is None:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.target}{suffix}").unlink(missing_ok=True)
            return
        with psycopg.connect(self.pg.url(), autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS api_scale")
        self.pg.create_database("api_scale")

    def size_bytes(self) -> int:
        if self.pg is None:
            files = (Path(f"{self.target}{s}") for s in ("", "-wal"))
            return sum(f.stat().st_size for f in files if f.exists())
        with psycopg.connect(str(self.target)) as conn:
            row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
            assert row is not None
            return int(row[0])

    def server_cpu_s(self) -> float:
        """CPU seconds the PostgreSQL cluster's processes have used (0 on SQLite: its work is
        in secagg's process)."""
        return 0.0 if self.pg is None else self.pg.cpu_s()

    def store_config(self) -> dict[str, object]:
        if self.pg is None:
            return {"path": str(self.target), "check_on_start": False}
        return {"url": str(self.target)}


def build(where: BenchStore, layout: Layout, *, chunk_events: int = 2000) -> None:
    """Fill a fresh store at ``where`` with ``layout``: events, one message a threat, threats,
    compact lineage run ids, row counts, agents."""
    where.empty()
    db = where.target
    store.migrate(db)
    rng = random.Random(13)
    versions = {k: hashlib.sha256(k.encode()).hexdigest() for k in ("model", "rules", "config")}
    conn = store.connect(db)
    per = layout.threats_per_event
    try:
        for first in range(0, layout.events, chunk_events):
            last = min(layout.events, first + chunk_events)
            with store.transaction(conn):
                run_base = store.lineage.reserve_runs(conn, 4 * (last - first) * per)
                rows: list[tuple[MessageRow, str]] = []
                threats: list[NewThreat] = []
                grown: list[EventRow] = []
                ended: list[int] = []
                for e in range(first, last):
                    agent, camera = layout.camera(e)
                    severity = "high" if e % 3 else "medium"
                    start = layout.started_ts(e)
                    scores = [round(0.5 + 0.45 * rng.random(), 3) for _ in range(per)]
                    ids = [_hex(rng, 128) for _ in range(per)]
                    key = f"agent_id={agent}|camera={camera}|rule=person_on_premises"
                    event_id = store.events.create(
                        conn,
                        NewEvent(
                            agent, camera, "person_on_premises", "person", severity,
                            start, scores[0], ids[0], key, 30.0,
                        ),
                    )  # fmt: skip
                    top = max(range(per), key=scores.__getitem__)
                    last_ts = start + (per - 1) * THREAT_EVERY_S
                    grown.append(
                        EventRow(
                            event_id, agent, camera, "person_on_premises", "person", severity,
                            start, last_ts, None, per, scores[top], ids[top], key, [camera], 30.0,
                        )
                    )  # fmt: skip
                    if e < layout.events - AGENTS:  # each agent's newest event stays open
                        ended.append(event_id)
                    for j in range(per):
                        ts = start + j * THREAT_EVERY_S
                        at = datetime.fromtimestamp(ts, UTC).isoformat()
                        frame_sha = hashlib.sha256(f"{e}/{j}".encode()).hexdigest()
                        xyxy = (400.0 + j, 300.0, 700.0 + j, 720.0)
                        detections = json.dumps(
                            [{"label": "person", "class_id": 0, "score": scores[j],
                              "xyxy": list(xyxy)}],
                            separators=(",", ":"), sort_keys=True,
                        )  # fmt: skip
                        row = MessageRow(
                            ids[j], agent, camera, _hex(rng, 128), _hex(rng, 128), frame_sha,
                            "file", f"/incoming/{camera}/{e}-{j}.jpg", 1280, 720, at, ts, at,
                            "0.1.0+bench", versions["model"], versions["rules"],
                            versions["config"], None, detections,
                            hashlib.sha256(detections.encode()).hexdigest(),
                            run_base + 4 * len(rows), "0.1.0+bench",
                        )  # fmt: skip
                        rows.append((row, store.messages.key_of(row)))
                        threats.append(
                            NewThreat(
                                ids[j], event_id, agent, camera, "person_on_premises",
                                severity, "person", 0, scores[j], xyxy, ts,
                            )
                        )  # fmt: skip
                store.messages.insert_many(conn, rows)
                store.messages.insert_threats(conn, threats)
                store.events.save_many(conn, grown)
                store.events.end(conn, ended)
                store.counters.add_rows(conn, {"messages": len(rows), "threats": len(threats)})
            print(f"\r  built {last:,} of {layout.events:,} events", end="", flush=True)
        print()
        with store.transaction(conn):
            for a in range(AGENTS):
                store.agents.heard_from(
                    conn,
                    agent_id=f"host-{a:02d}",
                    heard_ts=time.time(),
                    clock_ts=layout.end_ts,
                    clock_max_ts=layout.end_ts + 86400,
                )
        store.checkpoint(conn)
        if is_postgres(conn):  # as autovacuum would, soon: the planner's statistics
            conn.execute("VACUUM ANALYZE")
    finally:
        conn.close()


def cached_store(where: BenchStore, layout: Layout, *, rebuild: bool) -> float | None:
    """Build the store unless ``where`` holds this layout already; returns the build time in
    seconds (None: reused)."""
    meta = where.meta
    wanted = {"layout": LAYOUT, "events": layout.events, "per": layout.threats_per_event}
    if not rebuild and meta.is_file() and where.exists():
        found = json.loads(meta.read_text())
        if {k: found.get(k) for k in wanted} == wanted:
            return None
    meta.unlink(missing_ok=True)
    meta.parent.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    build(where, layout)
    took = time.monotonic() - began
    meta.write_text(json.dumps({**wanted, "t0": layout.t0, "build_s": round(took, 1)}))
    return took


def make_token(db: store.schema.Target, role: str) -> str:
    from aggregator.auth import accounts
    from aggregator.auth.roles import Role

    conn = store.connect(db)
    try:
        with store.transaction(conn):
            return accounts.create_token(conn, name=f"bench-{role}", role=Role[role]).token
    finally:
        conn.close()


def day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


Request = Callable[[random.Random], tuple[str, str, dict[str, object] | None]]
"""A route's next request: (method, url, JSON body)."""


def routes(layout: Layout, client_next: dict[str, str]) -> dict[str, Request]:
    n = layout.events
    cams = sorted(SITE_OF)

    def cam_day(rng: random.Random) -> tuple[str, str]:
        t = layout.t0 + rng.random() * (layout.end_ts - layout.t0 - 86400)
        return rng.choice(cams), f"since={day(t)}&until={day(t + 86400)}".replace("+", "%2B")

    def filtered(path: str) -> Request:
        def request(rng: random.Random) -> tuple[str, str, None]:
            camera, span = cam_day(rng)
            return "GET", f"{path}?limit=100&camera={camera}&{span}", None

        return request

    def deep_cursor(rng: random.Random, top: int) -> int:
        return rng.randint(top // 100, top // 10)

    def get(url: Callable[[random.Random], str]) -> Request:
        return lambda rng: ("GET", url(rng), None)

    def events_page2(rng: random.Random) -> tuple[str, str, None]:
        camera = rng.choice(cams)  # a week of one camera: about 140 events, two pages
        t = layout.t0 + rng.random() * (layout.end_ts - layout.t0 - 7 * 86400)
        span = f"since={day(t)}&until={day(t + 7 * 86400)}".replace("+", "%2B")
        return "GET", f"/api/events?limit=100&camera={camera}&{span}&page2=1", None

    def plot_draw(rng: random.Random) -> tuple[str, str, dict[str, object]]:
        camera, _ = cam_day(rng)
        t = layout.t0 + rng.randrange(int(layout.end_ts - layout.t0 - 86400))
        body = {"kind": "threats_per_hour", "since": day(t), "until": day(t + 86400)}
        return "POST", "/api/plots", {**body, "camera": camera}

    per = layout.threats_per_event
    return {
        "ping": get(lambda rng: "/api/ping"),
        "health": get(lambda rng: "/api/health"),
        "events first page": get(lambda rng: "/api/events?limit=100"),
        "events deep page": get(
            lambda rng: f"/api/events?limit=100&before_id={deep_cursor(rng, n)}"
        ),
        "events camera+day": filtered("/api/events"),
        "events camera+week page 2": events_page2,
        "events camera, none": get(lambda rng: "/api/events?limit=100&camera=cam-none"),
        "events site, unreviewed": get(
            lambda rng: f"/api/events?limit=100&site=site-{rng.randrange(5)}&reviewed=false"
        ),
        "event + threats": get(lambda rng: f"/api/events/{rng.randint(1, n)}"),
        "threats first page": get(lambda rng: "/api/threats?limit=100"),
        "threats deep page": get(
            lambda rng: f"/api/threats?limit=100&before_id={deep_cursor(rng, n * per)}"
        ),
        "threats camera+day": filtered("/api/threats"),
        "threats camera, none": get(lambda rng: "/api/threats?limit=100&camera=cam-none"),
        "review page": get(lambda rng: "/"),
        "plot png": get(lambda rng: client_next["plot_png"]),
        "plot draw": plot_draw,
    }


LISTS = {name for name in ("events", "event", "threats", "review")}
"""Routes held to the target: lists and event pages (the first word of the name)."""


async def measure(
    base: str, request: Request, *, requests: int, clients: int, headers: dict[str, str]
) -> list[float]:
    """Latencies (s) of ``requests`` requests made by ``clients`` concurrent clients."""
    latencies: list[float] = []
    left = [requests]

    async def one(client: httpx.AsyncClient, rng: random.Random) -> None:
        while left[0] > 0:
            left[0] -= 1
            method, url, body = request(rng)
            if "&page2=1" in url:  # the second page of a filter: its first page names it
                first = await client.get(url.replace("&page2=1", ""))
                url = first.links.get("next", {}).get("url") or url.replace("&page2=1", "")
            began = time.perf_counter()
            response = await client.request(method, url, json=body)
            latencies.append(time.perf_counter() - began)
            if response.status_code >= 400 and response.status_code != 503:
                raise RuntimeError(f"{method} {url}: {response.status_code} {response.text[:200]}")

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60, headers=headers) as c:
        await asyncio.gather(*(one(c, random.Random(i)) for i in range(clients)))
    return latencies


def cpu_s(pid: int) -> float:
    """User + system CPU seconds the process has used (its threads and its live children
    included: the HTTP workers of ``--http-workers``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return own + sum(cpu_s(int(child)) for child in children)


def wait_up(
    base: str, headers: dict[str, str], server: subprocess.Popen[bytes], *, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if server.poll() is not None:
            raise SystemExit(f"secagg serve exited with {server.returncode}")
        try:
            if httpx.get(f"{base}/api/ping", headers=headers, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("secagg did not come up")
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--db", type=Path, default=ROOT / "var" / "bench" / "api_scale.sqlite")
    parser.add_argument(
        "--pg-dir",
        type=Path,
        default=ROOT / "var" / "bench" / "api_scale-pg",
        help="--backend postgresql: the folder of the cluster kept between runs",
    )
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--threats-per-event", type=int, default=10)
    parser.add_argument("--requests", type=int, default=200, help="per route")
    parser.add_argument("--clients", type=int, default=1, help="concurrent clients")
    parser.add_argument("--rounds", type=int, default=3, help="passes over the routes")
    parser.add_argument("--rebuild", action="store_true", help="build the store again")
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--verbose", action="store_true", help="show secagg's log")
    parser.add_argument("--only", default="", help="comma-separated route names to run")
    parser.add_argument("--http-workers", type=int, default=0, help="secagg serve --http-workers N")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        if args.backend == "postgresql":
            pg_dir: Path = args.pg_dir.resolve()
            pg = stack.enter_context(Postgres(keep_at=pg_dir, durable=True))
            where = BenchStore(pg.url("api_scale"), Path(f"{pg_dir}.json"), pg)
            shown = f"{pg_dir} (postgresql, database api_scale)"
        else:
            db: Path = args.db.resolve()
            where = BenchStore(db, Path(f"{db}.json"))
            shown = f"{db} (sqlite)"
        run(where, shown, args)


def run(where: BenchStore, shown: str, args: argparse.Namespace) -> None:
    t0 = float(int(time.time() // 86400 * 86400) - 70 * 86400)
    meta = where.meta
    if meta.is_file() and not args.rebuild:
        t0 = float(json.loads(meta.read_text()).get("t0", t0))
    layout = Layout(args.events, args.threats_per_event, t0)
    print(f"store {shown}", flush=True)
    build_s = cached_store(where, layout, rebuild=args.rebuild)
    if build_s is None:
        print(f"  reused (built in {json.loads(meta.read_text()).get('build_s')} s)")
    else:
        print(f"  built in {build_s:.0f} s")
    headers = {"Authorization": f"Bearer {make_token(where.target, 'operator')}"}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        port = free_port()
        with Mosquitto(work / "broker") as broker:
            (work / "secagg.yaml").write_text(
                json.dumps(
                    {
                        "mqtt": {"host": broker.host, "port": broker.port},
                        "store": {
                            **where.store_config(),
                            "plots_dir": str(work / "plots"),
                            "snapshots_dir": str(work / "snapshots"),
                        },
                        "api": {"host": "127.0.0.1", "port": port, "plots_per_minute": 10000},
                        "events": {"sites": SITE_OF},
                    }
                )
            )
            began = time.monotonic()
            server = subprocess.Popen(
                [str(BIN / "secagg"), "serve", "--config", str(work / "secagg.yaml")]
                + ["--http-workers", str(args.http_workers)] * bool(args.http_workers),
                stdout=subprocess.DEVNULL,
                stderr=sys.stderr if args.verbose else subprocess.DEVNULL,
            )
            base = f"http://127.0.0.1:{port}"
            try:
                wait_up(base, headers, server, timeout_s=600)
                print(f"  secagg serve up in {time.monotonic() - began:.1f} s")
                plot = httpx.post(
                    f"{base}/api/plots",
                    headers=headers,
                    json={"kind": "threats_per_hour", "since": day(t0), "until": day(t0 + 86400)},
                    timeout=60,
                )
                plot.raise_for_status()
                png = {"plot_png": f"/api/plots/{plot.json()['id']}.png"}
                found: dict[str, list[float]] = {}
                only = {s.strip() for s in args.only.split(",") if s.strip()}
                chosen = {
                    name: request
                    for name, request in routes(layout, png).items()
                    if not only or name in only or name == "ping"
                }
                cpu_total: dict[str, float] = {}
                db_total: dict[str, float] = {}
                for request in chosen.values():  # warm up: the pool opens connections
                    asyncio.run(
                        measure(base, request, requests=5, clients=args.clients, headers=headers)
                    )
                for _ in range(args.rounds):  # routes in turn: a noisy moment hits them all
                    for name, request in chosen.items():
                        cpu_before = cpu_s(server.pid)
                        db_before = where.server_cpu_s()
                        found.setdefault(name, []).extend(
                            asyncio.run(
                                measure(
                                    base,
                                    request,
                                    requests=(args.requests if name != "plot draw" else 20)
                                    // args.rounds,
                                    clients=args.clients,
                                    headers=headers,  # the pages take a bearer token too
                                )
                            )
                        )
                        cpu_total[name] = cpu_total.get(name, 0.0) + cpu_s(server.pid) - cpu_before
                        db_total[name] = db_total.get(name, 0.0) + where.server_cpu_s() - db_before
                cpu_us = {name: cpu_total[name] / len(lat) * 1e6 for name, lat in found.items()}
                db_us = {name: db_total[name] / len(lat) * 1e6 for name, lat in found.items()}
            finally:
                server.terminate()
                server.wait(30)
    size = where.size_bytes()
    print(
        f"{layout.events:,} events, {layout.events * layout.threats_per_event:,} threats; "
        f"database {size / 2**30:.2f} GiB; {args.clients} client(s), {args.requests} requests "
        f"a route (plot draw: 20) in {args.rounds} rounds"
        + (f"; secagg serve --http-workers {args.http_workers}" if args.http_workers else "")
    )
    on_pg = where.pg is not None
    print(
        f"{'route':28s} {'p50 ms':>8s} {'p99 ms':>8s} {'p99/ping':>9s} {'server CPU us':>14s}"
        + (f" {'db CPU us':>10s}" if on_pg else "")
        + "  target p99 < 50 ms"
    )
    ping = statistics.quantiles(found["ping"], n=100)[98]
    missed = []
    for name, lat in found.items():
        q = statistics.quantiles(lat, n=100)
        held = name.split()[0] in LISTS
        verdict = ("met" if q[98] * 1000 < TARGET_MS else "MISSED") if held else ""
        if verdict == "MISSED":
            missed.append(name)
        print(
            f"{name:28s} {q[49] * 1000:8.1f} {q[98] * 1000:8.1f} {q[98] / ping:9.1f} "
            f"{cpu_us[name]:14.0f}" + (f" {db_us[name]:10.0f}" if on_pg else "") + f"  {verdict}"
        )
    print("verdict: " + ("met for every list and event page" if not missed else
                         f"MISSED for {', '.join(missed)}"))  # fmt: skip


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
