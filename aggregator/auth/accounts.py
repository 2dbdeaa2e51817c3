"""Users, tokens and sessions: what ``secagg user|token`` and the login page do to the store.
Each function runs in the caller's transaction."""

from __future__ import annotations

import re
import secrets as _random
import time
from dataclasses import dataclass

from aggregator import store
from aggregator.auth import secrets
from aggregator.auth.roles import Role

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


class AccountError(ValueError):
    """A user or token cannot be made as asked (a taken name, a bad role, a short password)."""


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise AccountError(
            f"{name!r} is not a usable name (letters, digits, '_', '.', '@', '-'; 64 at most)"
        )
    return name


@dataclass(frozen=True)
class NewToken:
    id: int
    name: str
    role: Role
    token: str
    """the secret itself: shown once, never stored"""


def create_token(conn: store.Connection, *, name: str, role: Role) -> NewToken:
    token = secrets.new_token()
    token_id = store.access.add_token(
        conn,
        name=check_name(name),
        role=role.name,
        token_sha256=secrets.digest(token),
        hint=secrets.hint(token),
        now_ts=time.time(),
    )
    return NewToken(token_id, name, role, token)


def add_user(conn: store.Connection, *, name: str, role: Role, password: str) -> None:
    try:
        password_hash = secrets.hash_password(password)
    except ValueError as exc:
        raise AccountError(str(exc)) from exc
    if not store.access.add_user(
        conn, name=check_name(name), role=role.name, password_hash=password_hash, now_ts=time.time()
    ):
        raise AccountError(f"user {name!r} exists (secagg user passwd to change the password)")


def set_password(conn: store.Connection, *, name: str, password: str) -> None:
    try:
        password_hash = secrets.hash_password(password)
    except ValueError as exc:
        raise AccountError(str(exc)) from exc
    if not store.access.set_password(conn, name, password_hash):
        raise AccountError(f"no user {name!r}")


def generated_password() -> str:
    return _random.token_urlsafe(15)


@dataclass(frozen=True)
class Login:
    session_id: str
    """the cookie's value: never stored"""
    csrf: str
    user: str
    role: Role


def login(conn: store.Connection, *, name: str, password: str, ttl_s: float) -> Login | None:
    """A new session when the password is the user's, else None (an unknown name takes as long
    as a wrong password)."""
    user = store.access.get_user(conn, name) if NAME_RE.match(name) else None
    if not secrets.check_password(None if user is None else user.password_hash, password):
        return None
    assert user is not None
    session_id = secrets.new_session_id()
    csrf = secrets.new_session_id()
    now = time.time()
    store.access.add_session(
        conn,
        id_sha256=secrets.digest(session_id),
        user_name=user.name,
        csrf=csrf,
        now_ts=now,
        expires_ts=now + ttl_s,
    )
    return Login(session_id, csrf, user.name, Role.parse(user.role))
