"""The agent configs in force (table ``agent_configs``), content-addressed: the document an
agent's status message carries, under the sha256 of its canonical JSON, which is the
``config_sha256`` every result of that agent records."""

from __future__ import annotations

import json
from typing import Any

from aggregator.store.schema import Connection


def save(
    conn: Connection, *, sha256: str, agent_id: str, received_ts: float, doc: dict[str, Any]
) -> bool:
    """Keep a config document (idempotent: the first copy is kept); True when it is new."""
    cur = conn.execute(
        "INSERT INTO agent_configs (sha256, agent_id, received_ts, doc_json) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (sha256) DO NOTHING",
        (sha256, agent_id, received_ts, json.dumps(doc, sort_keys=True)),
    )
    return cur.rowcount == 1


def get(conn: Connection, sha256: str) -> dict[str, Any] | None:
    """The config document with this sha256, if an agent ever sent it."""
    row = conn.execute("SELECT doc_json FROM agent_configs WHERE sha256 = ?", (sha256,)).fetchone()
    if row is None:
        return None
    doc: dict[str, Any] = json.loads(row[0])
    return doc
