"""The store's two backends behind one connection interface.

SQLite (the embedded default) is Python's own ``sqlite3.Connection``, used as it always was:
nothing is wrapped, so its behaviour and its cost per statement stay exactly what the
benchmarks measured. PostgreSQL is a psycopg 3 connection wrapped in :class:`PgConnection`,
which offers the part of ``sqlite3.Connection`` the store modules use (``execute``,
``executemany``, ``in_transaction``, rows read by index or by column name) and translates the
one thing every statement differs in, the ``?`` placeholders, to PostgreSQL's numbered ``$1``,
``$2``, ... once per statement text, for psycopg's raw cursor (which sends them as they are).
A batch's many-row inserts go in one ``COPY`` (:meth:`PgConnection.copy_rows`).

What the two dialects spell differently (``MAX(a, b)`` against ``GREATEST(a, b)``,
``group_concat`` against ``string_agg``, SQLite's sequence table against a PostgreSQL sequence)
is chosen in the store module that needs it, with :func:`is_postgres`; the migrations of each
backend are in :mod:`.schema` (SQLite, sqlite-utils) and :mod:`.pg_schema` (PostgreSQL).
"""

from __future__ import annotations

import functools
import itertools
import re
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import psycopg

POSTGRES_SCHEMES = ("postgresql", "postgres")


def is_postgres_url(target: object) -> bool:
    """Whether ``target`` (a path or a URL) names a PostgreSQL database."""
    return isinstance(target, str) and urlsplit(target).scheme in POSTGRES_SCHEMES


def redact(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()


CACHED_SQL_CHARS = 4000
"""Statements up to this long are translated once and cached (the store runs a few hundred
distinct texts); longer ones, the many-row ``INSERT ... VALUES (?, ?), ...`` of a batch whose
text depends on its size, each time, by :func:`_numbered` where they have no quotes and no
names (C-speed string operations, not a loop over characters)."""


class Native(NamedTuple):
    """A statement in PostgreSQL's own placeholder syntax (``$1``, ``$2``, ...)."""

    sql: str
    names: tuple[str, ...] | None
    """For ``:name`` placeholders: the name of ``$1``, ``$2``, ...; None for ``?``."""


def to_native(sql: str) -> Native:
    """``sql`` with PostgreSQL's numbered placeholders: each ``?`` outside quotes as ``$1``,
    ``$2``, ... in turn; each ``:name`` as the number of that name (``::`` casts stay).

    The statement then goes to psycopg's raw cursor, which hands it to the server as it is:
    psycopg neither parses it for ``%s`` (a regular-expression pass over the whole text, every
    time for a statement with more than 50 values: most of the ingest's CPU on PostgreSQL
    before, in its many-row ``INSERT`` s) nor wants ``%`` doubled."""
    if len(sql) <= CACHED_SQL_CHARS:
        return _cached(sql)
    if "'" in sql or '"' in sql or ":" in sql:
        return _translate(sql)
    return Native(_numbered(sql), None)


_DOLLARS: list[str] = []


def _numbered(sql: str) -> str:
    """``sql``, which has no quotes and no names, with each ``?`` as ``$1``, ``$2``, ..."""
    parts = sql.split("?")
    if len(parts) > len(_DOLLARS):
        _DOLLARS.extend(f"${i}" for i in range(len(_DOLLARS) + 1, len(parts) + 1))
    pairs = zip(parts, _DOLLARS[: len(parts) - 1], strict=False)  # the last part has no mark
    return "".join(itertools.chain.from_iterable(pairs)) + parts[-1]


@functools.lru_cache(maxsize=2048)
def _cached(sql: str) -> Native:
    return _translate(sql)


def _translate(sql: str) -> Native:
    out: list[str] = []
    quote: str | None = None
    positional = 0
    names: dict[str, int] = {}
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if quote is not None:
            if ch == quote:
                quote = None
            out.append(ch)
        elif ch in ("'", '"'):
            quote = ch
            out.append(ch)
        elif ch == "?":
            positional += 1
            out.append(f"${positional}")
        elif ch == ":" and i + 1 < n and sql[i + 1] == ":":
            out.append("::")
            i += 1
        elif ch == ":" and i + 1 < n and (sql[i + 1].isalpha() or sql[i + 1] == "_"):
            j = i + 1
            while j < n and (sql[j].isalnum() or sql[j] == "_"):
                j += 1
            number = names.setdefault(sql[i + 1 : j], len(names) + 1)
            out.append(f"${number}")
            i = j
            continue
        else:
            out.append(ch)
        i += 1
    if positional and names:
        raise ValueError(f"a statement with both ? and :name placeholders: {sql[:200]}")
    return Native("".join(out), tuple(names) if names else None)


class Row(tuple):  # type: ignore[type-arg]
    """A result row read by index (``row[0]``, unpacking) or by column name (``row["id"]``),
    as ``sqlite3.Row`` is."""

    _index: dict[str, int]

    def __new__(cls, values: Sequence[Any], index: dict[str, int]) -> Row:
        row = super().__new__(cls, values)
        row._index = index
        return row

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._index)


def _row_factory(cursor: Any) -> Any:
    description = cursor.description
    if description is None:
        return tuple
    index = {col.name: i for i, col in enumerate(description)}

    def make(values: Sequence[Any]) -> Row:
        return Row(values, index)

    return make


class PgDatabaseError(sqlite3.DatabaseError):
    """A PostgreSQL statement failed (psycopg's error is its ``__cause__``). It is a
    ``sqlite3.DatabaseError`` on purpose: what catches the store's errors
    (``store.DatabaseError``) and what tells a message's fault from the store's
    (:func:`aggregator.records.is_store_failure`) then treat both backends alike."""


class PgIntegrityError(sqlite3.IntegrityError, PgDatabaseError):
    """A constraint refused the row (unique, not null, foreign key, check)."""


class PgDataError(sqlite3.DataError, PgDatabaseError):
    """A value the column cannot hold (out of range, invalid text)."""


def translate(exc: Exception) -> PgDatabaseError:
    """The store's error for a psycopg error."""
    import psycopg

    kind: type[PgDatabaseError] = PgDatabaseError
    if isinstance(exc, psycopg.IntegrityError):
        kind = PgIntegrityError
    elif isinstance(exc, psycopg.DataError):
        kind = PgDataError
    found = kind(f"{type(exc).__name__}: {exc}")
    found.sqlstate = getattr(exc, "sqlstate", None)  # type: ignore[attr-defined]
    return found


def _ordered(native: Native, params: Sequence[Any] | Mapping[str, Any]) -> Sequence[Any]:
    """The values of ``params`` in the order of ``native`` 's numbered placeholders."""
    if native.names is None:
        if isinstance(params, Mapping):
            raise TypeError(f"values by name for a statement with ?: {native.sql[:200]}")
        return params
    if not isinstance(params, Mapping):
        return params  # in the order of the names' first places, as sqlite3 binds them
    return [params[name] for name in native.names]


class PgCursor:
    """The result of :meth:`PgConnection.execute`: rows, ``rowcount``; ``lastrowid`` is None
    (PostgreSQL has no rowid: the store asks ``RETURNING id``)."""

    lastrowid = None

    def __init__(self, cursor: psycopg.Cursor[Any]) -> None:
        self._cursor = cursor

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    def fetchone(self) -> Any:
        return self._cursor.fetchone() if self._cursor.description is not None else None

    def fetchall(self) -> list[Any]:
        return self._cursor.fetchall() if self._cursor.description is not None else []

    def __iter__(self) -> Iterator[Any]:
        return iter(self.fetchall())


_INSERT_INTO = re.compile(r"INSERT INTO (\w+ \([\w, ]+\)) VALUES")


class PgConnection:
    """A psycopg connection in autocommit mode (transactions are explicit, as on SQLite)."""

    dialect = "postgresql"

    def __init__(self, conn: psycopg.Connection[Any], *, url: str) -> None:
        import psycopg

        self.raw = conn
        self.url = url
        self._errors = psycopg.Error
        self._cursor = psycopg.RawCursor

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> PgCursor:
        """Run one statement; :class:`PgDatabaseError` (a ``sqlite3.DatabaseError``) when it
        fails."""
        native = to_native(sql)
        cur = self._cursor(self.raw, row_factory=_row_factory)
        try:
            # A statement longer than the cache's limit is a batch's many-row text, whose
            # length varies: psycopg would prepare each size it saw five times, then evict them.
            cur.execute(
                native.sql,
                _ordered(native, params) if params else None,
                prepare=False if len(sql) > CACHED_SQL_CHARS else None,
            )
        except self._errors as exc:
            raise translate(exc) from exc
        return PgCursor(cur)

    def executemany(self, sql: str, rows: Any) -> PgCursor:
        """Run one statement for each of ``rows`` (psycopg sends them all in one pipeline and
        prepares the statement: one round trip, one parse)."""
        native = to_native(sql)
        cur = self._cursor(self.raw, row_factory=_row_factory)
        try:
            cur.executemany(native.sql, [_ordered(native, r) for r in rows])
        except self._errors as exc:
            raise translate(exc) from exc
        return PgCursor(cur)

    def copy_rows(self, insert: str, rows: Sequence[Sequence[Any]]) -> None:
        """Store ``rows`` with ``insert`` (``INSERT INTO t (a, b) VALUES``, without the values)
        as one ``COPY t (a, b) FROM STDIN``: for the ingest's many-row inserts, about half the
        server's time of a many-row ``INSERT`` and a third of the client's (no statement of
        thousands of placeholders to send, parse and plan; psycopg writes the rows in C).
        The same rows, defaults, constraints and triggers as the ``INSERT``; a refused row
        fails it all, as it fails the ``INSERT``."""
        found = _INSERT_INTO.fullmatch(insert)
        if found is None:
            raise ValueError(f"not an INSERT INTO t (columns) VALUES: {insert[:200]}")
        cur = self.raw.cursor()
        try:
            with cur.copy(f"COPY {found[1]} FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        except self._errors as exc:
            raise translate(exc) from exc
        finally:
            cur.close()

    @property
    def in_transaction(self) -> bool:
        from psycopg.pq import TransactionStatus

        return self.raw.info.transaction_status != TransactionStatus.IDLE

    def commit(self) -> None:
        if self.in_transaction:
            self.execute("COMMIT")

    def rollback(self) -> None:
        if self.in_transaction:
            self.execute("ROLLBACK")

    def close(self) -> None:
        self.raw.close()


def is_postgres(conn: object) -> bool:
    """Whether ``conn`` is a PostgreSQL connection (else it is SQLite's)."""
    return not isinstance(conn, sqlite3.Connection)


def greatest(conn: object) -> str:
    """The scalar maximum of two values: SQLite's two-argument ``MAX``, PostgreSQL's
    ``GREATEST`` (both ignore nothing: a NULL argument makes SQLite's NULL, PostgreSQL's
    the other value; the store passes COALESCEd values where that matters)."""
    return "GREATEST" if is_postgres(conn) else "MAX"
