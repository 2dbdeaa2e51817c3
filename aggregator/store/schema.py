"""The schema of the aggregator's SQLite store (WAL, one writer) and its connections.

The migrations are :mod:`.sqlite_schema`'s (SQLite) and :mod:`.pg_schema`'s (PostgreSQL).
Readers open their own read-only connections; transactions are explicit (:func:`transaction`,
:func:`savepoint`).

:func:`connect`, :func:`migrate`, :func:`transaction` and :func:`savepoint` also take the
PostgreSQL backend (a ``postgresql://`` URL, :mod:`.backend`, migrations in :mod:`.pg_schema`).
"""

from __future__ import annotations

import fcntl
import queue
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, closing, contextmanager
from pathlib import Path
from types import TracebackType
from typing import IO, Any, overload

import sqlite_utils

from aggregator.store.backend import PgConnection, is_postgres, is_postgres_url, redact

Connection = sqlite3.Connection | PgConnection
"""What every store function takes first: SQLite's own connection, or the PostgreSQL backend's
(:class:`aggregator.store.backend.PgConnection`); callers outside the store only pass it
along."""

Target = Path | str
"""Where the store lives: a SQLite file, or a ``postgresql://`` URL."""

DatabaseError = sqlite3.Error
"""The base class of what a failing statement raises, on both backends (PostgreSQL's errors
are translated into subclasses of it: :class:`aggregator.store.backend.PgDatabaseError`)."""


class StoreUnavailable(Exception):
    """The database cannot be opened (missing file, no permission, not a database)."""


class StoreCorrupt(StoreUnavailable):
    """The database file fails SQLite's integrity check: ``secagg`` refuses to start on it."""


RECOVERY_STEPS = """The store is corrupt; secagg will not write to it. To recover:
  1. stop secagg and keep the broken file: mv {path} {path}.broken (and its -wal, -shm);
  2. restore the latest backup (`secagg backup` writes one while secagg runs):
     cp BACKUP.sqlite {path}
     or salvage what SQLite can read:
     sqlite3 {path}.broken .recover | sqlite3 {path}
  3. start secagg: the agents send again what they still hold (their outboxes keep every
     threat until a receipt), the broker what waited for the aggregator's session."""


POSTGRES_MODULES = {
    "schema": True,
    "counters": True,
    "configs": True,
    "access": True,
    "plots": True,
    "agents": True,
    "releases": True,
    "rollouts": True,
    "ota": True,
    "notifications": True,
    "events": True,
    "messages": True,
    "lineage": True,
    "compact_lineage": True,
    "snapshot_files": True,
    "prune": True,
    "logs": True,
    "workers": True,
}
"""Which store modules work on PostgreSQL, each tested on both backends
(``tests/test_store_backends.py``); docs/scale.md, "PostgreSQL backend", says the same."""

POSTGRES_MISSING_OUTSIDE_THE_STORE: tuple[str, ...] = ()
"""What secagg needs beyond the store modules before it can run on PostgreSQL (nothing since
``tests/test_postgres_service.py`` runs ``secagg serve`` there; a part added later that does not
work on PostgreSQL yet is named here, and secagg refuses PostgreSQL until it does)."""


class BackendIncomplete(StoreUnavailable):
    """The store is configured on PostgreSQL and some store modules do not work there yet."""


def require_complete(target: Target) -> None:
    """BackendIncomplete when ``target`` is a PostgreSQL URL while some store module or some
    part of secagg around the store is not ported: secagg refuses to start rather than run
    half a service."""
    missing = [name for name, works in POSTGRES_MODULES.items() if not works]
    missing += POSTGRES_MISSING_OUTSIDE_THE_STORE
    if is_postgres_url(target) and missing:
        raise BackendIncomplete(
            f"store.url {redact(str(target))}: the PostgreSQL backend is not complete yet; "
            f"what does not work on it yet: {'; '.join(missing)} "
            '(docs/scale.md, "PostgreSQL backend"). Use SQLite (store.path) for now.'
        )


def check(path: Path) -> None:
    """StoreCorrupt (with the recovery steps) when the database at ``path`` fails
    ``PRAGMA quick_check``; nothing when it passes or does not exist yet."""
    if not path.exists():
        return
    try:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            found = [str(r[0]) for r in conn.execute("PRAGMA quick_check").fetchall()]
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise StoreCorrupt(
            f"{path}: {type(exc).__name__}: {exc}\n{RECOVERY_STEPS.format(path=path)}"
        ) from exc
    if found != ["ok"]:
        raise StoreCorrupt(
            f"{path}: quick_check: {'; '.join(found[:3])}\n{RECOVERY_STEPS.format(path=path)}"
        )


def backup(path: Path, out: Path, *, pages_per_step: int = 4096) -> int:
    """Copy the database to ``out`` with SQLite's online backup, while the ingest goes on
    writing (each step copies ``pages_per_step`` pages; a write in between restarts nothing
    that was copied consistently). The copy is checked and renamed into place; returns its
    size in bytes."""
    tmp = out.with_name(out.name + ".tmp")
    tmp.unlink(missing_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    src = connect(path, readonly=True)
    try:
        dst = sqlite3.connect(tmp)
        try:
            src.backup(dst, pages=pages_per_step)
            dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        finally:
            dst.close()
    finally:
        src.close()
    check(tmp)
    tmp.replace(out)
    return out.stat().st_size


@overload
def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection: ...
@overload
def connect(path: Target, *, readonly: bool = False) -> Connection: ...
def connect(path: Target, *, readonly: bool = False) -> Connection:
    """A connection in autocommit mode (transactions are explicit); StoreUnavailable when the
    database cannot be opened. ``path``: a SQLite file, or a ``postgresql://`` URL."""
    if is_postgres_url(path):
        return _connect_postgres(str(path), readonly=readonly)
    path = Path(path)
    try:
        if readonly:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=5000")
    except (sqlite3.Error, OSError) as exc:
        raise StoreUnavailable(f"{path}: {exc}") from exc
    conn.row_factory = sqlite3.Row
    return conn


IDLE_IN_TRANSACTION_S = 60
"""PostgreSQL ends a session whose transaction waited this long for its client: a worker whose
machine died (or lost the network) mid-batch, whose connection the server cannot see close,
then releases its locks (docs/scale.md, "Locking"). No transaction of secagg waits on anything
but the database and its own work that long."""


def _connect_postgres(url: str, *, readonly: bool) -> PgConnection:
    import psycopg

    try:
        raw = psycopg.connect(url, autocommit=True, connect_timeout=10)
        if readonly:
            raw.execute("SET default_transaction_read_only = on")
        raw.execute("SET lock_timeout = '5s'")  # what busy_timeout=5000 is to SQLite
        # a writer whose machine died mid-transaction leaves its locks to the others after this
        raw.execute(f"SET idle_in_transaction_session_timeout = '{IDLE_IN_TRANSACTION_S}s'")
    except psycopg.Error as exc:
        raise StoreUnavailable(f"{redact(url)}: {exc}") from exc
    return PgConnection(raw, url=url)


class ReadPool:
    """A few read-only connections, each lent to one request at a time: opening a connection
    (and its WAL index) per request costs more than most queries the API runs."""

    def __init__(self, path: Target, *, size: int) -> None:
        self.path = path
        self.size = size
        self._idle: queue.SimpleQueue[Connection] = queue.SimpleQueue()
        self._made = 0
        self._lock = threading.Lock()

    @contextmanager
    def connection(self, *, wait: bool = True) -> Iterator[Connection]:
        """Lend a connection (a new one while fewer than ``size`` exist, else wait for one);
        StoreUnavailable when the database cannot be opened. ``wait=False`` (the event loop,
        which must never block on a connection that only the loop itself can give back):
        with all ``size`` lent, open one more for this request and close it afterwards."""
        try:
            conn = self._idle.get_nowait()
        except queue.Empty:
            with self._lock:
                make = self._made < self.size
                if make:
                    self._made += 1
            if make or not wait:
                try:
                    conn = connect(self.path, readonly=True)
                except StoreUnavailable:
                    if make:
                        with self._lock:
                            self._made -= 1
                    raise
            else:
                conn = self._idle.get()
            if not make and not wait:  # an extra one: not kept
                with closing(conn):
                    yield conn
                return
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:
                conn.rollback()
            raise
        finally:
            self._idle.put(conn)

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return


def migrate(path: Target) -> None:
    """Create or upgrade the schema. Processes that start together on one store (``secagg
    serve --role``) take turns: on SQLite an exclusive lock on ``<store>.migrate.lock`` around
    it; on PostgreSQL :func:`.pg_schema.apply` runs each migration under an advisory lock."""
    if is_postgres_url(path):
        from aggregator.store import pg_schema

        conn = _connect_postgres(str(path), readonly=False)
        try:
            pg_schema.apply(conn)
        finally:
            conn.close()
        return
    from aggregator.store import sqlite_schema  # its migrations use this module's savepoint

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.migrate.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        sconn = connect(path)
        try:
            sqlite_schema.migrations.apply(sqlite_utils.Database(sconn))
        finally:
            sconn.close()


def checkpoint(conn: Connection) -> None:
    """Move the write-ahead log into the database file and truncate it (at a clean stop).
    Nothing on PostgreSQL: the server checkpoints its own log."""
    if isinstance(conn, sqlite3.Connection):
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


WRITE_LOCK = 0x5EC466
"""The PostgreSQL advisory lock every write transaction takes. Exclusively by default: that
writer runs alone, as on SQLite (BEGIN IMMEDIATE), so each store function sees what it read
until it commits. Shared by the ingest's batches of threat messages (``transaction(conn,
shared=True)``), which then lock what they depend on (:mod:`.locks`) and run side by side; an
exclusive writer (the sweep, retention, the API, a batch with a status) waits for them to
commit, and they for it (docs/scale.md, "Locking")."""


@contextmanager
def transaction(conn: Connection, *, shared: bool = False) -> Iterator[Connection]:
    """BEGIN IMMEDIATE ... COMMIT (PostgreSQL: BEGIN and the write lock, shared when
    ``shared``: the caller takes its finer locks, :mod:`.locks`), rolled back on any error.
    ``shared`` changes nothing on SQLite."""
    if is_postgres(conn):
        conn.execute("BEGIN")
        try:
            take = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
            conn.execute(f"SELECT {take}(?)", (WRITE_LOCK,))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    else:
        conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:  # SQLite may have rolled back itself (a full disk: SQLITE_FULL)
            conn.execute("ROLLBACK")
        raise
    try:
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


class WriteTurns:
    """The writers of one store on one machine (``secagg serve --role ingest`` workers) take
    turns on ``<store>.write.lock`` (``flock``) around their write transactions: the kernel
    wakes the next one as soon as the lock is free, where SQLite's busy handler, the only
    wait ``BEGIN IMMEDIATE`` has, sleeps 1, 2, 5, ... up to 100 ms between tries and leaves
    the database idle meanwhile. Correctness does not depend on it (a writer that does not
    take its turn waits on ``busy_timeout``).

    On PostgreSQL (``path`` a ``postgresql://`` URL) it does nothing: there the write
    transaction's advisory locks (:data:`WRITE_LOCK`, :mod:`.locks`) make writers on every
    machine take turns where they must, and the server wakes the next one as soon as they are
    released."""

    def __init__(self, path: Target) -> None:
        self._lock: IO[str] | None = None
        if not is_postgres_url(path):
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._lock = open(f"{path}.write.lock", "a")  # noqa: SIM115 (held for the life)

    @contextmanager
    def turn(self) -> Iterator[None]:
        if self._lock is None:
            yield
            return
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()


MAX_VARIABLES = 32766
"""Values one statement may bind (SQLite's SQLITE_MAX_VARIABLE_NUMBER since 3.32)."""


def insert_values(
    conn: Connection, insert: str, rows: Sequence[Sequence[Any]], *, then: str = ""
) -> None:
    """Run ``insert`` (``INSERT INTO t (a, b) VALUES``, without the values; ``then``: what
    follows them, an ``ON CONFLICT`` clause) for all ``rows`` with
    as few statements as SQLite allows: one ``VALUES (?, ?), (?, ?), ...`` for as many rows as
    fit, where ``executemany`` would run one statement a row. Python's sqlite3 lets other
    threads run while each statement runs, and takes the interpreter lock back after it: a
    statement a row means waiting for that lock once a row, which the ingest's network thread
    holds most of the time. On PostgreSQL, without ``then``, the rows go in one ``COPY``
    (:meth:`~aggregator.store.backend.PgConnection.copy_rows`)."""
    if not rows:
        return
    if isinstance(conn, PgConnection) and not then:
        conn.copy_rows(insert, rows)  # PostgreSQL's bulk path (COPY); SQLite has none
        return
    width = len(rows[0])
    per = max(1, MAX_VARIABLES // width)
    one = "(" + ", ".join("?" * width) + ")"
    for start in range(0, len(rows), per):
        chunk = rows[start : start + per]
        conn.execute(
            f"{insert} {', '.join([one] * len(chunk))} {then}", [v for row in chunk for v in row]
        )


class savepoint:  # lower case: used like the function-style context managers above
    """A savepoint inside the open transaction (or a transaction of its own): what happens in
    it is undone on any error, and the error propagates. (A class, not a generator: the ingest
    opens one per message.)"""

    def __init__(self, conn: Connection, name: str = "step") -> None:
        if not name.isidentifier():
            raise ValueError(f"savepoint name {name!r} is not an identifier")
        self.conn = conn
        self.name = name
        self.own: AbstractContextManager[Connection] | None = None

    def __enter__(self) -> Connection:
        if is_postgres(self.conn) and not self.conn.in_transaction:
            # PostgreSQL has no savepoint outside a transaction: this one opens its own.
            self.own = transaction(self.conn)
            self.own.__enter__()
        self.conn.execute(f"SAVEPOINT {self.name}")
        return self.conn

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None = None,
        tb: TracebackType | None = None,
    ) -> None:
        own, self.own = self.own, None
        if not self.conn.in_transaction:
            return  # SQLite ended the transaction itself (a full disk): nothing to undo here
        if exc_type is not None:
            self.conn.execute(f"ROLLBACK TO {self.name}")
        self.conn.execute(f"RELEASE {self.name}")
        if own is not None:
            own.__exit__(exc_type, exc, tb)
