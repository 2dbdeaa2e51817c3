"""Prometheus metrics of secagg (``GET /metrics``), each app with its own registry:

- ``secagg_messages_received_total``, ``..._stored_total``, ``..._duplicate_total``,
  ``secagg_messages_rejected_total{reason}`` (since this process started),
  ``secagg_ingest_batches_total``, ``secagg_ingest_failed_batches_total``,
  ``secagg_ingest_batch_seconds`` (histogram: one committed batch);
- ``secagg_broker_connected``, ``secagg_events_open``, ``secagg_events``,
  ``secagg_notifications{state}``, ``secagg_agents{state}``, ``secagg_agent_outbox_messages``
  and ``secagg_agent_outbox_oldest_seconds`` (the threat messages waiting in the agents'
  outboxes and the age of the oldest, as their last statuses said: the backlog that more
  ingest workers drain; read from the store at scrape);
- ``secagg_run_log_lines_stored_total``, ``secagg_run_log_lines_dropped_total{reason}``;
- ``secagg_api_request_seconds{method, route, status}`` (histogram, by route template).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import CollectorRegistry
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aggregator import store
from aggregator.config import AggregatorConfig

if TYPE_CHECKING:
    from aggregator.ingest import Ingest
    from aggregator.runlogs import RunLogStore

API_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
BATCH_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0)


class AggregatorMetrics:
    """The registry of one app, with the ingest and run-log store beside it when there are."""

    def __init__(
        self,
        config: AggregatorConfig,
        *,
        ingest: Ingest | None = None,
        run_logs: RunLogStore | None = None,
    ) -> None:
        self.config = config
        self.ingest = ingest
        self.run_logs = run_logs
        self.registry = CollectorRegistry()
        self.api = Histogram(
            "secagg_api_request_seconds",
            "time to answer an API request or page",
            ["method", "route", "status"],
            buckets=API_BUCKETS_S,
            registry=self.registry,
        )
        self.batches = Histogram(
            "secagg_ingest_batch_seconds",
            "time to store, commit and acknowledge one batch of messages",
            buckets=BATCH_BUCKETS_S,
            registry=self.registry,
        )
        if ingest is not None:
            ingest.on_batch = lambda _size, seconds: self.batches.observe(seconds)
        self.registry.register(self)

    def collect(self) -> Iterator[Any]:
        if self.ingest is not None:
            s = self.ingest.stats
            for name, value, text in (
                ("received", s.received, "messages received"),
                ("stored", s.stored, "threat messages stored"),
                ("duplicate", s.duplicates, "messages already stored (acknowledged again)"),
                ("status", s.statuses, "status messages stored"),
            ):
                family = CounterMetricFamily(f"secagg_messages_{name}", text)
                family.add_metric([], value)
                yield family
            rejected = CounterMetricFamily(
                "secagg_messages_rejected", "messages refused, by reason", labels=["reason"]
            )
            for reason, count in sorted(s.rejected.items()):
                rejected.add_metric([reason], count)
            yield rejected
            for name, value in (("batches", s.batches), ("failed_batches", s.failed_batches)):
                family = CounterMetricFamily(f"secagg_ingest_{name}", f"store writer {name}")
                family.add_metric([], value)
                yield family
            broker = GaugeMetricFamily("secagg_broker_connected", "1 while subscribed")
            broker.add_metric([], 1.0 if self.ingest.connected.is_set() else 0.0)
            yield broker
        if self.run_logs is not None:
            stored = CounterMetricFamily("secagg_run_log_lines_stored", "log lines stored")
            stored.add_metric([], self.run_logs.stored)
            yield stored
            dropped = CounterMetricFamily(
                "secagg_run_log_lines_dropped", "log lines not stored", labels=["reason"]
            )
            for reason, count in sorted(self.run_logs.dropped.items()):
                dropped.add_metric([reason], count)
            yield dropped
        yield from self._from_store()

    def _from_store(self) -> Iterator[Any]:
        try:
            conn = store.connect(self.config.store.target, readonly=True)
        except store.StoreUnavailable:
            return
        try:
            counts = store.counters.row_counts(conn)
            notifications = store.notifications.count_by_state(conn)
            agents: dict[str, int] = {}
            waiting, oldest = 0, 0.0
            for agent in store.agents.list_agents(conn):
                agents[agent.state] = agents.get(agent.state, 0) + 1
                waiting += agent.outbox_depth
                oldest = max(oldest, agent.outbox_oldest_age_s)
        except store.DatabaseError:
            return
        finally:
            conn.close()
        for name, value, text in (
            ("secagg_events_open", counts.open_events, "threat events still open"),
            ("secagg_events", counts.events, "threat events stored"),
            ("secagg_threats", counts.threats, "threats stored"),
        ):
            family = GaugeMetricFamily(name, text)
            family.add_metric([], value)
            yield family
        by_state = GaugeMetricFamily(
            "secagg_notifications", "notifications by state", labels=["state"]
        )
        for state in ("pending", "sent", "failed", "suppressed"):
            by_state.add_metric([state], notifications.get(state, 0))
        yield by_state
        agent_states = GaugeMetricFamily("secagg_agents", "agents by state", labels=["state"])
        for state in ("online", "offline"):
            agent_states.add_metric([state], agents.get(state, 0))
        yield agent_states
        for name, number, text in (
            ("messages", waiting, "threat messages waiting in the agents' outboxes"),
            ("oldest_seconds", oldest, "age of the oldest message waiting in an agent's outbox"),
        ):
            family = GaugeMetricFamily(f"secagg_agent_outbox_{name}", text)
            family.add_metric([], number)
            yield family


class TimedRequests:
    """ASGI middleware: time every request into ``secagg_api_request_seconds``, labelled by its
    route's template (not its path: ids would make a series each). A plain ASGI wrapper:
    Starlette's ``BaseHTTPMiddleware`` (``app.middleware("http")``) runs each request in a task
    of its own and streams the answer through a queue, which cost about as much as the
    cheaper routes themselves. With several processes on the port (``--http-workers``), it also
    says which one answered (``X-Secagg-Worker``)."""

    def __init__(
        self, app: ASGIApp, *, metrics: AggregatorMetrics, worker_number: int | None = None
    ) -> None:
        self.app = app
        self.histogram = metrics.api
        self.worker: list[tuple[bytes, bytes]] = (
            [] if worker_number is None else [(b"x-secagg-worker", str(worker_number).encode())]
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if self.worker:
                    message = {**message, "headers": [*message.get("headers", ()), *self.worker]}
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            template = getattr(scope.get("route"), "path", None) or "unmatched"
            self.histogram.labels(scope["method"], template, str(status)).observe(
                time.perf_counter() - start
            )
