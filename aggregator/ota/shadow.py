"""The shadow comparison of a rollout's candidate model: the latest figures each agent reported
(they are cumulative since the candidate started there), and their sum."""

from __future__ import annotations

from typing import Any

from aggregator import store


class ShadowError(ValueError):
    """No such rollout, or it is not of a model."""


def compare(conn: store.Connection, rollout_id: int) -> dict[str, Any]:
    rollout = store.rollouts.get(conn, rollout_id)
    if rollout is None:
        raise ShadowError(f"rollout {rollout_id} not found")
    release = store.releases.get(conn, rollout.release_id)
    if release is None or release.kind != "model":
        raise ShadowError(f"rollout {rollout_id} is not a model rollout")
    agents: dict[str, Any] = {}
    total: dict[str, dict[str, int]] = {}
    frames = flips = errors = 0
    for row in store.ota.shadow_reports(conn, release_id=release.id):
        figures = row.figures
        agents[row.agent_id] = {"at_ts": row.at_ts, "shadow_id": f"shadow:{row.id}", **figures}
        frames += figures.get("frames", 0)
        flips += figures.get("flip_count", 0)
        errors += figures.get("errors", 0)
        for labels in figures.get("per_camera", {}).values():
            for label, counts in labels.items():
                into = total.setdefault(
                    label, {"matched": 0, "only_active": 0, "only_candidate": 0}
                )
                for key in into:
                    into[key] += counts.get(key, 0)
    return {
        "rollout_id": rollout_id,
        "release_id": release.id,
        "candidate_sha256": release.sha256,
        "state": rollout.state,
        "mode": rollout.mode,
        "frames": frames,
        "flips": flips,
        "errors": errors,
        "per_label": total,
        "agents": agents,
    }


def render(doc: dict[str, Any]) -> str:
    lines = [
        f"rollout {doc['rollout_id']} release {doc['release_id']} ({doc['mode']}, {doc['state']}):"
        f" {doc['frames']} frames, {doc['flips']} threat flips, {doc['errors']} errors",
        f"{'agent':<16} {'camera':<12} {'label':<16} {'matched':>8} {'active':>8} {'cand.':>8}",
    ]
    for agent_id, figures in sorted(doc["agents"].items()):
        for camera, labels in sorted(figures.get("per_camera", {}).items()):
            for label, c in sorted(labels.items()):
                lines.append(
                    f"{agent_id:<16} {camera:<12} {label:<16} {c['matched']:>8} "
                    f"{c['only_active']:>8} {c['only_candidate']:>8}"
                )
        for which in ("active_latency", "candidate_latency"):
            lat = figures.get(which)
            if lat:
                lines.append(
                    f"{agent_id:<16} {which.replace('_', ' ')}: p50 {lat['p50_ms']:.1f} ms, "
                    f"p95 {lat['p95_ms']:.1f} ms"
                )
        for flip in figures.get("flips", [])[:20]:
            lines.append(
                f"{agent_id:<16} flip {flip['camera']} frame {flip['frame_id']}: "
                f"active {flip['active']} candidate {flip['candidate']}"
            )
    return "\n".join(lines)
