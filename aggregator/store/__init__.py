"""The aggregator's store: the one place that speaks SQL.

- :mod:`.schema`: connections, transactions and savepoints; :mod:`.sqlite_schema` and
  :mod:`.pg_schema`: the migrations of each backend;
- :mod:`.models`: the typed rows every function returns (never a database row);
- one access module per group of tables: :mod:`.access` (users, tokens, sessions),
  :mod:`.messages` (messages and threats),
  :mod:`.events`, :mod:`.agents`, :mod:`.configs` (the agent configs in force),
  :mod:`.lineage` (artifacts, runs, used, generated; with :mod:`.compact_lineage`, the lineage
  a message keeps in its row),
  :mod:`.notifications` (and their attempts), :mod:`.plots`, :mod:`.counters`,
  :mod:`.workers` (the ingest workers' heartbeats),
  :mod:`.snapshot_files` (snapshots kept and deleted), :mod:`.prune` (database retention),
  :mod:`.releases` (signed releases) and :mod:`.ota` (desired states, update reports, shadow
  comparisons), :mod:`.rollouts`;
- :mod:`.locks`: the finer write locks of the ingest's batches on PostgreSQL.

Every function takes the connection first and keyword-only arguments beyond two, and runs in
the caller's transaction, on either backend: SQLite's own connection or the PostgreSQL
backend's (:mod:`.backend`; :mod:`.pg_schema` its migrations; :data:`POSTGRES_MODULES` says
which modules work there yet).
``tests/test_store_boundary.py`` fails when SQL appears anywhere else.
"""

from aggregator.store import (
    access,
    agents,
    compact_lineage,
    configs,
    counters,
    events,
    lineage,
    locks,
    logs,
    messages,
    models,
    notifications,
    ota,
    plots,
    prune,
    releases,
    rollouts,
    snapshot_files,
    workers,
)
from aggregator.store.schema import (
    POSTGRES_MODULES,
    BackendIncomplete,
    Connection,
    DatabaseError,
    ReadPool,
    StoreCorrupt,
    StoreUnavailable,
    WriteTurns,
    backup,
    check,
    checkpoint,
    connect,
    migrate,
    require_complete,
    savepoint,
    transaction,
)
from aggregator.store.sqlite_schema import migrations

__all__ = [
    "POSTGRES_MODULES",
    "BackendIncomplete",
    "Connection",
    "DatabaseError",
    "ReadPool",
    "StoreCorrupt",
    "StoreUnavailable",
    "WriteTurns",
    "access",
    "agents",
    "backup",
    "check",
    "checkpoint",
    "compact_lineage",
    "configs",
    "connect",
    "counters",
    "events",
    "lineage",
    "locks",
    "logs",
    "messages",
    "migrate",
    "migrations",
    "models",
    "notifications",
    "ota",
    "plots",
    "prune",
    "releases",
    "require_complete",
    "rollouts",
    "savepoint",
    "snapshot_files",
    "transaction",
    "workers",
]
