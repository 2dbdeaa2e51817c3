"""The update state of the agents: the desired state the aggregator publishes to each
(``ota_desired``), what the agents report (``ota_reports``: every state change, with the releases
active after it), and the shadow comparisons they send (``shadow_reports``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aggregator.store.backend import greatest
from aggregator.store.schema import Connection


@dataclass(frozen=True, slots=True)
class DesiredRow:
    agent_id: str
    generation: int
    doc: dict[str, Any]
    rollout_id: int | None
    published_generation: int
    updated_ts: float


@dataclass(frozen=True, slots=True)
class ReportRow:
    id: int
    report_id: str
    agent_id: str
    kind: str | None
    release_id: int | None
    state: str
    reason: str | None
    rollout_id: int | None
    at_ts: float
    received_ts: float
    active: dict[str, Any]
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ShadowRow:
    id: int
    report_id: str
    agent_id: str
    release_id: int
    rollout_id: int | None
    at_ts: float
    figures: dict[str, Any]


# desired state -------------------------------------------------------------------------------
def get_desired(conn: Connection, agent_id: str) -> DesiredRow | None:
    row = conn.execute(
        "SELECT agent_id, generation, doc_json, rollout_id, published_generation, updated_ts "
        "FROM ota_desired WHERE agent_id = ?",
        (agent_id,),
    ).fetchone()
    return None if row is None else _desired(row)


def _desired(row: Sequence[Any]) -> DesiredRow:
    return DesiredRow(row[0], row[1], json.loads(row[2]), row[3], row[4], row[5])


def set_desired(
    conn: Connection,
    *,
    agent_id: str,
    doc: dict[str, Any],
    rollout_id: int | None,
    now_ts: float,
) -> int:
    """Record a new desired state for an agent (a new generation when it differs); returns
    the generation in force."""
    current = get_desired(conn, agent_id)
    if current is not None and current.doc == doc:
        return current.generation
    generation = 1 if current is None else current.generation + 1
    conn.execute(
        "INSERT INTO ota_desired (agent_id, generation, doc_json, rollout_id, updated_ts) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (agent_id) DO UPDATE SET generation = ?, "
        "doc_json = ?, rollout_id = ?, updated_ts = ?",
        (
            agent_id,
            generation,
            json.dumps(doc, sort_keys=True),
            rollout_id,
            now_ts,
            generation,
            json.dumps(doc, sort_keys=True),
            rollout_id,
            now_ts,
        ),
    )
    return generation


def unpublished(conn: Connection) -> list[DesiredRow]:
    """Desired states whose latest generation has not been published yet."""
    rows = conn.execute(
        "SELECT agent_id, generation, doc_json, rollout_id, published_generation, updated_ts "
        "FROM ota_desired WHERE published_generation < generation ORDER BY agent_id"
    )
    return [_desired(r) for r in rows]


def mark_published(conn: Connection, agent_id: str, generation: int) -> None:
    conn.execute(
        f"UPDATE ota_desired SET published_generation = {greatest(conn)}(published_generation, ?) "
        "WHERE agent_id = ?",
        (generation, agent_id),
    )


# reports -------------------------------------------------------------------------------------
_REPORT = (
    "id, report_id, agent_id, kind, release_id, state, reason, rollout_id, at_ts, received_ts, "
    "active_json, detail_json"
)


def _report(row: Sequence[Any]) -> ReportRow:
    return ReportRow(
        id=row[0],
        report_id=row[1],
        agent_id=row[2],
        kind=row[3],
        release_id=row[4],
        state=row[5],
        reason=row[6],
        rollout_id=row[7],
        at_ts=row[8],
        received_ts=row[9],
        active=json.loads(row[10]),
        detail=json.loads(row[11]),
    )


def add_report(
    conn: Connection,
    *,
    report_id: str,
    agent_id: str,
    kind: str | None,
    release_id: int | None,
    state: str,
    reason: str | None,
    rollout_id: int | None,
    at_ts: float,
    received_ts: float,
    active: dict[str, Any],
    detail: dict[str, Any],
) -> bool:
    """Store a report; False when its id is stored already (a duplicate delivery)."""
    cur = conn.execute(
        "INSERT INTO ota_reports (report_id, agent_id, kind, release_id, state, reason, "
        "rollout_id, at_ts, received_ts, active_json, detail_json) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (report_id) DO NOTHING",
        (
            report_id,
            agent_id,
            kind,
            release_id,
            state,
            reason,
            rollout_id,
            at_ts,
            received_ts,
            json.dumps(active, sort_keys=True),
            json.dumps(detail, sort_keys=True),
        ),
    )
    return cur.rowcount == 1


def reports(
    conn: Connection, agent_id: str, *, release_id: int | None = None, limit: int = 1000
) -> list[ReportRow]:
    """An agent's reports, oldest first (the last ``limit``)."""
    if release_id is None:
        rows = conn.execute(
            f"SELECT {_REPORT} FROM ota_reports WHERE agent_id = ? ORDER BY id DESC LIMIT ?",
            (agent_id, limit),
        )
    else:
        rows = conn.execute(
            f"SELECT {_REPORT} FROM ota_reports WHERE agent_id = ? AND release_id = ? "
            "ORDER BY id DESC LIMIT ?",
            (agent_id, release_id, limit),
        )
    return [_report(r) for r in reversed(rows.fetchall())]


def latest_report(
    conn: Connection, agent_id: str, *, release_id: int | None = None
) -> ReportRow | None:
    found = reports(conn, agent_id, release_id=release_id, limit=1)
    return found[0] if found else None


# shadow comparisons --------------------------------------------------------------------------
def add_shadow(
    conn: Connection,
    *,
    report_id: str,
    agent_id: str,
    release_id: int,
    rollout_id: int | None,
    at_ts: float,
    figures: dict[str, Any],
) -> int | None:
    """Store a shadow comparison; None when its report id is stored already."""
    row = conn.execute(
        "INSERT INTO shadow_reports (report_id, agent_id, release_id, rollout_id, at_ts, "
        "figures_json) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (report_id) DO NOTHING RETURNING id",
        (report_id, agent_id, release_id, rollout_id, at_ts, json.dumps(figures, sort_keys=True)),
    ).fetchone()
    return None if row is None else int(row[0])


def shadow_reports(conn: Connection, *, release_id: int) -> list[ShadowRow]:
    """The latest shadow comparison of each agent for a release (figures are cumulative)."""
    rows = conn.execute(
        "SELECT id, report_id, agent_id, release_id, rollout_id, at_ts, figures_json "
        "FROM shadow_reports WHERE id IN (SELECT MAX(id) FROM shadow_reports "
        "WHERE release_id = ? GROUP BY agent_id) ORDER BY agent_id",
        (release_id,),
    )
    return [ShadowRow(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6])) for r in rows]
