"""What ``secagent run`` loads, given the update state: the releases active there replace what
the config names. Before anything is loaded, a start during probation is counted; the
``crash_loop_restarts``-th start within ``crash_loop_window_s`` of a switch rolls the release
back to the last known good one (a model that crashes ONNX Runtime never runs a frame again).
An update a restart interrupted before its switch is dropped (its desired state is retained on
the broker, so it starts again from the download)."""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config import load_agent_config
from agent.ota import reports, software
from agent.ota.state import StateFile, UpdateState

log = logging.getLogger(__name__)

CRASH_AT_ENV = "SECAGENT_OTA_CRASH_AT"
"""Fault injection for tests: SIGKILL the agent right after the update state named here was
persisted (downloading, verifying, staged, switching, active)."""


@dataclass(frozen=True)
class Boot:
    config_path: Path
    base_dir: Path | None = None
    """The installed config's folder, when a config release is in use: its relative paths
    (outbox, update state, token) keep their meaning."""
    model: Path | None = None
    rules: Path | None = None
    releases: dict[str, dict[str, Any]] = field(default_factory=dict)


def prepare(config_path: Path, *, data_dir: Path | None = None) -> Boot:
    config, _ = load_agent_config(config_path, data_dir=data_dir)
    if not config.ota.enabled:
        return Boot(config_path)
    states = StateFile(config.ota.state_dir)
    state = states.load()
    changed = _software_rolled_back(state, agent_id=config.agent_id, ota=config.ota)
    changed |= _interrupted(state, agent_id=config.agent_id, ota=config.ota)
    changed |= _crash_loop(state, agent_id=config.agent_id, ota=config.ota)
    if changed:
        states.save(state)
    active = state.active
    return Boot(
        config_path=Path(active["config"].path) if "config" in active else config_path,
        base_dir=config_path.resolve().parent if "config" in active else None,
        model=Path(active["model"].path) if "model" in active else None,
        rules=Path(active["rules"].path) if "rules" in active else None,
        releases={kind: rel.describe() for kind, rel in active.items()},
    )


def _software_rolled_back(state: UpdateState, *, agent_id: str, ota: Any) -> bool:
    """deploy/secagent-launch (or the new release itself) took an agent release back: this is
    the release before it, which says so."""
    if ota.software_prefix is None:
        return False
    taken = software.take_rolled_back(ota.software_prefix)
    if taken is None:
        return False
    release_id, reason = taken
    good = state.last_good.get("agent")
    if good is None:
        state.active.pop("agent", None)
    else:
        state.active["agent"] = good
    state.refused[str(release_id)] = reason
    update = state.update or {}
    state.update = None
    if (state.probation or {}).get("kind") == "agent":
        state.probation = None
    reports.queue(
        state,
        agent_id=agent_id,
        kind="agent",
        release_id=release_id,
        state_name="rolled_back",
        reason=reason,
        rollout_id=update.get("rollout_id"),
        generation=update.get("generation"),
    )
    log.error("agent=%s ota: agent release %d rolled back: %s", agent_id, release_id, reason)
    return True


def _interrupted(state: UpdateState, *, agent_id: str, ota: Any) -> bool:
    update = state.update
    if update is None or update.get("state") == "active":
        return False
    if update.get("kind") == "agent" and update.get("state") == "switching":
        trial = software.read_trial(ota.software_prefix) if ota.software_prefix else None
        if trial is not None and trial.release_id == update.get("release_id"):
            return False  # the new release's first start: it reports itself active when up
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
    if kind == "agent" and ota.software_prefix is not None:
        _software_crash_loop(ota.software_prefix, probation, len(starts))
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


def _software_crash_loop(prefix: Path, probation: dict[str, Any], starts: int) -> None:
    """A new agent release in a crash loop after it reported itself up: ``current`` back to
    the release before, which starts now (same process) and reports the rollback."""
    previous = prefix / "previous"
    if not previous.is_symlink():
        return
    target = os.readlink(previous)
    trial = software.Trial(0, 0, target, software.current(prefix) or "", probation["release_id"])
    software.abandon(prefix, trial, f"crash loop: {starts} starts during probation")
    log.error("ota: agent release %s in a crash loop: back to %s", probation["release_id"], target)
    program = str(prefix / "current" / "bin" / "secagent")
    os.execv(program, [program, *sys.argv[1:]])
