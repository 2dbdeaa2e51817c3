"""Rendered plots (table ``plots``): the recorded query and data of each, by PNG sha256."""

from __future__ import annotations

import json

from aggregator.store.models import PlotRow
from aggregator.store.schema import Connection


def insert(conn: Connection, plot: PlotRow) -> bool:
    """Record a plot; False when a plot with this sha256 is recorded already."""
    cur = conn.execute(
        "INSERT INTO plots (id, kind, query_json, data_json, event_ids_json, code_version, "
        "created_ts) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
        (
            plot.id,
            plot.kind,
            json.dumps(plot.query, sort_keys=True),
            json.dumps(plot.data, sort_keys=True),
            json.dumps(plot.event_ids),
            plot.code_version,
            plot.created_ts,
        ),
    )
    return cur.rowcount == 1


def find(
    conn: Connection, *, query: dict[str, object], data: dict[str, object], code_version: str
) -> str | None:
    """The id of a plot recorded with this query, data and code version (drawn already)."""
    row = conn.execute(
        "SELECT id FROM plots WHERE query_json = ? AND data_json = ? AND code_version = ? LIMIT 1",
        (json.dumps(query, sort_keys=True), json.dumps(data, sort_keys=True), code_version),
    ).fetchone()
    return None if row is None else str(row[0])


def get(conn: Connection, plot_id: str) -> PlotRow | None:
    row = conn.execute(
        "SELECT id, kind, query_json, data_json, event_ids_json, code_version, created_ts "
        "FROM plots WHERE id = ?",
        (plot_id,),
    ).fetchone()
    if row is None:
        return None
    return PlotRow(
        id=row[0],
        kind=row[1],
        query=json.loads(row[2]),
        data=json.loads(row[3]),
        event_ids=json.loads(row[4]),
        code_version=row[5],
        created_ts=row[6],
    )
