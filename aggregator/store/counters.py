"""Ingest counters (table ``ingest_counters``: stored, duplicate, rejected_<reason>, ...) and
the row counts the health endpoint reports (table ``row_counts``). Whoever inserts or deletes
messages or threats adds to the row counts in the same transaction (the ingest writer: once per
batch); events and agents keep theirs themselves."""

from __future__ import annotations

from collections.abc import Mapping

from aggregator.store.models import StoreCounts
from aggregator.store.schema import Connection


def bump(conn: Connection, counts: Mapping[str, int]) -> None:
    """Add to persistent counters (created at zero)."""
    conn.executemany(
        "INSERT INTO ingest_counters (name, value) VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET value = ingest_counters.value + excluded.value",
        list(counts.items()),
    )


def add_rows(conn: Connection, deltas: Mapping[str, int]) -> None:
    """Add to the row counts (``messages``, ``threats``, ``events``, ``open_events``,
    ``agents``)."""
    conn.executemany(
        "UPDATE row_counts SET value = value + ? WHERE name = ?",
        [(delta, name) for name, delta in deltas.items() if delta],
    )


def ingest_counters(conn: Connection) -> dict[str, int]:
    return {
        str(r[0]): int(r[1])
        for r in conn.execute("SELECT name, value FROM ingest_counters ORDER BY name")
    }


def row_counts(conn: Connection) -> StoreCounts:
    """Messages, threats, events, open events and agents stored: five numbers read from
    ``row_counts``, not a count over each table."""
    values = {str(r[0]): int(r[1]) for r in conn.execute("SELECT name, value FROM row_counts")}
    return StoreCounts(
        messages=values.get("messages", 0),
        threats=values.get("threats", 0),
        events=values.get("events", 0),
        open_events=values.get("open_events", 0),
        agents=values.get("agents", 0),
    )
