"""The store's two backends behind one connection interface.

SQLite (the embedded default) is Python's own ``sqlite3.Connection``, used as it always was:
nothing is wrapped, so its behaviour and its cost per statement stay exactly what the
benchmarks measured. PostgreSQL is a psycopg 3 connection wrapped in :class:`PgConnection`,
which offers the part of ``sqlite3.Connection`` the store modules use (``execute``,
``executemany``, ``in_transaction``, rows read by index or by column name) and translates the
one thing every statement differs in, the ``?`` placeholders, once per statement text.

What the two dialects spell differently (``MAX(a, b)`` against ``GREATEST(a, b)``,
``group_concat`` against ``string_agg``, SQLite's sequence table against a PostgreSQL sequence)
is chosen in the store module that needs it, with :func:`is_postgres`; the migrations of each
backend are in :mod:`.schema` (SQLite, sqlite-utils) and :mod:`.pg_schema` (PostgreSQL).
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any
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
text depends on its size, each time (their translation is cheap beside their rows)."""


def to_pyformat(sql: str) -> str:
    """``sql`` in psycopg's placeholder syntax: each ``?`` outside quotes as ``%s``, each
    ``:name`` as ``%(name)s`` (``::`` casts stay), each ``%`` doubled."""
    return _cached(sql) if len(sql) <= CACHED_SQL_CHARS else _translate(sql)


@functools.lru_cache(maxsize=2048)
def _cached(sql: str) -> str:
    return _translate(sql)


def _translate(sql: str) -> str:
    out: list[str] = []
    quote: str | None = None
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if quote is not None:
            if ch == quote:
                quote = None
            out.append("%%" if ch == "%" else ch)
        elif ch in ("'", '"'):
            quote = ch
            out.append(ch)
        elif ch == "?":
            out.append("%s")
        elif ch == "%":
            out.append("%%")
        elif ch == ":" and i + 1 < n and sql[i + 1] == ":":
            out.append("::")
            i += 1
        elif ch == ":" and i + 1 < n and (sql[i + 1].isalpha() or sql[i + 1] == "_"):
            j = i + 1
            while j < n and (sql[j].isalnum() or sql[j] == "_"):
                j += 1
            out.append(f"%({sql[i + 1 : j]})s")
            i = j
            continue
        else:
            out.append(ch)
        i += 1
    return "".join(out)


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


class PgConnection:
    """A psycopg connection in autocommit mode (transactions are explicit, as on SQLite)."""

    dialect = "postgresql"

    def __init__(self, conn: psycopg.Connection[Any], *, url: str) -> None:
        import psycopg

        self.raw = conn
        self.url = url
        self._errors = psycopg.Error

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> PgCursor:
        """Run one statement; :class:`PgDatabaseError` (a ``sqlite3.DatabaseError``) when it
        fails."""
        cur = self.raw.cursor(row_factory=_row_factory)
        try:
            cur.execute(to_pyformat(sql), params or None)
        except self._errors as exc:
            raise translate(exc) from exc
        return PgCursor(cur)

    def executemany(self, sql: str, rows: Any) -> PgCursor:
        cur = self.raw.cursor(row_factory=_row_factory)
        try:
            cur.executemany(to_pyformat(sql), rows)
        except self._errors as exc:
            raise translate(exc) from exc
        return PgCursor(cur)

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
