"""Ingest counters (table ``ingest_counters``: stored, duplicate, rejected_<reason>, ...) and
the row counts the health endpoint reports (table ``row_counts``). Whoever inserts or deletes
messages or threats adds to the row counts in the same transaction (the ingest writer: once per
batch); events and agents keep theirs themselves.

On PostgreSQL each server process (``pg_backend_pid()``: one per connection, never two
transactions at once) adds to rows of its own, ``NAME@PID``, which the reads sum and the sweep
folds into ``NAME`` (:func:`fold`): the ingest's batches, which run side by side there
(docs/scale.md, "Locking"), never wait on one another's counter rows, where one hot row each
would make every batch wait for the previous one to commit. SQLite has the ``NAME`` rows only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from aggregator.store.backend import is_postgres
from aggregator.store.models import StoreCounts
from aggregator.store.schema import Connection

_SHARD = "? || '@' || pg_backend_pid()"
"""PostgreSQL: the name of this server process's row for the counter ``?``."""


def _add_to_own_rows(conn: Connection, table: str, deltas: list[tuple[str, int]]) -> None:
    """PostgreSQL: add to this server process's ``NAME@PID`` rows of ``table``."""
    conn.executemany(
        f"INSERT INTO {table} (name, value) VALUES ({_SHARD}, ?) "
        f"ON CONFLICT (name) DO UPDATE SET value = {table}.value + excluded.value",
        sorted(deltas),
    )


def bump(conn: Connection, counts: Mapping[str, int]) -> None:
    """Add to persistent counters (created at zero)."""
    if is_postgres(conn):
        _add_to_own_rows(conn, "ingest_counters", list(counts.items()))
        return
    conn.executemany(
        "INSERT INTO ingest_counters (name, value) VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET value = ingest_counters.value + excluded.value",
        list(counts.items()),
    )


def add_rows(conn: Connection, deltas: Mapping[str, int]) -> None:
    """Add to the row counts (``messages``, ``threats``, ``events``, ``open_events``,
    ``agents``)."""
    if is_postgres(conn):
        _add_to_own_rows(conn, "row_counts", [(n, d) for n, d in deltas.items() if d])
        return
    conn.executemany(
        "UPDATE row_counts SET value = value + ? WHERE name = ?",
        [(delta, name) for name, delta in deltas.items() if delta],
    )


def fold(conn: Connection) -> None:
    """PostgreSQL, under the exclusive write lock (the sweep): fold every process's
    ``NAME@PID`` rows into ``NAME`` (nothing on SQLite)."""
    if not is_postgres(conn):
        return
    for table in ("ingest_counters", "row_counts"):
        conn.execute(
            f"WITH moved AS (DELETE FROM {table} WHERE name LIKE '%@%' "
            "RETURNING split_part(name, '@', 1) AS name, value) "
            f"INSERT INTO {table} (name, value) "
            "SELECT name, SUM(value) FROM moved GROUP BY name ORDER BY name "
            f"ON CONFLICT (name) DO UPDATE SET value = {table}.value + excluded.value"
        )


def _summed(rows: Iterable[Any]) -> dict[str, int]:
    """``NAME`` and its ``NAME@PID`` rows summed, by name."""
    total: Counter[str] = Counter()
    for r in rows:
        total[str(r[0]).split("@", 1)[0]] += int(r[1])
    return dict(sorted(total.items()))


def ingest_counters(conn: Connection) -> dict[str, int]:
    return _summed(conn.execute("SELECT name, value FROM ingest_counters ORDER BY name"))


def row_counts(conn: Connection) -> StoreCounts:
    """Messages, threats, events, open events and agents stored: five numbers read from
    ``row_counts``, not a count over each table."""
    values = _summed(conn.execute("SELECT name, value FROM row_counts"))
    return StoreCounts(
        messages=values.get("messages", 0),
        threats=values.get("threats", 0),
        events=values.get("events", 0),
        open_events=values.get("open_events", 0),
        agents=values.get("agents", 0),
    )
