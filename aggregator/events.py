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
from dataclasses import dataclass, field, replace
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
    _keys: dict[tuple[str, str, str], tuple[str, float]] = field(
        default_factory=dict, compare=False, repr=False
    )

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
        found = self._keys.get((agent_id, camera, rule))
        if found is None:
            if len(self._keys) > 100_000:
                self._keys.clear()  # bounded whatever names arrive
            found = self._keys[(agent_id, camera, rule)] = self._key(agent_id, camera, rule)
        return found

    def _key(self, agent_id: str, camera: str, rule: str) -> tuple[str, float]:
        site = self.sites.get(camera)
        if site is not None:
            parts = [f"site={site}"] + ([f"rule={rule}"] if "rule" in self.group_by else [])
            return "|".join(parts), self.site_window_s or self.cutoff_s
        values = {"agent_id": agent_id, "camera": camera, "rule": rule}
        parts = [f"{k}={values[k]}" for k in KEY_ORDER if k in self.group_by]
        return "|".join(parts), self.cutoff_s


def _ts(value: float | None) -> datetime | None:
    return None if value is None else utc(value)


@dataclass(slots=True)
class _Open:
    """An open event as a batch grows it (written back by :meth:`OpenEvents.flush`)."""

    row: EventRow
    started_ts: float
    last_seen_ts: float
    threat_count: int
    severity: str
    top_score: float
    top_message_id: str
    label: str
    cameras: list[str]

    @classmethod
    def of(cls, e: EventRow) -> _Open:
        return cls(
            e,
            e.started_ts,
            e.last_seen_ts,
            e.threat_count,
            e.severity,
            e.top_score,
            e.top_message_id,
            e.label,
            list(e.cameras),
        )

    def as_row(self) -> EventRow:
        return replace(
            self.row,
            started_ts=self.started_ts,
            last_seen_ts=self.last_seen_ts,
            threat_count=self.threat_count,
            severity=self.severity,
            top_score=self.top_score,
            top_message_id=self.top_message_id,
            label=self.label,
            cameras=self.cameras,
        )


class OpenEvents:
    """The open events a batch of threats can touch (those of its agents and group keys), read
    once, grown and ended in memory in the order of the threats, and written once
    (:meth:`flush`). A new event is inserted at once: its threats need its id.

    The ingest writer runs each batch of threat messages through one of these; the
    one-at-a-time functions below (:func:`assign`, :func:`end_behind_clock`) through one each.
    Either way the result is what the threats applied one by one to the table would give."""

    def __init__(self, grouping: Grouping, events: Iterable[EventRow]) -> None:
        self.grouping = grouping
        self._open: dict[int, _Open] = {e.id: _Open.of(e) for e in events}
        self._changed: set[int] = set()
        self._ended: dict[int, _Open] = {}

    @classmethod
    def load(
        cls,
        conn: store.Connection,
        grouping: Grouping,
        *,
        agent_ids: Iterable[str],
        group_keys: Iterable[str] = (),
    ) -> OpenEvents:
        return cls(grouping, store.events.open_of(conn, agent_ids=agent_ids, group_keys=group_keys))

    def end_behind_clock(
        self, *, agent_id: str, clock_ts: float, group_keys: Iterable[str] = ()
    ) -> list[EventChange]:
        """End the agent's open events (and those of these group keys: a site's cameras may sit
        on other agents) whose last threat is more than their cutoff behind ``clock_ts``, a
        time on the agent's clock (a threat's capture time, a status's ``sent_at``)."""
        keys = set(group_keys)
        default_s = self.grouping.cutoff_s
        ended = [
            i
            for i, e in self._open.items()
            if (e.row.agent_id == agent_id or e.row.group_key in keys)
            and e.last_seen_ts + (e.row.cutoff_s or default_s) < clock_ts
        ]
        if not ended:
            return []
        ended.sort()
        for event_id in ended:
            self._ended[event_id] = self._open.pop(event_id)
        return [EventChange("end", event_id) for event_id in ended]

    def assign(
        self,
        conn: store.Connection,
        *,
        agent_id: str,
        camera: str,
        rule: str,
        label: str,
        severity: str,
        score: float,
        captured_ts: float,
        message_id: str,
    ) -> tuple[int, list[EventChange]]:
        """The open event this threat belongs to (extending it) or a new one, and the change
        made. An ended event is never reopened: a threat after its end starts a new event."""
        group_key, cutoff_s = self.grouping.key(agent_id=agent_id, camera=camera, rule=rule)
        event: _Open | None = None
        for e in self._open.values():  # the one seen last (the older on a tie)
            if (
                e.row.group_key == group_key
                and e.started_ts - cutoff_s <= captured_ts <= e.last_seen_ts + cutoff_s
                and (event is None or e.last_seen_ts > event.last_seen_ts)
            ):
                event = e
        if event is None:
            new = NewEvent(
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
            )
            event_id = store.events.create(conn, new)
            row = EventRow(
                id=event_id,
                agent_id=agent_id,
                camera=camera,
                rule=rule,
                label=label,
                severity=severity,
                started_ts=captured_ts,
                last_seen_ts=captured_ts,
                ended_ts=None,
                threat_count=1,
                top_score=score,
                top_message_id=message_id,
                group_key=group_key,
                cameras=[camera],
                cutoff_s=cutoff_s,
            )
            self._open[event_id] = _Open.of(row)
            return event_id, [EventChange("new", event_id)]
        escalated = SEVERITY_RANK[severity] > SEVERITY_RANK[event.severity]
        event.started_ts = min(event.started_ts, captured_ts)
        event.last_seen_ts = max(event.last_seen_ts, captured_ts)
        event.threat_count += 1
        if escalated:
            event.severity = severity
        if score > event.top_score:
            event.top_score, event.top_message_id, event.label = score, message_id, label
        if camera not in event.cameras:
            event.cameras.append(camera)
        self._changed.add(event.row.id)
        return event.row.id, [EventChange("update", event.row.id)] if escalated else []

    def flush(self, conn: store.Connection) -> None:
        """Write what changed: the events grown, then those ended (at their last threat)."""
        if self._changed:
            events = {**self._ended, **self._open}
            store.events.save_many(conn, [events[i].as_row() for i in sorted(self._changed)])
        if self._ended:
            store.events.end(conn, list(self._ended))
        self._changed.clear()
        self._ended.clear()


def end_behind_clock(
    conn: store.Connection,
    *,
    grouping: Grouping,
    agent_id: str,
    clock_ts: float,
    group_keys: Iterable[str] = (),
) -> list[EventChange]:
    """:meth:`OpenEvents.end_behind_clock` on the table."""
    keys = list(group_keys)
    batch = OpenEvents.load(conn, grouping, agent_ids=[agent_id], group_keys=keys)
    changes = batch.end_behind_clock(agent_id=agent_id, clock_ts=clock_ts, group_keys=keys)
    batch.flush(conn)
    return changes


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
    """:meth:`OpenEvents.assign` on the table, for one threat."""
    group_key, _ = grouping.key(agent_id=agent_id, camera=camera, rule=rule)
    batch = OpenEvents.load(conn, grouping, agent_ids=[], group_keys=[group_key])
    found = batch.assign(
        conn,
        agent_id=agent_id,
        camera=camera,
        rule=rule,
        label=label,
        severity=severity,
        score=score,
        captured_ts=captured_ts,
        message_id=message_id,
    )
    batch.flush(conn)
    return found


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
