"""Downloads for python-tuf's ngclient that resume and keep a deadline.

ngclient's own fetcher neither resumes a dropped download (urllib3 raises ``ProtocolError``
when the connection ends early) nor enforces an overall deadline (a server trickling a byte
just under the socket timeout is accepted for ever). :class:`ResumableFetcher`:

- sends the agent's token (``Authorization: Bearer <agent_id>:<token>``);
- when a response ends early or the connection drops, asks again with ``Range: bytes=N-``
  and goes on from byte N (at most ``attempts`` connections in all); a server that answers a
  range with the whole file is read from the start of what is missing;
- :meth:`ResumableFetcher.stream` starts at a given byte: a release download kept on disk by
  an earlier run of the agent goes on from there (:mod:`agent.ota.partial`);
- raises :class:`tuf.api.exceptions.SlowRetrievalError` once ``deadline_s`` has passed since
  the download started, whatever the pace;
- ngclient itself caps the length at what the signed metadata says, and checks the hash.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import urllib3
from tuf.api import exceptions
from tuf.ngclient.fetcher import FetcherInterface

log = logging.getLogger(__name__)

CHUNK = 256 * 1024


class ResumableFetcher(FetcherInterface):
    def __init__(
        self,
        *,
        authorization: str | None,
        socket_timeout_s: float,
        deadline_s: float,
        attempts: int,
        ca_file: str | None = None,
    ) -> None:
        self.headers = {"User-Agent": "secagent-ota"}
        if authorization:
            self.headers["Authorization"] = authorization
        self.socket_timeout_s = socket_timeout_s
        self.deadline_s = deadline_s
        self.attempts = attempts
        self.pool = urllib3.PoolManager(
            ca_certs=ca_file, retries=False, timeout=urllib3.Timeout(socket_timeout_s)
        )
        self.resumes = 0
        """Downloads resumed with a Range request (all downloads of this fetcher)."""

    def _fetch(self, url: str) -> Iterator[bytes]:
        return self.stream(url)

    def stream(self, url: str, *, offset: int = 0) -> Iterator[bytes]:
        """The bytes of ``url`` from byte ``offset`` on (``Range: bytes=offset-`` when not 0:
        a download kept on disk by an earlier run goes on). The request is made now, so an
        HTTP error raises here; the deadline counts from now."""
        started = time.monotonic()
        response = self._request(url, offset=offset, started=started)
        return self._chunks(url, response, started=started, offset=offset)

    def _left_s(self, started: float) -> float:
        left = self.deadline_s - (time.monotonic() - started)
        if left <= 0:
            raise exceptions.SlowRetrievalError(
                f"deadline of {self.deadline_s:g} s passed before the download finished"
            )
        return left

    def _request(
        self, url: str, *, offset: int, started: float
    ) -> urllib3.response.BaseHTTPResponse:
        headers = dict(self.headers)
        if offset:
            headers["Range"] = f"bytes={offset}-"
        timeout = urllib3.Timeout(
            connect=min(self.socket_timeout_s, self._left_s(started)),
            read=min(self.socket_timeout_s, self._left_s(started)),
        )
        try:
            response = self.pool.request(
                "GET", url, headers=headers, preload_content=False, timeout=timeout
            )
        except urllib3.exceptions.TimeoutError as exc:
            raise exceptions.SlowRetrievalError(f"{url}: no answer: {exc}") from exc
        except urllib3.exceptions.HTTPError as exc:
            raise exceptions.DownloadError(f"{url}: {exc}") from exc
        if response.status >= 400:
            response.close()
            raise exceptions.DownloadHTTPError(f"{url}: HTTP {response.status}", response.status)
        return response

    def _chunks(
        self, url: str, response: urllib3.response.BaseHTTPResponse, *, started: float, offset: int
    ) -> Iterator[bytes]:
        received = offset
        attempt = 1
        while True:
            skip = received if response.status == 200 and received else 0  # range ignored
            try:
                for chunk in response.stream(CHUNK):
                    self._left_s(started)
                    if skip:
                        drop = min(skip, len(chunk))
                        chunk, skip = chunk[drop:], skip - drop
                        if not chunk:
                            continue
                    received += len(chunk)
                    yield chunk
                complete = True
            except (urllib3.exceptions.ProtocolError, urllib3.exceptions.ReadTimeoutError) as exc:
                complete = False
                reason = str(exc)
            finally:
                response.release_conn()
            expected = _expected_total(response, received)
            if complete and (expected is None or received >= expected):
                return
            if complete:
                reason = f"ended at byte {received} of {expected}"
            attempt += 1
            if attempt > self.attempts:
                raise exceptions.DownloadError(
                    f"{url}: incomplete after {self.attempts} attempts ({reason})"
                )
            self.resumes += 1
            log.warning("%s: %s; resuming at byte %d (attempt %d)", url, reason, received, attempt)
            response = self._request(url, offset=received, started=started)


def _expected_total(response: urllib3.response.BaseHTTPResponse, received: int) -> int | None:
    """The file's full length, from Content-Range (206) or Content-Length (200)."""
    content_range = response.headers.get("Content-Range")
    if content_range and "/" in content_range:
        total = content_range.rsplit("/", 1)[1]
        return int(total) if total.isdigit() else None
    length = response.headers.get("Content-Length")
    return int(length) if length and length.isdigit() and response.status == 200 else None
