"""Signed releases (table ``releases``): one row per release of a model, rules file, agent config
or agent software. The artifact itself is in the release repository, by sha256
(:mod:`aggregator.ota.repository`); ``seq`` counts the releases of a kind (1, 2, ...) and is
signed with the release, so an agent can refuse an older one replayed to it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aggregator.store.backend import is_postgres
from aggregator.store.schema import Connection


@dataclass(frozen=True, slots=True)
class ReleaseRow:
    id: int
    kind: str
    name: str
    tag: str
    sha256: str
    size: int
    seq: int
    target_path: str
    created_ts: float
    compat: dict[str, Any]


_COLUMNS = "id, kind, name, tag, sha256, size, seq, target_path, created_ts, compat_json"


def _row(row: Sequence[Any]) -> ReleaseRow:
    return ReleaseRow(
        id=row[0],
        kind=row[1],
        name=row[2],
        tag=row[3],
        sha256=row[4],
        size=row[5],
        seq=row[6],
        target_path=row[7],
        created_ts=row[8],
        compat=json.loads(row[9]),
    )


def next_seq(conn: Connection, kind: str) -> int:
    row = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM releases WHERE kind = ?", (kind,))
    return int(row.fetchone()[0]) + 1


_SEQUENCE = "pg_get_serial_sequence('releases', 'id')::regclass"


def next_id(conn: Connection) -> int:
    """The id the next release will get (ids are never reused: AUTOINCREMENT; PostgreSQL: the
    identity column's sequence, which :func:`insert` moves to the id it inserts)."""
    if is_postgres(conn):
        row = conn.execute(f"SELECT pg_sequence_last_value({_SEQUENCE})").fetchone()
    else:
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'releases'").fetchone()
    return (int(row[0]) if row and row[0] is not None else 0) + 1


def by_tag(conn: Connection, kind: str, tag: str) -> ReleaseRow | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM releases WHERE kind = ? AND tag = ?", (kind, tag)
    ).fetchone()
    return None if row is None else _row(row)


def insert(
    conn: Connection,
    *,
    release_id: int,
    kind: str,
    name: str,
    tag: str,
    sha256: str,
    size: int,
    seq: int,
    target_path: str,
    created_ts: float,
    compat: dict[str, Any],
) -> ReleaseRow:
    conn.execute(
        f"INSERT INTO releases ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            release_id,
            kind,
            name,
            tag,
            sha256,
            size,
            seq,
            target_path,
            created_ts,
            json.dumps(compat, sort_keys=True),
        ),
    )
    if is_postgres(conn):  # SQLite's sequence follows an id inserted as is; PostgreSQL's not
        conn.execute(
            f"SELECT setval({_SEQUENCE}, GREATEST(?, COALESCE(pg_sequence_last_value("
            f"{_SEQUENCE}), 0)))",
            (release_id,),
        )
    found = get(conn, release_id)
    assert found is not None
    return found


def get(conn: Connection, release_id: int) -> ReleaseRow | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM releases WHERE id = ?", (release_id,)).fetchone()
    return None if row is None else _row(row)


def list_releases(conn: Connection, *, kind: str | None = None) -> list[ReleaseRow]:
    if kind is None:
        rows = conn.execute(f"SELECT {_COLUMNS} FROM releases ORDER BY id DESC")
    else:
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM releases WHERE kind = ? ORDER BY id DESC", (kind,)
        )
    return [_row(r) for r in rows]
