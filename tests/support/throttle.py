"""A real HTTP/1.1 forwarder between an agent and ``secagg serve`` that can pace the responses
(a slow link), and records every exchange: the path, the ``Range`` asked for, the status, the
body's length and how much of it reached the agent. It parses only the heads (GET requests,
responses with a Content-Length, as secagg's OTA routes answer); bodies pass through as they
are."""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import urlsplit

SLICE = 16 * 1024


@dataclass
class Exchange:
    path: str
    range: str | None
    status: int
    length: int | None
    """The response body's Content-Length."""
    delivered: int = 0
    """Body bytes passed on to the client (fewer when it went away)."""


def _read_head(stream: BinaryIO) -> bytes | None:
    """Lines up to the blank one, or None when the peer closed before a head."""
    head = b""
    while True:
        line = stream.readline(65536)
        if not line:
            return None
        head += line
        if line in (b"\r\n", b"\n"):
            return head


def _headers(head: bytes) -> tuple[str, dict[str, str]]:
    first, *lines = head.decode("latin-1").split("\r\n")
    fields = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if sep:
            fields[name.strip().lower()] = value.strip()
    return first, fields


class ThrottlingProxy:
    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.rate_bytes_s: float | None = None
        """Body bytes a second passed on to clients; None: as fast as they come."""
        self.exchanges: list[Exchange] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def targets(self) -> list[Exchange]:
        """The exchanges that fetched release artifacts, in order."""
        with self._lock:
            return [e for e in self.exchanges if "/targets/" in e.path]

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=30)
        except OSError:
            client.close()
            return
        from_client, from_upstream = client.makefile("rb"), upstream.makefile("rb")
        try:
            while not self._stop.is_set():
                request = _read_head(from_client)
                if request is None:
                    return
                request_line, request_headers = _headers(request)
                upstream.sendall(request)
                response = _read_head(from_upstream)
                if response is None:
                    return
                status_line, response_headers = _headers(response)
                length = response_headers.get("content-length")
                exchange = Exchange(
                    path=request_line.split(" ")[1],
                    range=request_headers.get("range"),
                    status=int(status_line.split(" ")[1]),
                    length=int(length) if length is not None else None,
                )
                with self._lock:
                    self.exchanges.append(exchange)
                client.sendall(response)
                self._body(from_upstream, client, exchange)
        except OSError:
            return  # either side went away (an agent killed mid-download)
        finally:
            for closing in (from_client, from_upstream, client, upstream):
                closing.close()

    def _body(self, source: BinaryIO, client: socket.socket, exchange: Exchange) -> None:
        left = exchange.length if exchange.length is not None else -1
        while left != 0:
            chunk = source.read1(SLICE if left < 0 else min(SLICE, left))  # type: ignore[attr-defined]
            if not chunk:
                return
            client.sendall(chunk)
            exchange.delivered += len(chunk)
            left = left - len(chunk) if left > 0 else left
            rate = self.rate_bytes_s
            if rate and self._stop.wait(len(chunk) / rate):  # the pace of a slow link
                return

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        self._thread.join(timeout=10)
