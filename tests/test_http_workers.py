"""``secagg serve --http-workers N``: N more processes answer the API's port, as real processes
over real HTTP. Every process answers; a login made in one is a session in the others, with
its CSRF token; a write through one (a review, a token, a logout) is what the others read
next; ``/api/health`` reports the service's broker connection whichever process answers; the
workers stop with the service, however it stops, and the service does not outlive a worker."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from aggregator import store
from aggregator.auth import accounts
from aggregator.auth.roles import Role
from aggregator.http_workers import WORKER_HEADER, HttpWorkers, _Child, listening_socket
from aggregator.liveness import Liveness
from demo.broker import Mosquitto, free_port
from tests.support import wait_for
from tests.support.auth import HEADERS
from tests.support.ingest import make_config, payload, store_payloads
from tests.support.processes import BIN, write_aggregator_config

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

PASSWORD = "ann-password-1"
WORKERS = 2


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@contextmanager
def service(work: Path, broker: Mosquitto) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``secagg serve --http-workers 2`` on a store with three events and an operator (ann),
    yielded once every process answers."""
    config_path, api = write_aggregator_config(work, broker)
    config = make_config(work)  # the same store and snapshots as config_path's
    store_payloads(config, [payload(at_s=0), payload(at_s=30), payload(at_s=60)])
    conn = store.connect(config.store.path)
    try:
        with store.transaction(conn):
            accounts.add_user(conn, name="ann", role=Role.operator, password=PASSWORD)
    finally:
        conn.close()
    with (work / "secagg.log").open("wb") as log:
        proc = subprocess.Popen(
            [str(BIN / "secagg"), "serve", "--config", str(config_path), "--http-workers", "2"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=work,
        )
    try:
        for worker in range(WORKERS + 1):
            on(api, worker, "GET", "/api/ping", proc=proc, timeout_s=90)
        yield proc, api
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def on(
    api: str,
    worker: int,
    method: str,
    path: str,
    *,
    proc: subprocess.Popen[bytes] | None = None,
    timeout_s: float = 30,
    **kwargs: Any,
) -> httpx.Response:
    """A request answered by process ``worker`` (0: the service): each try on a new connection,
    which the kernel hands to whichever process accepts it. Only GETs are tried again; an
    unsafe request goes through ``via`` below."""
    assert method == "GET"

    def attempt() -> httpx.Response | None:
        assert proc is None or proc.poll() is None, f"secagg exited with {proc.returncode}"
        try:
            with httpx.Client(base_url=api, timeout=5) as client:
                response = client.request(method, path, **kwargs)
        except httpx.TransportError:
            return None
        return response if response.headers.get(WORKER_HEADER) == str(worker) else None

    return wait_for(attempt, timeout_s=timeout_s, what=f"process {worker} to answer {path}")


@contextmanager
def via(api: str, worker: int) -> Iterator[httpx.Client]:
    """A keep-alive client whose connection process ``worker`` took (its requests stay there)."""

    def attempt() -> httpx.Client | None:
        client = httpx.Client(base_url=api, timeout=10)
        if client.get("/login").headers.get(WORKER_HEADER) == str(worker):
            return client
        client.close()
        return None

    client = wait_for(attempt, timeout_s=30, what=f"a connection to process {worker}")
    try:
        yield client
    finally:
        client.close()


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf-token" content="([^"]+)"', html)
    assert found
    return found.group(1)


def test_every_process_answers_and_they_share_sessions_tokens_and_writes(
    tmp_path: Path,
) -> None:
    with Mosquitto(tmp_path / "broker") as broker, service(tmp_path, broker) as (proc, api):
        workers = children(proc.pid)
        assert len(workers) == WORKERS
        # a login through process 1 is a session in process 2 and in the service
        with via(api, 1) as one:
            login = one.post(
                "/login", data={"username": "ann", "password": PASSWORD}, follow_redirects=False
            )
            assert login.status_code == 303 and login.headers[WORKER_HEADER] == "1"
        cookies = dict(login.cookies)
        page = on(api, 2, "GET", "/", cookies=cookies)
        assert page.status_code == 200 and 'data-event-id="3"' in page.text
        csrf = csrf_of(page.text)
        with via(api, 0) as zero:
            refused = zero.post("/api/events/review", json={"event_ids": [1]}, cookies=cookies)
            assert refused.status_code == 403 and refused.headers[WORKER_HEADER] == "0"
            marked = zero.post(
                "/api/events/review",
                json={"event_ids": [1]},
                cookies=cookies,
                headers={"X-CSRF-Token": csrf},
            )
            assert marked.status_code == 200, marked.text
        # the review written through the service is what process 2 reads next
        reviewed = on(api, 2, "GET", "/api/events?reviewed=true", headers=HEADERS).json()
        assert [(e["id"], e["reviewed_by"]) for e in reviewed] == [(1, "ann")]
        # a token made through process 1 works on process 2; revoked, on none
        with via(api, 1) as one:
            made = one.post("/api/tokens", json={"name": "ci", "role": "viewer"}, headers=HEADERS)
            assert made.status_code == 201, made.text
        token = {"Authorization": f"Bearer {made.json()['token']}"}
        assert on(api, 2, "GET", "/api/events", headers=token).status_code == 200
        with via(api, 0) as zero:
            gone = zero.delete(f"/api/tokens/{made.json()['id']}", headers=HEADERS)
            assert gone.status_code == 204, gone.text
        assert on(api, 2, "GET", "/api/events", headers=token).status_code == 401
        # a logout through process 2 ends the session in process 1
        with via(api, 2) as two:
            out = two.post("/logout", data={"csrf": csrf}, cookies=cookies, follow_redirects=False)
            assert out.status_code == 303
        assert on(api, 1, "GET", "/api/events", cookies=cookies).status_code == 401
        # health: the service's broker connection, whichever process answers
        for worker in range(WORKERS + 1):
            assert on(api, worker, "GET", "/api/health", headers=HEADERS).json()["broker_connected"]
        broker.stop()
        for worker in range(WORKERS + 1):

            def degraded(worker: int = worker) -> bool:
                health = on(api, worker, "GET", "/api/health", headers=HEADERS)
                return health.status_code == 503 and "broker not connected" in health.text

            wait_for(degraded, timeout_s=30, what=f"process {worker} to report the broker down")
        # SIGTERM to the service alone: it stops its workers and exits 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert not any(alive(pid) for pid in workers)


def test_the_workers_stop_when_the_service_is_killed(tmp_path: Path) -> None:
    with Mosquitto(tmp_path / "broker") as broker, service(tmp_path, broker) as (proc, api):
        workers = children(proc.pid)
        proc.kill()  # no goodbye: the workers see their stdin close
        proc.wait()
        wait_for(
            lambda: not any(alive(pid) for pid in workers),
            timeout_s=30,
            what="the HTTP workers to stop",
        )
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{api}/api/ping", timeout=2)


def test_the_service_stops_when_a_worker_dies(tmp_path: Path) -> None:
    with Mosquitto(tmp_path / "broker") as broker, service(tmp_path, broker) as (proc, _):
        first, second = children(proc.pid)
        os.kill(first, signal.SIGKILL)
        assert proc.wait(30) != 0  # and systemd restarts the whole service
        wait_for(lambda: not alive(second), timeout_s=30, what="the other worker to stop")
        assert "HTTP worker 1" in (tmp_path / "secagg.log").read_text()


def test_connections_accepted_from_the_shared_socket_send_without_delay() -> None:
    """asyncio turns Nagle off (``TCP_NODELAY``) only on connections accepted from a socket
    that says it is TCP; uvicorn's own socket says protocol 0. Without it an answer written in
    two parts waited 40 ms for the client's delayed ACK (measured: p50 44 ms for one event)."""
    config = uvicorn.Config(app="unused:app", host="127.0.0.1", port=free_port())
    sock = listening_socket(config)
    nodelay: list[int] = []

    async def main() -> None:
        seen = asyncio.Event()

        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            conn = writer.get_extra_info("socket")
            nodelay.append(conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            seen.set()
            writer.close()

        server = await asyncio.start_server(accepted, sock=sock)
        async with server:
            _, writer = await asyncio.open_connection("127.0.0.1", config.port)
            await seen.wait()
            writer.close()

    asyncio.run(asyncio.wait_for(main(), timeout=10))
    assert nodelay and nodelay[0] != 0
    plain = uvicorn.Config(app="unused:app", port=free_port()).bind_socket()
    assert plain.proto == 0  # why it matters
    plain.close()


def test_a_worker_that_does_not_read_never_blocks_the_service() -> None:
    """The liveness goes down a non-blocking pipe, a line at a time: a worker that stopped
    reading (here a process that never reads) misses states; the service's loop goes on."""
    reader = subprocess.Popen(["sleep", "60"], stdin=subprocess.PIPE)
    sock = socket.socket()
    try:
        assert reader.stdin is not None
        os.set_blocking(reader.stdin.fileno(), False)
        workers = HttpWorkers(
            count=1, config_path=Path("unused"), sock=sock, log_level="info",
            log_format="text",
        )  # fmt: skip
        workers._children.append(_Child(1, reader, reader.stdin))
        long = Liveness(broker_connected=True, writer_alive=True, writer_died="x" * 100_000)
        began = time.monotonic()
        for _ in range(2000):  # 2000 lines of about 700 bytes: far more than a pipe holds
            workers.publish(long)
        assert time.monotonic() - began < 10
        assert workers.dead() is None
    finally:
        reader.kill()
        reader.wait()
        sock.close()
