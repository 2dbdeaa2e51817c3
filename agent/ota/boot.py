"""What ``secagent run`` loads, given the update state: the releases active there replace what
the config names. Before anything is loaded, a start during probation is counted; the
``crash_loop_restarts``-th start within ``crash_loop_window_s`` of a switch rolls the release
back to the last known good one (a model that crashes ONNX Runtime never runs a frame again).
An update a restart interrupted before its switch is dropped (its desired state is retained on
the broker, so it starts again from the download)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config import load_agent_config
from agent.ota import reports
from agent.ota.state import StateFile, UpdateState

log = logging.getLogger(__name__)

CRASH_AT_ENV = "SECAGENT_OTA_CRASH_AT"
"""Fault injection for tests: SIGKILL the agent right after the update state named here was
persisted (downloading, verifying, staged, switching, active)."""


@dataclass(frozen=True)
class Boot:
    config_path: Path
    model: Path | None = None
    rules: Path | None = None
    releases: dict[str, dict[str, Any]] = field(default_factory=dict)


def prepare(config_path: Path, *, data_dir: Path | None = None) -> Boot:
    config, _ = load_agent_config(config_path, data_dir=data_dir)
    if not config.ota.enabled:
        return Boot(config_path)
    states = StateFile(config.ota.state_dir)
    state = states.load()
    changed = _interrupted(state, agent_id=config.agent_id)
    changed |= _crash_loop(state, agent_id=config.agent_id, ota=config.ota)
    if changed:
        states.save(state)
    active = state.active
    return Boot(
        config_path=Path(active["config"].path) if "config" in active else config_path,
        model=Path(active["model"].path) if "model" in active else None,
        rules=Path(active["rules"].path) if "rules" in active else None,
        releases={kind: rel.describe() for kind, rel in active.items()},
    )


def _interrupted(state: UpdateState, *, agent_id: str) -> bool:
    update = state.update
    if update is None or update.get("state") == "active":
        return False
    log.warning(
        "agent=%s ota: the update to %s release %s was interrupted at %s by a restart; "
        "starting it again",
        agent_id,
        update.get("kind"),
        update.get("release_id"),
        update.get("state"),
    )
    state.update = None
    return True


def _crash_loop(state: UpdateState, *, agent_id: str, ota: Any) -> bool:
    probation = state.probation
    if probation is None:
        return False
    now = time.time()
    starts = [t for t in probation.get("starts", []) if now - t <= ota.crash_loop_window_s]
    starts.append(now)
    probation["starts"] = starts
    if len(starts) < ota.crash_loop_restarts:
        log.warning(
            "agent=%s ota: start %d of %d allowed within %.0f s during the probation of %s "
            "release %s",
            agent_id,
            len(starts),
            ota.crash_loop_restarts,
            ota.crash_loop_window_s,
            probation["kind"],
            probation["release_id"],
        )
        return True
    kind = probation["kind"]
    reason = f"crash loop: {len(starts)} starts within {ota.crash_loop_window_s:g} s of the switch"
    good = state.last_good.get(kind)
    if good is None:
        state.active.pop(kind, None)
    else:
        state.active[kind] = good
    state.refused[str(probation["release_id"])] = reason
    state.probation = None
    reports.queue(
        state,
        agent_id=agent_id,
        kind=kind,
        release_id=probation["release_id"],
        state_name="rolled_back",
        reason=reason,
        rollout_id=probation.get("rollout_id"),
        generation=probation.get("generation"),
    )
    log.error(
        "agent=%s ota: %s release %s rolled back: %s",
        agent_id,
        kind,
        probation["release_id"],
        reason,
    )
    return True
