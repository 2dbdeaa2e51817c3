"""The aggregator's store: the one place that speaks SQL.

- :mod:`.schema`: migrations, connections, transactions and savepoints;
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
  comparisons), :mod:`.rollouts`.

Every function takes the connection first and keyword-only arguments beyond two, and runs in
the caller's transaction. That is the seam for a second backend (PostgreSQL through SQLAlchemy
Core): the same functions over another connection type, callers unchanged.
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
    migrations,
    savepoint,
    transaction,
)

__all__ = [
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
    "rollouts",
    "savepoint",
    "snapshot_files",
    "transaction",
    "workers",
]
