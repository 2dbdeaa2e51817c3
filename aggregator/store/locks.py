"""The finer write locks of the ingest's batches on PostgreSQL (docs/scale.md, "Locking").

Every write transaction holds :data:`.schema.WRITE_LOCK`: exclusively, except a batch of threat
messages (``schema.transaction(conn, shared=True)``), which holds it shared and then takes
exclusive transaction-level advisory locks on what it depends on, so that batches of different
agents and group keys run at the same time and batches of the same one take turns:

1. :func:`agents`: each agent of the batch (its messages, their dedupe, its ``agents`` row, the
   events bearing its id), once its messages are read and admitted;
2. :func:`threats`: each group key of its threats and of its agents' open events (a site's
   events span agents), each camera (a notifier's cool-down reads the camera's other events)
   and each snapshot it stores (an ending event's policy may delete the same bytes), before
   the first write.

Each step takes its locks in one statement, ordered by (namespace, hash), and every batch takes
step 1 before step 2, before its first write; what it writes afterwards no batch without one
of its locks writes (docs/scale.md, "Locking", goes through it statement by statement), so no
two batches wait on each other (no deadlock).
The two-integer form of the advisory locks (namespace, ``hashtext`` of the name) never meets
the one-integer :data:`.schema.WRITE_LOCK` and :data:`.pg_schema.MIGRATE_LOCK`; two names of
one hash share a lock (more waiting, never less safety).

On SQLite every function here does nothing: there writers run one at a time
(``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

from collections.abc import Iterable

from aggregator.store.backend import is_postgres
from aggregator.store.pg_schema import RUNS_LOCK_NAMESPACE
from aggregator.store.schema import Connection

AGENTS = 0x5EC470
"""The namespace of the agents' locks (first integer of ``pg_advisory_xact_lock(int, int)``)."""
GROUP_KEYS = 0x5EC471
"""The namespace of the group keys' locks."""
CAMERAS = 0x5EC472
"""The namespace of the cameras' locks (a notifier's cool-down is per camera name)."""
SNAPSHOTS = 0x5EC473
"""The namespace of the snapshots' locks (by sha256)."""
RUNS = RUNS_LOCK_NAMESPACE
"""The namespace of the session lock around the reservation of run ids
(``secagg_reserve_runs``, :func:`.pg_schema.p004_finer_write_locks`)."""

_AGENTS_SQL = (
    f"SELECT pg_advisory_xact_lock({AGENTS}, h) FROM "
    "(SELECT DISTINCT hashtext(a) AS h FROM unnest(?::text[]) AS a ORDER BY h OFFSET 0) AS l"
)
_THREATS_SQL = (
    "SELECT pg_advisory_xact_lock(l.ns, l.h) FROM (SELECT DISTINCT ns, h FROM ("
    f"SELECT {GROUP_KEYS} AS ns, hashtext(k) AS h FROM unnest(?::text[]) AS k "
    f"UNION ALL SELECT {GROUP_KEYS}, hashtext(group_key) FROM events "
    "WHERE ended_ts IS NULL AND group_key IS NOT NULL AND agent_id = ANY(?::text[]) "
    f"UNION ALL SELECT {CAMERAS}, hashtext(c) FROM unnest(?::text[]) AS c "
    f"UNION ALL SELECT {SNAPSHOTS}, hashtext(s) FROM unnest(?::text[]) AS s"
    ") AS wanted ORDER BY ns, h OFFSET 0) AS l"
)
"""``OFFSET 0`` keeps the ordered subquery a subquery: the locks are taken in its order."""


def fine(conn: Connection) -> bool:
    """Do writers on this connection take the finer locks (PostgreSQL), or does every writer
    run alone (SQLite)?"""
    return is_postgres(conn)


def agents(conn: Connection, agent_ids: Iterable[str]) -> None:
    """Step 1: lock these agents (PostgreSQL; nothing on SQLite)."""
    if is_postgres(conn):
        conn.execute(_AGENTS_SQL, (sorted(set(agent_ids)),)).fetchall()


def threats(
    conn: Connection,
    *,
    agent_ids: Iterable[str],
    group_keys: Iterable[str],
    cameras: Iterable[str] = (),
    snapshots: Iterable[str] = (),
) -> None:
    """Step 2, once :func:`agents` holds ``agent_ids``: lock these group keys and those of the
    agents' open events, these cameras and these snapshots' sha256s (PostgreSQL; nothing on
    SQLite). The agents' open events cannot change group key, and no other batch can start
    one for these agents meanwhile: the set read here stays the set to lock."""
    if is_postgres(conn):
        conn.execute(
            _THREATS_SQL,
            (
                sorted(set(group_keys)),
                sorted(set(agent_ids)),
                sorted(set(cameras)),
                sorted(set(snapshots)),
            ),
        ).fetchall()


def try_snapshot(conn: Connection, sha256: str) -> bool:
    """Lock this snapshot if no other batch holds it (it is storing the same bytes): True when
    locked (always on SQLite), False when the caller must leave the file alone."""
    if not is_postgres(conn):
        return True
    (got,) = conn.execute(
        f"SELECT pg_try_advisory_xact_lock({SNAPSHOTS}, hashtext(?))", (sha256,)
    ).fetchone()
    return bool(got)
