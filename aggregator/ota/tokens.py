"""Per-agent download tokens: ``HMAC-SHA256(secret, agent_id)``, so the aggregator keeps one
secret, not a table of tokens, and a token is good for one agent only. The agent sends
``Authorization: Bearer <agent_id>:<token>`` with every artifact request."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from wire.topics import TopicError, check_agent_id


class TokenError(ValueError):
    """A token secret that cannot be read or made."""


def make_secret(path: Path) -> None:
    """Write a new random secret (mode 0600); never overwrites one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_hex(32) + "\n")


def read_secret(path: Path) -> bytes:
    try:
        secret = path.read_text().strip()
    except OSError as exc:
        raise TokenError(f"{path}: cannot read the token secret: {exc.strerror or exc}") from exc
    if len(secret) < 32:
        raise TokenError(f"{path}: the token secret is too short")
    return secret.encode()


def token_for(secret: bytes, agent_id: str) -> str:
    return hmac.new(secret, agent_id.encode(), hashlib.sha256).hexdigest()


def agent_of(secret: bytes, authorization: str | None) -> str | None:
    """The agent a ``Bearer <agent_id>:<token>`` header authenticates; None otherwise."""
    if not authorization or not authorization.startswith("Bearer "):
        return None
    agent_id, sep, token = authorization[7:].strip().partition(":")
    if not sep:
        return None
    try:
        check_agent_id(agent_id)
    except TopicError:
        return None
    return agent_id if hmac.compare_digest(token_for(secret, agent_id), token) else None
