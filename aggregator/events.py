"""Grouping threats into threat events. Threats that share a group key (by default agent,
camera and rule; a camera of a site groups by its site) belong to one event until ``cutoff_s``
seconds pass without one. One event -> one alert.

Events end on one clock: the agent's own (the latest capture time or status ``sent_at`` the
aggregator has seen from it, ``agents.clock_ts``). The aggregator's wall clock counts only for
an agent that has been silent for longer than the cutoff while the aggregator was listening.
An ended event is never reopened: a later threat starts a new event.

All functions run inside the writer's open transaction and return the lifecycle changes to
publish once it committed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from aggregator import store
from aggregator.config import EventsConfig
from aggregator.store.models import EventRow, NewEvent, OpenEventClock
from aggregator.timestamps import utc
from wire.payloads import SEVERITY_RANK, EventMessage

KEY_ORDER = ("agent_id", "camera", "rule")


@dataclass(frozen=True)
class EventChange:
    """An event was created, grew in severity, or ended."""

    type: Literal["new", "update", "end"]
    event_id: int


@dataclass(frozen=True)
class Grouping:
    """How threats group into events (from ``events:`` in the config)."""

    cutoff_s: float
    group_by: tuple[str, ...] = KEY_ORDER
    sites: Mapping[str, str] = field(default_factory=dict)
    site_window_s: float | None = None

    @classmethod
    def from_config(cls, config: EventsConfig) -> Grouping:
        return cls(
            cutoff_s=config.cutoff_s,
            group_by=tuple(config.group_by),
            sites=dict(config.sites),
            site_window_s=config.site_window_s,
        )

    def spans_agents(self, camera: str) -> bool:
        """Can a camera's events hold threats of other agents (a site, or no agent in the key)?"""
        return camera in self.sites or "agent_id" not in self.group_by

    def key(self, *, agent_id: str, camera: str, rule: str) -> tuple[str, float]:
        """The group key of a threat and the inactivity (seconds) that ends its event."""
        site = self.sites.get(camera)
        if site is not None:
            parts = [f"site={site}"] + ([f"rule={rule}"] if "rule" in self.group_by else [])
            return "|".join(parts), self.site_window_s or self.cutoff_s
        values = {"agent_id": agent_id, "camera": camera, "rule": rule}
        parts = [f"{k}={values[k]}" for k in KEY_ORDER if k in self.group_by]
        return "|".join(parts), self.cutoff_s


def _ts(value: float | None) -> datetime | None:
    return None if value is None else utc(value)


def end_behind_clock(
    conn: store.Connection,
    *,
    grouping: Grouping,
    agent_id: str,
    clock_ts: float,
    group_keys: Iterable[str] = (),
) -> list[EventChange]:
    """End the agent's open events (and those of these group keys: a site's cameras may sit on
    other agents) whose last threat is more than their cutoff behind ``clock_ts``, a time on
    the agent's clock (a threat's capture time, a status's ``sent_at``)."""
    ended = store.events.end_behind(
        conn,
        agent_id=agent_id,
        group_keys=group_keys,
        clock_ts=clock_ts,
        default_cutoff_s=grouping.cutoff_s,
    )
    return [EventChange("end", event_id) for event_id in ended]


def assign(
    conn: store.Connection,
    *,
    grouping: Grouping,
    agent_id: str,
    camera: str,
    rule: str,
    label: str,
    severity: str,
    score: float,
    captured_ts: float,
    message_id: str,
) -> tuple[int, list[EventChange]]:
    """The open event this threat belongs to (extending it) or a new one, and the change made.
    An ended event is never reopened: a threat after its end starts a new event."""
    group_key, cutoff_s = grouping.key(agent_id=agent_id, camera=camera, rule=rule)
    event = store.events.find_open(
        conn, group_key=group_key, captured_ts=captured_ts, cutoff_s=cutoff_s
    )
    if event is None:
        event_id = store.events.create(
            conn,
            NewEvent(
                agent_id=agent_id,
                camera=camera,
                rule=rule,
                label=label,
                severity=severity,
                captured_ts=captured_ts,
                score=score,
                message_id=message_id,
                group_key=group_key,
                cutoff_s=cutoff_s,
            ),
        )
        return event_id, [EventChange("new", event_id)]
    escalated = SEVERITY_RANK[severity] > SEVERITY_RANK[event.severity]
    better = score > event.top_score
    cameras = event.cameras if camera in event.cameras else [*event.cameras, camera]
    store.events.extend(
        conn,
        event_id=event.id,
        captured_ts=captured_ts,
        severity=severity if escalated else event.severity,
        score=score,
        top_message_id=message_id if better else event.top_message_id,
        label=label if better else event.label,
        cameras=cameras,
    )
    return event.id, [EventChange("update", event.id)] if escalated else []


def should_end(
    event: OpenEventClock,
    *,
    now_ts: float,
    default_cutoff_s: float,
    listening_since_ts: float | None,
) -> str | None:
    """Why an open event ends now, or None. On its agent's clock when the last threat is more
    than the cutoff behind it; on the aggregator's wall clock only when the agent has been
    silent for longer than the cutoff while the aggregator was listening (``listening_since_ts``:
    since when the ingest is subscribed; None: not now, so nobody counts as silent)."""
    cutoff_s = event.cutoff_s or default_cutoff_s
    if event.agent_clock_ts is not None and event.last_seen_ts + cutoff_s < event.agent_clock_ts:
        return "agent clock"
    if listening_since_ts is None:
        return None
    silent_since = max(event.agent_heard_ts or 0.0, listening_since_ts)
    if now_ts - silent_since > cutoff_s:
        return "agent silent"
    return None


def end_idle(
    conn: store.Connection,
    *,
    now_ts: float,
    cutoff_s: float,
    listening_since_ts: float | None,
) -> list[EventChange]:
    """The sweep: end every open event that :func:`should_end` says has ended. ``cutoff_s``
    is for events stored before events had their own."""
    ended = [
        e.event_id
        for e in store.events.open_with_clocks(conn)
        if should_end(
            e, now_ts=now_ts, default_cutoff_s=cutoff_s, listening_since_ts=listening_since_ts
        )
    ]
    store.events.end(conn, ended)
    return [EventChange("end", event_id) for event_id in ended]


def event_message(conn: store.Connection, change: EventChange) -> EventMessage:
    """The public lifecycle message of an event, as it stands now."""
    event = store.events.get(conn, change.event_id)
    if event is None:
        raise LookupError(f"event {change.event_id} is not stored")
    return EventMessage.model_validate(
        {
            "type": change.type,
            "event_id": event.id,
            "agent_id": event.agent_id,
            "camera": event.camera,
            "rule": event.rule,
            "severity": event.severity,
            "label": event.label,
            "started_at": _ts(event.started_ts),
            "last_seen_at": _ts(event.last_seen_ts),
            "ended_at": _ts(event.ended_ts),
            "threat_count": event.threat_count,
            "top_score": event.top_score,
            "cameras": event.cameras,
            "summary": summary(event),
        }
    )


def summary(event: EventRow) -> str:
    """One line about an event: severity, rule, cameras, threat count, top score, time range."""
    first = utc(event.started_ts).strftime("%Y-%m-%d %H:%M:%S")
    last = utc(event.last_seen_ts).strftime("%H:%M:%S")
    return (
        f"{event.severity} {event.rule} on {', '.join(event.cameras)} ({event.agent_id}): "
        f"{event.threat_count} threat(s), top {event.label} {event.top_score:.2f}, "
        f"{first}-{last} UTC, {event.state}"
    )
