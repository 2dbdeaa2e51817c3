"""Making and checking credentials. A token or a session id is 32 random bytes: it is kept as
its sha256 (a fast hash is enough for a secret that cannot be guessed), and compared by that
hash. A password is chosen by a person, so it is kept as an argon2id hash (argon2-cffi's
defaults: RFC 9106's second recommended option, 64 MiB and 3 passes)."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

TOKEN_PREFIX = "sga_"
"""Tokens start with this, so a leaked one is easy to recognise (and to scan for)."""
HINT_CHARS = 8
"""How much of a token is kept in clear to tell tokens apart (the prefix and 4 more)."""
MIN_PASSWORD_CHARS = 10

_hasher = PasswordHasher()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_session_id() -> str:
    return secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    """The sha256 a token or a session id is stored and looked up by."""
    return hashlib.sha256(secret.encode()).hexdigest()


def hint(token: str) -> str:
    return token[:HINT_CHARS]


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_CHARS:
        raise ValueError(f"a password needs at least {MIN_PASSWORD_CHARS} characters")
    return _hasher.hash(password)


_DUMMY_HASH = _hasher.hash("not a password of anyone")


def check_password(password_hash: str | None, password: str) -> bool:
    """Does ``password`` match? With no user (None) a dummy hash is checked all the same, so
    the answer takes as long for an unknown name as for a wrong password."""
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def same(a: str, b: str) -> bool:
    """Constant-time comparison (CSRF tokens)."""
    return hmac.compare_digest(a.encode(), b.encode())
