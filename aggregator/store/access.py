"""Who may use the API and the pages (tables ``users``, ``api_tokens``, ``sessions``,
``link_keys``). Secrets are never stored: a token or session cookie is kept as its sha256, a
password as its argon2 hash (made in :mod:`aggregator.auth.secrets`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aggregator.store.schema import Connection


@dataclass(frozen=True)
class UserRow:
    """A person who logs in to the pages."""

    name: str
    role: str
    password_hash: str
    created_ts: float


@dataclass(frozen=True)
class TokenRow:
    """A bearer token for scripts; ``hint`` is its first characters, enough to tell it apart."""

    id: int
    name: str
    role: str
    hint: str
    created_ts: float
    revoked_ts: float | None


@dataclass(frozen=True)
class SessionRow:
    """A page login: the user, the CSRF token its forms send back, when it expires."""

    user_name: str
    role: str
    csrf: str
    created_ts: float
    expires_ts: float


# users ---------------------------------------------------------------------------------------


def _user(row: Sequence[Any]) -> UserRow:
    return UserRow(name=row[0], role=row[1], password_hash=row[2], created_ts=row[3])


def add_user(conn: Connection, *, name: str, role: str, password_hash: str, now_ts: float) -> bool:
    """A new user; False when the name is taken."""
    cur = conn.execute(
        "INSERT INTO users (name, role, password_hash, created_ts) VALUES (?, ?, ?, ?) "
        "ON CONFLICT DO NOTHING",
        (name, role, password_hash, now_ts),
    )
    return cur.rowcount == 1


def set_password(conn: Connection, name: str, password_hash: str) -> bool:
    cur = conn.execute("UPDATE users SET password_hash = ? WHERE name = ?", (password_hash, name))
    return cur.rowcount == 1


def get_user(conn: Connection, name: str) -> UserRow | None:
    row = conn.execute(
        "SELECT name, role, password_hash, created_ts FROM users WHERE name = ?", (name,)
    ).fetchone()
    return None if row is None else _user(row)


def list_users(conn: Connection) -> list[UserRow]:
    rows = conn.execute("SELECT name, role, password_hash, created_ts FROM users ORDER BY name")
    return [_user(r) for r in rows]


def remove_user(conn: Connection, name: str) -> bool:
    """Remove a user and end their sessions; False when there is no such user."""
    conn.execute("DELETE FROM sessions WHERE user_name = ?", (name,))
    return conn.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount == 1


# tokens --------------------------------------------------------------------------------------

_TOKEN_COLUMNS = "id, name, role, hint, created_ts, revoked_ts"


def _token(row: Sequence[Any]) -> TokenRow:
    return TokenRow(*row)


def add_token(
    conn: Connection, *, name: str, role: str, token_sha256: str, hint: str, now_ts: float
) -> int:
    (token_id,) = conn.execute(
        "INSERT INTO api_tokens (name, role, token_sha256, hint, created_ts) "
        "VALUES (?, ?, ?, ?, ?) RETURNING id",
        (name, role, token_sha256, hint, now_ts),
    ).fetchone()
    return int(token_id)


def token_by_hash(conn: Connection, token_sha256: str) -> TokenRow | None:
    """The token with this sha256, unless revoked."""
    row = conn.execute(
        f"SELECT {_TOKEN_COLUMNS} FROM api_tokens WHERE token_sha256 = ? AND revoked_ts IS NULL",
        (token_sha256,),
    ).fetchone()
    return None if row is None else _token(row)


def list_tokens(conn: Connection, *, revoked: bool = False) -> list[TokenRow]:
    """Tokens, oldest first; revoked ones only when asked."""
    clause = "" if revoked else " WHERE revoked_ts IS NULL"
    rows = conn.execute(f"SELECT {_TOKEN_COLUMNS} FROM api_tokens{clause} ORDER BY id")
    return [_token(r) for r in rows]


def get_token(conn: Connection, token_id: int) -> TokenRow | None:
    row = conn.execute(
        f"SELECT {_TOKEN_COLUMNS} FROM api_tokens WHERE id = ?", (token_id,)
    ).fetchone()
    return None if row is None else _token(row)


def revoke_token(conn: Connection, token_id: int, *, now_ts: float) -> bool:
    """Revoke a token; False when there is no such token or it was revoked already."""
    cur = conn.execute(
        "UPDATE api_tokens SET revoked_ts = ? WHERE id = ? AND revoked_ts IS NULL",
        (now_ts, token_id),
    )
    return cur.rowcount == 1


# sessions ------------------------------------------------------------------------------------


def add_session(
    conn: Connection,
    *,
    id_sha256: str,
    user_name: str,
    csrf: str,
    now_ts: float,
    expires_ts: float,
) -> None:
    conn.execute("DELETE FROM sessions WHERE expires_ts < ?", (now_ts,))
    conn.execute(
        "INSERT INTO sessions (id_sha256, user_name, csrf, created_ts, expires_ts) "
        "VALUES (?, ?, ?, ?, ?)",
        (id_sha256, user_name, csrf, now_ts, expires_ts),
    )


def session_by_hash(conn: Connection, id_sha256: str, *, now_ts: float) -> SessionRow | None:
    """The live session with this sha256, with its user's role now (a removed user: None)."""
    row = conn.execute(
        "SELECT s.user_name, u.role, s.csrf, s.created_ts, s.expires_ts FROM sessions s "
        "JOIN users u ON u.name = s.user_name WHERE s.id_sha256 = ? AND s.expires_ts >= ?",
        (id_sha256, now_ts),
    ).fetchone()
    return None if row is None else SessionRow(*row)


def end_session(conn: Connection, id_sha256: str) -> None:
    conn.execute("DELETE FROM sessions WHERE id_sha256 = ?", (id_sha256,))


# signed links --------------------------------------------------------------------------------


def link_key(conn: Connection, name: str = "snapshot_links") -> bytes:
    """The secret that signs links of this kind (made by the migration)."""
    row = conn.execute("SELECT secret FROM link_keys WHERE name = ?", (name,)).fetchone()
    if row is None:
        raise LookupError(f"no link key {name!r}: the store is not migrated")
    return bytes.fromhex(row[0])
