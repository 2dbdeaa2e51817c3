"""``secagg serve`` as a service: MQTT ingest plus the REST API, readiness and watchdog for
systemd, and a clean stop on SIGTERM. ``--role ingest`` runs the ingest alone (an ingest worker,
ready once subscribed, watched on its store writer); ``--role api`` the API with the
once-per-site parts (:mod:`aggregator.roles`).

uvicorn runs on a thread of its own, so the main thread keeps the signals: uvicorn, run on the
main thread, re-raises the SIGTERM it caught once it has stopped, and the process dies from it
before any cleanup (the ingest's last batch, the WAL checkpoint). Here SIGTERM stops the API,
then the ingest stores and acknowledges what it holds, checkpoints and disconnects; the process
exits 0.

- ``READY=1``: the store is migrated (``Ingest`` does it on construction), the ingest runs and
  the API listens.
- ``WATCHDOG=1``: only while the store writer turns its loop and the API answers
  ``GET /api/health`` on its own socket. A broker that is down is not a liveness problem
  (a restart would not bring it back); ``STATUS=`` says so.
"""

from __future__ import annotations

import logging
import re
import secrets
import signal
import socket
import threading
import time
from pathlib import Path
from types import FrameType

import httpx
import uvicorn

from aggregator import roles, store
from aggregator.api import create_app
from aggregator.config import AggregatorConfig
from aggregator.homeassistant import HomeAssistantBridge
from aggregator.http_workers import HttpWorkerError, HttpWorkers, listening_socket
from aggregator.ingest import Ingest
from aggregator.metrics import AggregatorMetrics
from aggregator.ota.controller import OtaController
from aggregator.runlogs import RunLogStore
from appcommon.systemd import Notifier

log = logging.getLogger(__name__)

TURN_S = 0.5
"""How often the main loop checks liveness (signals wake it at once)."""

DEFAULT_STALL_S = 30.0
"""How long the store writer may not turn, or the API not answer, without a watchdog."""

STATUS_EVERY_S = 5.0


def kinds(found: list[str]) -> list[str]:
    """Problems without their durations: what changes the state, not the clock."""
    return [re.sub(r"[0-9]+ s\b", "", problem) for problem in found]


class ServiceError(RuntimeError):
    """The API server could not start (the port is taken, for instance)."""


class Service:
    """One ``secagg serve`` process: the ingest, the API server thread and the main loop."""

    def __init__(
        self,
        config: AggregatorConfig,
        *,
        log_level: str = "info",
        log_format: str = "text",
        notifier: Notifier | None = None,
        role: roles.Role = "all",
        worker: str | None = None,
        http_workers: int = 0,
        config_path: Path | None = None,
    ) -> None:
        self.config = config
        self.role = role
        self.notifier = notifier or Notifier()
        self.stall_s = self.notifier.watchdog_s or DEFAULT_STALL_S
        self.ingest = Ingest(config, role=role, worker=worker)  # migrates the store
        self.serves_api = role != "ingest"
        """An ingest worker serves no API and runs none of the once-per-site parts."""
        self.run_logs: RunLogStore | None = None
        if config.run_logs.enabled and self.serves_api:  # the logs topic, on the ingest's session
            self.run_logs = RunLogStore(config)
            self.ingest.extra_subscriptions.append(self.run_logs.attach(self.ingest.client))
        self.homeassistant: HomeAssistantBridge | None = None
        if config.homeassistant.enabled and self.serves_api:
            self.homeassistant = HomeAssistantBridge(
                config, self._publish_retained, self.ingest.connected
            )
        # secagg's own health probe authenticates with a token made here and kept in memory
        self._probe_token = secrets.token_urlsafe(32)
        app = create_app(
            config,
            liveness=self.ingest.liveness,
            service_token=self._probe_token,
            metrics_of=AggregatorMetrics(config, ingest=self.ingest, run_logs=self.run_logs),
            worker_number=0 if http_workers else None,
        )
        self._read_pools: dict[str, store.ReadPool] = app.state.read_pools
        self.server = uvicorn.Server(
            uvicorn.Config(
                app,
                host=config.api.host,
                port=config.api.port,
                log_level=log_level,
                access_log=log_level == "debug",
                # JSON logs: uvicorn's loggers go through our root handler, not its own
                log_config=None if log_format == "json" else uvicorn.config.LOGGING_CONFIG,
            )
        )
        self.ota: OtaController | None = None
        if config.ota.enabled and self.serves_api:
            self.ota = OtaController(config, self.ingest.client, connected=self.ingest.connected)
        self.http_workers: HttpWorkers | None = None
        sockets: list[socket.socket] | None = None
        if http_workers and self.serves_api:
            if config_path is None:
                raise ServiceError("--http-workers needs the config file's path")
            sockets = [listening_socket(self.server.config)]  # OSError if taken
            self.http_workers = HttpWorkers(
                count=http_workers,
                config_path=config_path,
                sock=sockets[0],
                log_level=log_level,
                log_format=log_format,
            )
        self._sockets = sockets
        self._stop = threading.Event()
        self._api = threading.Thread(
            target=self.server.run, args=(sockets,), name="api", daemon=True
        )
        host = "127.0.0.1" if config.api.host in ("0.0.0.0", "::", "") else config.api.host
        self._probe_url = f"http://{host}:{config.api.port}/api/health"
        self._probe_ok_at = time.monotonic()
        self._next_probe = 0.0

    def _publish_retained(self, topic: str, payload: bytes) -> bool:
        info = self.ingest.client.publish(topic, payload, qos=1, retain=True)
        return info.rc == 0

    # signals ---------------------------------------------------------------------------------
    def stop(self, signum: int | None = None, _frame: FrameType | None = None) -> None:
        if not self._stop.is_set():
            log.info("signal %s: stopping", signum)
            self.notifier.stopping("stopping: storing what is in hand")
        self._stop.set()

    # liveness --------------------------------------------------------------------------------
    def problems(self, now: float) -> list[str]:
        """What is stuck; [] when the writer turns and the API answers."""
        found: list[str] = []
        live = self.ingest.liveness()
        if not live.writer_alive:
            found.append("store writer not running")
        elif live.writer_busy_s is not None and live.writer_busy_s > self.stall_s:
            found.append(f"store writer stalled for {live.writer_busy_s:.0f} s")
        if self.serves_api and now >= self._next_probe:
            self._next_probe = now + min(5.0, self.stall_s / 4)
            try:
                response = httpx.get(
                    self._probe_url,
                    timeout=min(5.0, self.stall_s / 2),
                    headers={"Authorization": f"Bearer {self._probe_token}"},
                )
                # 503 is an answer too: degraded (say, the broker is away) but serving
                if response.status_code in (200, 503):
                    self._probe_ok_at = now
            except httpx.HTTPError as exc:
                log.debug("API probe failed: %s", exc)
        if self.serves_api and now - self._probe_ok_at > self.stall_s:
            found.append(f"API has not answered for {now - self._probe_ok_at:.0f} s")
        return found

    def status_line(self, found: list[str]) -> str:
        s = self.ingest.stats
        broker = "broker connected" if self.ingest.connected.is_set() else "broker NOT connected"
        head = "STUCK: " + "; ".join(found) + " | " if found else ""
        where = (
            f"API on {self.config.api.base_url()}"
            if self.serves_api
            else f"ingest worker {self.ingest.worker}"
        )
        return (
            f"{head}{broker}; {s.stored} stored, {s.duplicates} duplicates, "
            f"{sum(s.rejected.values())} rejected; {where}"
        )

    # the main loop ---------------------------------------------------------------------------
    def run(self) -> None:
        """Serve until SIGTERM/SIGINT, then stop cleanly. Raises :class:`ServiceError` when the
        API could not start."""
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        if self.run_logs is not None:
            self.run_logs.start()
        self.ingest.start()
        if self.ota is not None:
            self.ota.start()
        if self.homeassistant is not None:
            self.homeassistant.start()
        if self.serves_api:
            self._api.start()
        ready = False
        failed: str | None = None
        last_problems: list[str] = []
        next_status = 0.0
        try:
            if self.http_workers is not None:
                self.http_workers.start(self._probe_token)
            while not self._stop.wait(TURN_S):
                now = time.monotonic()
                if self.serves_api and not self._api.is_alive():
                    failed = "the API server stopped" + ("" if ready else " before it listened")
                    break
                live = self.ingest.liveness()
                fatal = live.fatal
                if fatal is None and self.http_workers is not None:
                    fatal = self.http_workers.dead()
                if fatal:  # never half-alive: exit non-zero, systemd restarts us
                    failed = fatal
                    break
                if self.http_workers is not None:
                    self.http_workers.publish(live)
                if not ready and (
                    self.server.started if self.serves_api else self.ingest.connected.is_set()
                ):
                    ready = True
                    self._probe_ok_at = now
                    line = self.status_line([])
                    log.info("ready: %s", line)
                    self.notifier.ready(line)
                    next_status = now + STATUS_EVERY_S
                if not ready:
                    continue
                found = self.problems(now)
                if kinds(found) != kinds(last_problems):  # not again as each second passes
                    if found:
                        log.error("not alive, watchdog pings stop: %s", found)
                    last_problems = found
                    next_status = now
                if not found:
                    self.notifier.watchdog(now=now)
                if now >= next_status:
                    next_status = now + STATUS_EVERY_S
                    self.notifier.status(self.status_line(found))
        except HttpWorkerError as exc:
            failed = str(exc)
        finally:
            self.shutdown()
        if failed is not None:
            raise ServiceError(f"{failed} (see the log above)")
        log.info("stopped cleanly")

    def shutdown(self) -> None:
        """Stop the API (in-flight requests finish), then the ingest: the batch in hand is
        stored and acknowledged, the WAL checkpointed, the broker connection closed."""
        self.server.should_exit = True
        if self.http_workers is not None:  # they finish their requests too
            self.http_workers.stop()
        if self._api.is_alive():
            self._api.join(timeout=10)
        for sock in self._sockets or ():
            sock.close()
        for pool in self._read_pools.values():  # the writer, closing last, removes the WAL
            pool.close()
        if self.ota is not None:
            self.ota.stop()
        if self.homeassistant is not None:
            self.homeassistant.stop()
        self.ingest.stop()
        if self.run_logs is not None:
            self.run_logs.stop()
        self.notifier.close()


__all__ = ["Service", "ServiceError"]
