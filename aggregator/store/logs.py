"""What agents and secagg logged about results (table ``run_logs``): warnings and errors,
each with the ids it names (agent, camera, frame, lineage, message, event, release)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aggregator.store.schema import Connection
from aggregator.store.where import Where


@dataclass(frozen=True)
class LogRow:
    id: int
    source: str
    """``agent`` or ``secagg``"""
    agent_id: str | None
    level: str
    logger: str
    msg: str
    at_ts: float
    received_ts: float
    lineage_id: str | None
    frame_id: str | None
    camera: str | None
    message_id: str | None
    event_id: int | None
    release_id: int | None


_COLUMNS = (
    "id, source, agent_id, level, logger, msg, at_ts, received_ts, lineage_id, frame_id, "
    "camera, message_id, event_id, release_id"
)
_INSERT = (
    "INSERT INTO run_logs (source, agent_id, level, logger, msg, at_ts, received_ts, "
    "lineage_id, frame_id, camera, message_id, event_id, release_id) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def insert(conn: Connection, rows: Sequence[LogRow]) -> None:
    """Store log lines (their ``id`` is ignored: the table numbers them)."""
    conn.executemany(_INSERT, [tuple(r.__dict__.values())[1:] for r in rows])


def _rows(
    conn: Connection, where: Where, limit: int, after: tuple[float, int] | None = None
) -> list[LogRow]:
    if after is not None:  # keyset: the page after the line at (at_ts, id)
        where.clauses.append("(at_ts, id) > (?, ?)")
        where.args.extend(after)
    found = conn.execute(
        f"SELECT {_COLUMNS} FROM run_logs{where.sql} ORDER BY at_ts, id LIMIT ?",
        [*where.args, limit],
    )
    return [LogRow(*r) for r in found]


def _any_of(column: str, values: Sequence[Any]) -> str:
    return f"{column} IN ({', '.join('?' * len(values))})"


def about(
    conn: Connection,
    *,
    lineage_ids: Sequence[str] = (),
    frame_ids: Sequence[str] = (),
    message_ids: Sequence[str] = (),
    event_ids: Sequence[int] = (),
    limit: int = 1000,
    after: tuple[float, int] | None = None,
) -> list[LogRow]:
    """Lines that name any of these ids, oldest first (``after``: the page after the line at
    this (at_ts, id))."""
    parts: list[str] = []
    args: list[Any] = []
    for column, values in (
        ("lineage_id", lineage_ids),
        ("frame_id", frame_ids),
        ("message_id", message_ids),
        ("event_id", event_ids),
    ):
        if values:
            parts.append(_any_of(column, values))
            args.extend(values)
    if not parts:
        return []
    where = Where()
    where.clauses.append("(" + " OR ".join(parts) + ")")
    where.args.extend(args)
    return _rows(conn, where, limit, after)


def of_agent(
    conn: Connection,
    agent_id: str,
    *,
    since_ts: float | None = None,
    until_ts: float | None = None,
    limit: int = 1000,
    after: tuple[float, int] | None = None,
) -> list[LogRow]:
    """An agent's lines (and secagg's about it) in a time range, oldest first (``after``: the
    page after the line at this (at_ts, id))."""
    where = (
        Where().equals("agent_id", agent_id).at_least("at_ts", since_ts).below("at_ts", until_ts)
    )
    return _rows(conn, where, limit, after)


def prune(conn: Connection, *, keep_rows: int) -> int:
    """Keep the newest ``keep_rows`` lines; returns how many were deleted."""
    cur = conn.execute(
        "DELETE FROM run_logs WHERE id <= (SELECT MAX(id) FROM run_logs) - ?", (keep_rows,)
    )
    return cur.rowcount


def recent(conn: Connection, *, limit: int, before_id: int | None = None) -> list[LogRow]:
    """The newest ``limit`` lines (``before_id``: the newest below this id), oldest first."""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM run_logs WHERE id < ? ORDER BY id DESC LIMIT ?",
        (2**63 - 1 if before_id is None else before_id, limit),
    )
    return [LogRow(*r) for r in reversed(rows.fetchall())]
