"""Who may call which route: FastAPI dependencies over :mod:`aggregator.auth`.

A request carries a bearer token (``Authorization: Bearer sga_...``, for scripts) or the page's
session cookie (``secagg_session``: HttpOnly, SameSite=Strict). Each router declares the role it
needs (:func:`require`); an unsafe request made with the cookie must also send the session's
CSRF token in ``X-CSRF-Token`` (the pages' script does; another site's form cannot read it).
No credential, or a bad one: 401. Too low a role, or no CSRF token: 403.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer

from aggregator import store
from aggregator.api.deps import Db, Settings
from aggregator.auth import secrets
from aggregator.auth.roles import Principal, Role

log = logging.getLogger(__name__)

SESSION_COOKIE = "secagg_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="token",
    description="an API token: `secagg token create --role viewer --name NAME`",
)
_cookie = APIKeyCookie(
    name=SESSION_COOKIE,
    auto_error=False,
    scheme_name="session",
    description="the pages' login session (unsafe methods also need X-CSRF-Token)",
)
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
Cookie = Annotated[str | None, Depends(_cookie)]

AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "no credential, or one that is not valid (expired, revoked)"},
    403: {"description": "the credential's role may not do this (or no CSRF token)"},
}
"""Documented on every protected route."""


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


class _RefusalLog:
    """Refused tokens, logged at most once a minute per client address with how many there
    were (never the token): a client trying tokens cannot flood the log."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._since: dict[str, tuple[float, int]] = {}

    def log(self, address: str, path: str) -> None:
        now = time.monotonic()
        with self._lock:
            last, count = self._since.get(address, (-1e9, 0))
            if now - last < 60:
                self._since[address] = (last, count + 1)
                return
            if len(self._since) > 10_000:
                self._since.clear()
            self._since[address] = (now, 0)
        log.warning(
            "refused a bearer token that is not valid (unknown or revoked) from %s for %s "
            "(%d more from it in the minute before) [logged once a minute per address]",
            address,
            path,
            count,
        )


_refused = _RefusalLog()


def identify(
    request: Request, conn: store.Connection, token: str | None, cookie: str | None
) -> Principal | None:
    """Who sent the request (None: no credential). A credential that is not valid raises 401."""
    if token is not None:
        service: str | None = request.app.state.service_token
        if service is not None and secrets.same(secrets.digest(token), service):
            return Principal(name="secagg", role=Role.viewer, kind="service")
        row = store.access.token_by_hash(conn, secrets.digest(token))
        if row is None:
            _refused.log(client_address(request), request.url.path)
            raise unauthorised("the token is not valid (unknown or revoked)")
        return Principal(name=row.name, role=Role.parse(row.role), kind="token")
    if cookie is not None:
        found = store.access.session_by_hash(conn, secrets.digest(cookie), now_ts=time.time())
        if found is None:
            raise unauthorised("the session has expired or ended: log in again")
        return Principal(
            name=found.user_name, role=Role.parse(found.role), kind="session", csrf=found.csrf
        )
    return None


def unauthorised(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


async def principal(request: Request, conn: Db, bearer: Bearer, cookie: Cookie) -> Principal:
    """Who sent the request; 401 without a valid credential. (Async: two indexed lookups cost
    less than a hop to the thread pool.)"""
    token = bearer.credentials if bearer is not None else None
    who = identify(request, conn, token, cookie)
    if who is None:
        raise unauthorised("a credential is needed: Authorization: Bearer <token>, or log in")
    return who


Who = Annotated[Principal, Depends(principal)]


def check_role(request: Request, who: Principal, needed: Role) -> Principal:
    if not who.may(needed):
        raise HTTPException(
            403, f"{needed.name} role needed ({who.kind} {who.name!r} is {who.role.name})"
        )
    if who.kind == "session" and request.method not in SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER)
        if not sent or who.csrf is None or not secrets.same(sent, who.csrf):
            raise HTTPException(403, f"{CSRF_HEADER} missing or wrong (send the page's token)")
    return who


def require(needed: Role) -> Any:
    """A dependency: the request's principal, with at least the role ``needed``."""

    async def dependency(request: Request, who: Who) -> Principal:
        return check_role(request, who, needed)

    dependency.__name__ = f"require_{needed.name}"
    return Depends(dependency)


async def _health_access(
    request: Request, settings: Settings, conn: Db, bearer: Bearer, cookie: Cookie
) -> Principal | None:
    if settings.auth.public_health:
        return None
    return check_role(request, await principal(request, conn, bearer, cookie), Role.viewer)


HealthAccess = Depends(_health_access)
"""Health and ping: a viewer, or anyone when ``auth.public_health``."""

VIEWER = require(Role.viewer)
OPERATOR = require(Role.operator)
ADMIN = require(Role.admin)
