"""Prometheus metrics of the agent on a small HTTP listener (``metrics.enabled``; off by
default, and on loopback unless told otherwise). Read at scrape time from what the agent
already counts, plus a histogram of inference times fed by the detection worker:

- ``secagent_frames_total{camera, outcome}``: captured, rejected, no_motion, dropped (the
  queue was full), detected, failed;
- ``secagent_camera_fps{camera}`` (frames captured a second since the previous scrape),
  ``secagent_motion_fraction{camera}`` (valid frames with motion), ``secagent_camera_up``;
- ``secagent_inference_seconds`` (histogram, per frame), ``secagent_inference_errors_total``;
- ``secagent_outbox_messages``, ``secagent_outbox_bytes`` (its files on disk),
  ``secagent_outbox_dropped_total``; ``secagent_broker_connected``;
- ``secagent_active_release_info{kind, release_id, sha256}`` (1 for what is active).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from agent.pipeline import Agent

log = logging.getLogger(__name__)

INFERENCE_BUCKETS_S = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class MetricsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(False, description="serve Prometheus metrics over HTTP")
    host: str = Field(
        "127.0.0.1",
        min_length=1,
        description="address the metrics listener binds (loopback: only this host scrapes)",
    )
    port: int = Field(9464, ge=0, le=65535, description="metrics port (0: any free port)")


class AgentCollector:
    """A Prometheus collector over a running :class:`~agent.pipeline.Agent`."""

    def __init__(self, agent: Agent) -> None:
        from prometheus_client import Histogram
        from prometheus_client.registry import CollectorRegistry

        self.agent = agent
        self.registry = CollectorRegistry()
        self.inference = Histogram(
            "secagent_inference_seconds",
            "time of one frame's inference (a batch's time over its frames)",
            buckets=INFERENCE_BUCKETS_S,
            registry=self.registry,
        )
        self._last: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()
        self.registry.register(self)

    def observe_inference_ms(self, ms: float) -> None:
        self.inference.observe(ms / 1000.0)

    def _fps(self, camera: str, captured: int, now: float) -> float:
        with self._lock:
            before = self._last.get(camera)
            self._last[camera] = (now, captured)
        if before is None or now <= before[0] or captured < before[1]:
            return 0.0
        return (captured - before[1]) / (now - before[0])

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        agent = self.agent
        now = time.monotonic()
        frames = CounterMetricFamily(
            "secagent_frames", "frames by outcome", labels=["camera", "outcome"]
        )
        fps = GaugeMetricFamily(
            "secagent_camera_fps", "frames captured a second", labels=["camera"]
        )
        motion = GaugeMetricFamily(
            "secagent_motion_fraction", "valid frames with motion", labels=["camera"]
        )
        up = GaugeMetricFamily("secagent_camera_up", "1 while the camera runs", labels=["camera"])
        for camera in agent.cameras:
            c = camera.counters.as_dict()
            for outcome in ("captured", "rejected", "no_motion", "dropped", "detected", "failed"):
                frames.add_metric([camera.name, outcome], c.get(outcome, 0))
            fps.add_metric([camera.name], round(self._fps(camera.name, c["captured"], now), 3))
            valid = c["captured"] - c["rejected"]
            motion.add_metric([camera.name], 0.0 if valid <= 0 else 1 - c["no_motion"] / valid)
            up.add_metric([camera.name], 1.0 if camera.state == "running" else 0.0)
        yield from (frames, fps, motion, up)
        errors = CounterMetricFamily("secagent_inference_errors", "inferences that raised an error")
        errors.add_metric([], agent.engine.inference_errors)
        yield errors
        depth = GaugeMetricFamily("secagent_outbox_messages", "threat messages waiting")
        depth.add_metric([], agent.outbox.depth())
        size = GaugeMetricFamily("secagent_outbox_bytes", "the outbox's files on disk")
        size.add_metric([], _files_bytes(agent.config.outbox.path))
        dropped = CounterMetricFamily(
            "secagent_outbox_dropped", "messages dropped to keep the outbox's bound"
        )
        dropped.add_metric([], agent.outbox.dropped())
        broker = GaugeMetricFamily("secagent_broker_connected", "1 while connected to the broker")
        broker.add_metric([], 1.0 if agent.link.connected.is_set() else 0.0)
        yield from (depth, size, dropped, broker)
        release = GaugeMetricFamily(
            "secagent_active_release_info",
            "what is active, by kind (release_id empty: as installed)",
            labels=["kind", "release_id", "sha256"],
        )
        active = agent.active
        versions = {
            "model": active.versions.model_sha256,
            "rules": active.versions.rules_sha256,
            "config": active.versions.config_sha256,
        }
        for kind, sha in versions.items():
            rel = active.releases.get(kind) or {}
            release.add_metric([kind, str(rel.get("release_id") or ""), sha], 1.0)
        yield release


def _files_bytes(path: Path) -> int:
    total = 0
    for suffix in ("", "-wal", "-journal"):
        try:
            total += path.with_name(path.name + suffix).stat().st_size
        except OSError:
            continue
    return total


class MetricsServer:
    """The listener: started with the agent, stopped at its end."""

    def __init__(self, agent: Agent, config: MetricsConfig) -> None:
        self.collector = AgentCollector(agent)
        self.config = config
        self._server: Any = None
        self.port: int | None = None

    def start(self) -> None:
        from prometheus_client import start_http_server

        self._server, _thread = start_http_server(
            self.config.port, addr=self.config.host, registry=self.collector.registry
        )
        self.port = int(self._server.server_port)
        log.info("metrics on http://%s:%d/metrics", self.config.host, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
