"""Staged rollouts: a release pushed to agents group by group.

- The agents are named (``--agents``) or chosen by a label their config in force carries
  (``ota.labels`` in secagent.yaml, which each status message delivers); they are split into
  groups by ``--groups 1,2,*`` (sizes in order, ``*`` the rest).
- Group after group, each agent's desired state gets the release. An agent *succeeds* once it
  reports the release ``committed`` (its probation passed), or, in shadow mode, once it reports
  shadow figures for it; it *fails* when it reports it ``failed`` or ``rolled_back``.
- When the group's succeeded share reaches ``success_threshold`` the next group starts; when
  all groups have, the rollout is ``completed``.
- When the failed share of the agents started so far reaches ``error_threshold``, the rollout
  ``halted``: the failed agents get back the desired state they had before, and the agents
  that succeeded keep the release (healthy groups are left as they are).
- ``pause`` / ``resume`` hold and restart the progression; ``abort`` gives every started agent
  its previous desired state back; ``promote`` turns a shadow rollout into an active one (from
  the first group again), or, on an active rollout, starts every remaining group at once.

The controller in ``secagg serve`` calls :func:`advance` every ``ota.refresh_interval_s``;
the CLI and the API only change rows, so every decision is made in one place.
"""

from __future__ import annotations

import math
from typing import Any

from aggregator import store
from aggregator.store.releases import ReleaseRow
from aggregator.store.rollouts import RolloutAgentRow, RolloutRow

ACTIVE_STATES = ("running", "paused")


class RolloutError(ValueError):
    """A rollout cannot be created or changed as asked."""


def split_groups(agents: list[str], spec: str) -> list[list[str]]:
    """``"1,2,*"`` -> [[a], [b, c], [the rest]]; every agent in exactly one group."""
    sizes = [s.strip() for s in spec.split(",") if s.strip()]
    if not sizes:
        raise RolloutError("--groups is empty")
    groups: list[list[str]] = []
    rest = list(agents)
    for size in sizes:
        if not rest:
            break
        if size == "*":
            groups.append(rest)
            rest = []
            break
        if size.endswith("%"):
            n = max(1, math.ceil(len(agents) * float(size[:-1]) / 100))
        elif size.isdigit() and int(size) > 0:
            n = int(size)
        else:
            raise RolloutError(f"--groups: {size!r} is not a size (N, N% or *)")
        groups.append(rest[:n])
        rest = rest[n:]
    if rest:
        groups.append(rest)
    return groups


def agents_with_label(conn: store.Connection, label: str) -> list[str]:
    """Agents whose config in force lists ``label`` under ``ota.labels``."""
    found = []
    for agent in store.agents.list_agents(conn):
        sha = (agent.versions or {}).get("config_sha256")
        doc = store.configs.get(conn, sha) if sha else None
        labels = ((doc or {}).get("ota") or {}).get("labels") or []
        if label in labels:
            found.append(agent.agent_id)
    return sorted(found)


def desired_entry(release: ReleaseRow, *, mode: str, shadow_fraction: float) -> dict[str, Any]:
    return {
        "kind": release.kind,
        "release_id": release.id,
        "target_path": release.target_path,
        "sha256": release.sha256,
        "length": release.size,
        "mode": mode,
        "shadow_fraction": shadow_fraction,
    }


def _doc(conn: store.Connection, agent_id: str) -> dict[str, Any]:
    current = store.ota.get_desired(conn, agent_id)
    return dict(current.doc) if current else {"releases": [], "revert": []}


def _set_entry(
    conn: store.Connection,
    agent_id: str,
    *,
    kind: str,
    mode: str,
    entry: dict[str, Any] | None,
    rollout_id: int,
    now_ts: float,
) -> dict[str, Any]:
    """Put ``entry`` in the agent's desired state for (kind, mode), or take the kind back to
    what the agent was installed with (``entry`` None); returns the entry it had before."""
    doc = _doc(conn, agent_id)
    releases = [dict(r) for r in doc.get("releases", [])]
    before = next((r for r in releases if (r["kind"], r["mode"]) == (kind, mode)), None)
    releases = [r for r in releases if (r["kind"], r["mode"]) != (kind, mode)]
    revert = [k for k in doc.get("revert", []) if k != kind]
    if entry is not None:
        releases.append(entry)
    elif mode == "active":
        revert.append(kind)
    releases.sort(key=lambda r: (r["kind"], r["mode"]))
    store.ota.set_desired(
        conn,
        agent_id=agent_id,
        doc={"releases": releases, "revert": sorted(revert)},
        rollout_id=rollout_id,
        now_ts=now_ts,
    )
    return {"entry": before}


def create(
    conn: store.Connection,
    *,
    release_id: int,
    agents: list[str],
    groups: str,
    mode: str,
    shadow_fraction: float,
    success_threshold: float,
    error_threshold: float,
    now_ts: float,
) -> int:
    release = store.releases.get(conn, release_id)
    if release is None:
        raise RolloutError(f"release {release_id} not found")
    if mode == "shadow" and release.kind != "model":
        raise RolloutError("only a model release can run in shadow mode")
    if not agents:
        raise RolloutError("no agents to roll out to")
    busy: set[str] = set()
    for other in store.rollouts.list_rollouts(conn, states=ACTIVE_STATES):
        other_release = store.releases.get(conn, other.release_id)
        if other_release is not None and other_release.kind == release.kind:
            busy |= {a.agent_id for a in store.rollouts.agents(conn, other.id)}
    clash = sorted(busy & set(agents))
    if clash:
        raise RolloutError(f"agents already in a running {release.kind} rollout: {clash}")
    return store.rollouts.create(
        conn,
        release_id=release_id,
        mode=mode,
        shadow_fraction=shadow_fraction,
        groups=split_groups(sorted(set(agents)), groups),
        success_threshold=success_threshold,
        error_threshold=error_threshold,
        now_ts=now_ts,
    )


def _outcome(conn: store.Connection, rollout: RolloutRow, agent: RolloutAgentRow) -> str | None:
    """succeeded / failed (with the report's reason in the row) / None (still going)."""
    for report in reversed(store.ota.reports(conn, agent.agent_id, release_id=rollout.release_id)):
        if report.at_ts < agent.updated_ts - 1 and report.received_ts < agent.updated_ts:
            break  # older than this attempt
        if report.state in ("failed", "rolled_back"):
            return "failed:" + (report.reason or report.state)
        if rollout.mode == "active" and report.state == "committed":
            return "succeeded"
        if rollout.mode == "shadow" and report.state in ("shadow", "shadow_report"):
            return "succeeded"
    return None


def _revert(
    conn: store.Connection,
    rollout: RolloutRow,
    release: ReleaseRow,
    agent: RolloutAgentRow,
    *,
    now_ts: float,
    state: str,
    reason: str | None,
) -> None:
    _set_entry(
        conn,
        agent.agent_id,
        kind=release.kind,
        mode=rollout.mode,
        entry=agent.previous.get("entry"),
        rollout_id=rollout.id,
        now_ts=now_ts,
    )
    store.rollouts.set_agent(
        conn, rollout.id, agent.agent_id, state=state, reason=reason, now_ts=now_ts
    )


def advance(conn: store.Connection, rollout: RolloutRow, *, now_ts: float) -> None:
    """One step of a running rollout (inside the caller's transaction)."""
    if rollout.state != "running":
        return
    release = store.releases.get(conn, rollout.release_id)
    assert release is not None
    members = store.rollouts.agents(conn, rollout.id)
    for agent in members:
        if agent.state == "updating":
            outcome = _outcome(conn, rollout, agent)
            if outcome == "succeeded":
                store.rollouts.set_agent(
                    conn, rollout.id, agent.agent_id, state="succeeded", now_ts=now_ts
                )
            elif outcome is not None:
                store.rollouts.set_agent(
                    conn,
                    rollout.id,
                    agent.agent_id,
                    state="failed",
                    reason=outcome.split(":", 1)[1],
                    now_ts=now_ts,
                )
    members = store.rollouts.agents(conn, rollout.id)
    started = [a for a in members if a.state != "pending"]
    failed = [a for a in members if a.state == "failed"]
    if started and failed and len(failed) / len(started) >= rollout.error_threshold:
        for agent in failed:
            _revert(
                conn, rollout, release, agent, now_ts=now_ts, state="reverted", reason=agent.reason
            )
        store.rollouts.update(
            conn,
            rollout.id,
            now_ts=now_ts,
            state="halted",
            reason=f"{len(failed)} of {len(started)} agents failed (error threshold "
            f"{rollout.error_threshold:g}): {failed[0].agent_id}: {failed[0].reason}",
        )
        return
    group = [a for a in members if a.group_index == rollout.current_group]
    for agent in group:
        if agent.state == "pending":
            before = _set_entry(
                conn,
                agent.agent_id,
                kind=release.kind,
                mode=rollout.mode,
                entry=desired_entry(
                    release, mode=rollout.mode, shadow_fraction=rollout.shadow_fraction
                ),
                rollout_id=rollout.id,
                now_ts=now_ts,
            )
            store.rollouts.set_agent(
                conn,
                rollout.id,
                agent.agent_id,
                state="updating",
                now_ts=now_ts,
                previous=before,
            )
    succeeded = sum(1 for a in group if a.state == "succeeded")
    if group and succeeded / len(group) >= rollout.success_threshold:
        last = max(a.group_index for a in members)
        if rollout.current_group >= last:
            store.rollouts.update(conn, rollout.id, now_ts=now_ts, state="completed")
        else:
            store.rollouts.update(
                conn, rollout.id, now_ts=now_ts, current_group=rollout.current_group + 1
            )


def act(conn: store.Connection, rollout_id: int, action: str, *, now_ts: float) -> RolloutRow:
    """pause, resume, abort or promote (see the module docstring)."""
    rollout = store.rollouts.get(conn, rollout_id)
    if rollout is None:
        raise RolloutError(f"rollout {rollout_id} not found")
    release = store.releases.get(conn, rollout.release_id)
    assert release is not None
    if action == "pause":
        if rollout.state != "running":
            raise RolloutError(f"rollout {rollout_id} is {rollout.state}, not running")
        store.rollouts.update(conn, rollout_id, now_ts=now_ts, state="paused")
    elif action == "resume":
        if rollout.state not in ("paused", "halted"):
            raise RolloutError(f"rollout {rollout_id} is {rollout.state}: nothing to resume")
        store.rollouts.update(conn, rollout_id, now_ts=now_ts, state="running")
    elif action == "abort":
        if rollout.state == "aborted":
            raise RolloutError(f"rollout {rollout_id} is aborted already")
        for agent in store.rollouts.agents(conn, rollout_id):
            if agent.state in ("updating", "succeeded", "failed"):
                _revert(
                    conn,
                    rollout,
                    release,
                    agent,
                    now_ts=now_ts,
                    state="reverted",
                    reason="rollout aborted",
                )
        store.rollouts.update(
            conn, rollout_id, now_ts=now_ts, state="aborted", reason="aborted by the operator"
        )
    elif action == "promote":
        if rollout.mode == "shadow":
            for agent in store.rollouts.agents(conn, rollout_id):
                if agent.state in ("updating", "succeeded"):
                    _set_entry(
                        conn,
                        agent.agent_id,
                        kind="model",
                        mode="shadow",
                        entry=None,
                        rollout_id=rollout_id,
                        now_ts=now_ts,
                    )
                store.rollouts.set_agent(
                    conn, rollout_id, agent.agent_id, state="pending", now_ts=now_ts
                )
            store.rollouts.update(
                conn, rollout_id, now_ts=now_ts, mode="active", current_group=0, state="running"
            )
        else:
            last = max((a.group_index for a in store.rollouts.agents(conn, rollout_id)), default=0)
            store.rollouts.update(
                conn, rollout_id, now_ts=now_ts, current_group=last, state="running"
            )
            _start_all(conn, rollout_id, now_ts=now_ts)
    else:
        raise RolloutError(f"unknown action {action!r}")
    found = store.rollouts.get(conn, rollout_id)
    assert found is not None
    return found


def _start_all(conn: store.Connection, rollout_id: int, *, now_ts: float) -> None:
    """Promote an active rollout: every pending agent gets the release now."""
    rollout = store.rollouts.get(conn, rollout_id)
    assert rollout is not None
    release = store.releases.get(conn, rollout.release_id)
    assert release is not None
    for agent in store.rollouts.agents(conn, rollout_id):
        if agent.state != "pending":
            continue
        before = _set_entry(
            conn,
            agent.agent_id,
            kind=release.kind,
            mode=rollout.mode,
            entry=desired_entry(
                release, mode=rollout.mode, shadow_fraction=rollout.shadow_fraction
            ),
            rollout_id=rollout_id,
            now_ts=now_ts,
        )
        store.rollouts.set_agent(
            conn, rollout_id, agent.agent_id, state="updating", now_ts=now_ts, previous=before
        )


def summary(conn: store.Connection, rollout_id: int) -> dict[str, Any]:
    """A rollout with its agents, by group, for the CLI and the API."""
    rollout = store.rollouts.get(conn, rollout_id)
    if rollout is None:
        raise RolloutError(f"rollout {rollout_id} not found")
    members = store.rollouts.agents(conn, rollout_id)
    groups: dict[int, list[dict[str, Any]]] = {}
    for a in members:
        groups.setdefault(a.group_index, []).append(
            {"agent_id": a.agent_id, "state": a.state, "reason": a.reason}
        )
    return {
        "id": rollout.id,
        "release_id": rollout.release_id,
        "mode": rollout.mode,
        "shadow_fraction": rollout.shadow_fraction,
        "state": rollout.state,
        "reason": rollout.reason,
        "current_group": rollout.current_group,
        "success_threshold": rollout.success_threshold,
        "error_threshold": rollout.error_threshold,
        "created_ts": rollout.created_ts,
        "updated_ts": rollout.updated_ts,
        "groups": [groups[i] for i in sorted(groups)],
    }
