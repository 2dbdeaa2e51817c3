"""Is the agent alive, and telling systemd (and Docker) so.

The daemon's main loop calls :meth:`Supervisor.tick` on every turn (at least five times a second):

- ``READY=1`` once the model is loaded, the outbox is open (both done before the loop starts)
  and the first broker connection attempt has an outcome, or :data:`CONNECT_WAIT_S` passed.
- ``WATCHDOG=1`` only after :func:`problems` finds nothing wrong: the detection worker is not
  stuck on one inference, the results thread turns, and every camera either delivers frames,
  waits for the model, is legitimately quiet (a folder with nothing new still ticks), is
  reconnecting (``down`` with a reason), or has finished. A stuck thread stops the pings and
  systemd restarts the agent after ``WatchdogSec``.
- ``STATUS=`` lines for ``systemctl status``, and the same state written to a health file
  (``secagent run --health-file``) that a container's health check reads
  (``secagent health``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from appcommon.systemd import Notifier

if TYPE_CHECKING:
    from agent.pipeline import Agent

log = logging.getLogger(__name__)

CONNECT_WAIT_S = 10.0
"""READY=1 comes at the latest this long after start when the broker neither answered nor
failed: threats wait in the outbox meanwhile, which is the agent working as designed."""

DEFAULT_STALL_S = 30.0
"""How long a thread may make no progress before it counts as stuck, without a watchdog
(with one: ``WatchdogSec``)."""

STATUS_EVERY_S = 5.0
HEALTH_EVERY_S = 2.0


def problems(agent: Agent, *, now: float, stall_s: float) -> list[str]:
    """What is stuck in ``agent``'s pipeline; [] when it is alive."""
    found: list[str] = []
    engine = agent.engine
    for name, alive in engine.threads_alive().items():
        if not alive and not agent.stopping:
            found.append(f"{name} thread ended")
    if agent.link.started and not agent.link.publisher_alive() and not agent.stopping:
        died = agent.link.died or "ended"
        found.append(f"outbox-publisher thread died of {died}")
    busy = engine.worker_busy_since
    if busy is not None and now - busy > stall_s:
        found.append(f"detection worker stuck on one inference for {now - busy:.0f} s")
    elif now - engine.worker_beat > stall_s and busy is None:
        found.append(f"detection worker idle loop stalled for {now - engine.worker_beat:.0f} s")
    if now - engine.results_beat > stall_s:
        found.append(f"results thread stalled for {now - engine.results_beat:.0f} s")
    for camera in agent.cameras:
        if camera.done or camera.state == "down":
            continue  # finished, or reconnecting with a reason: not a stuck thread
        quiet_s = now - camera.beat
        if quiet_s > stall_s:
            found.append(f"camera {camera.name}: no frame nor idle tick for {quiet_s:.0f} s")
    return found


def kinds(found: list[str]) -> list[str]:
    """Problems without their durations: what changes the state, not the clock."""
    return [re.sub(r"[0-9]+ s\b", "", problem) for problem in found]


def status_line(agent: Agent, found: Sequence[str]) -> str:
    """One line for ``systemctl status``."""
    states = [c.state for c in agent.cameras]
    frames = sum(c.counters.captured for c in agent.cameras)
    threats = sum(c.counters.threats for c in agent.cameras)
    broker = "broker connected" if agent.link.connected.is_set() else "broker NOT connected"
    head = "STUCK: " + "; ".join(found) + " | " if found else ""
    return (
        f"{head}cameras {states.count('running')} running, {states.count('down')} down, "
        f"{states.count('finished')} finished; {frames} frames, {threats} threats; "
        f"outbox {agent.outbox.depth()}; {broker}; {agent.detector.provider}"
    )


class Supervisor:
    """Readiness, watchdog pings, status lines and the health file of one running agent."""

    def __init__(
        self, agent: Agent, notifier: Notifier, *, health_file: Path | None = None
    ) -> None:
        self.agent = agent
        self.notifier = notifier
        self.health_file = health_file
        self.stall_s = notifier.watchdog_s or DEFAULT_STALL_S
        self.started = time.monotonic()
        self.ready = False
        self._last_problems: list[str] = []
        self._next_status = 0.0
        self._next_health = 0.0

    def tick(self) -> None:
        now = time.monotonic()
        agent = self.agent
        if not self.ready and (
            agent.link.attempted.is_set() or now - self.started >= CONNECT_WAIT_S
        ):
            self.ready = True
            line = status_line(agent, [])
            log.info("agent=%s ready: %s", agent.agent_id, line)
            self.notifier.ready(line)
            self._next_status = now + STATUS_EVERY_S
        found = problems(agent, now=now, stall_s=self.stall_s)
        if kinds(found) != kinds(self._last_problems):  # not again as each second passes
            if found:
                log.error("agent=%s not alive, watchdog pings stop: %s", agent.agent_id, found)
            elif self._last_problems:
                log.warning("agent=%s alive again", agent.agent_id)
            self._last_problems = found
            self._next_status = now  # say it at once
        if self.ready and not found:
            self.notifier.watchdog(now=now)
        if self.ready and now >= self._next_status:
            self._next_status = now + STATUS_EVERY_S
            self.notifier.status(status_line(agent, found))
        if self.health_file is not None and now >= self._next_health:
            self._next_health = now + HEALTH_EVERY_S
            write_health(
                self.health_file,
                {
                    "alive": not found,
                    "ready": self.ready,
                    "problems": found,
                    "broker_connected": agent.link.connected.is_set(),
                    "outbox_depth": agent.outbox.depth(),
                    "cameras": {c.name: c.state for c in agent.cameras},
                    "pid": os.getpid(),
                    "at": time.time(),
                },
            )


def write_health(path: Path, state: dict[str, object]) -> None:
    """Replace the health file atomically (a reader never sees half of it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state), encoding="utf-8")
    os.replace(tmp, path)


class HealthError(Exception):
    """The health file says the agent is not healthy, is stale, or cannot be read."""


def check_health(path: Path, *, max_age_s: float, require_broker: bool) -> dict[str, object]:
    """The health file's state when it is fresh and healthy; else :class:`HealthError` saying
    why (what ``secagent health`` prints)."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        age_s = time.time() - path.stat().st_mtime
    except (OSError, ValueError) as exc:
        raise HealthError(f"{path}: cannot read the health file: {exc}") from exc
    if not isinstance(state, dict):
        raise HealthError(f"{path}: not a health file")
    if age_s > max_age_s:
        raise HealthError(f"{path}: last written {age_s:.0f} s ago (the agent is stuck or gone)")
    if not state.get("alive"):
        raise HealthError(f"not alive: {'; '.join(state.get('problems') or [])}")
    if not state.get("ready"):
        raise HealthError("starting: not ready yet")
    if require_broker and not state.get("broker_connected"):
        raise HealthError("not connected to the broker (threats wait in the outbox)")
    return state


__all__ = [
    "CONNECT_WAIT_S",
    "DEFAULT_STALL_S",
    "HealthError",
    "Supervisor",
    "check_health",
    "problems",
    "status_line",
    "write_health",
]
