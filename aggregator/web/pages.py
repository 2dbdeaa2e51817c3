"""The pages' routes (not in the OpenAPI schema: they answer HTML). See :mod:`aggregator.web`."""

from __future__ import annotations

import logging
import pathlib
import time
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import parse_qs, urlencode, urlsplit

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from aggregator import store
from aggregator.api import paging
from aggregator.api.access import SESSION_COOKIE, client_address, identify
from aggregator.api.deps import MAX_ID, Db, Settings, quick_read, write_connection
from aggregator.auth import accounts, secrets
from aggregator.auth.roles import Principal, Role
from aggregator.auth.throttle import LoginThrottle
from aggregator.config import AggregatorConfig
from aggregator.timestamps import utc
from aggregator.web import views

log = logging.getLogger(__name__)
router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=pathlib.Path(__file__).resolve().parent / "templates")
PAGE_SIZE = 50
LIVE_POLL_S = 3
FORM_MAX_BYTES = 4096


def _when(ts: float | None) -> str:
    return "" if ts is None else f"{utc(ts):%Y-%m-%d %H:%M:%S}"


templates.env.filters["when"] = _when
templates.env.filters["short"] = lambda s: "" if not s else (s if len(s) <= 14 else s[:12] + "…")
templates.env.globals["Role"] = Role


class LoginNeeded(Exception):
    """A page was asked for without a session: the handler redirects to the login."""

    def __init__(self, path: str) -> None:
        self.path = path


async def page_user(request: Request, conn: Db) -> Principal:
    """The logged-in user of a page (a bearer token will do too); else a redirect to the login."""
    auth = request.headers.get("authorization", "")
    token = auth[7:] if auth.lower().startswith("bearer ") else None
    try:
        who = identify(request, conn, token, request.cookies.get(SESSION_COOKIE))
    except HTTPException:
        who = None
    if who is None:
        raise LoginNeeded(request.url.path + (f"?{request.url.query}" if request.url.query else ""))
    return who


User = Annotated[Principal, Depends(page_user)]


def render(request: Request, name: str, who: Principal | None, **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(
        request,
        name,
        {"user": who, "csrf": who.csrf if who else None, **context},
        headers={
            "Cache-Control": "no-store",
            "X-Frame-Options": "DENY",
            "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
            "style-src 'self'; script-src 'self'; frame-ancestors 'none'; form-action 'self'",
        },
    )


def _safe_next(value: str | None) -> str:
    """Only a path on this server (never //host or a scheme): no open redirect."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def _same_origin(request: Request) -> bool:
    """A form post from our own pages (an Origin header, when sent, names this host)."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.headers.get("host")


def _cookie_secure(settings: AggregatorConfig) -> bool:
    if settings.auth.cookie_secure is not None:
        return settings.auth.cookie_secure
    return (settings.api.public_url or "").startswith("https://")


# login ---------------------------------------------------------------------------------------


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str | None = None) -> HTMLResponse:
    return render(request, "login.html", None, next=_safe_next(next), error=None)


@router.post("/login", response_model=None)
async def login(request: Request, settings: Settings) -> Response:
    body = await request.body()
    if len(body) > FORM_MAX_BYTES:
        raise HTTPException(413, "form too large")
    form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
    name, password = form.get("username", "")[:64], form.get("password", "")[:1024]
    target = _safe_next(form.get("next"))
    if not _same_origin(request):
        raise HTTPException(403, "login form from another site")
    throttle: LoginThrottle = request.app.state.login_throttle
    address = client_address(request)
    keys = [f"addr:{address}", f"user:{name}"]
    wait_s = throttle.wait_s(keys)
    if wait_s > 0:
        log.warning("login refused (too many failures) for user %r from %s", name, address)
        response = render(
            request,
            "login.html",
            None,
            next=target,
            error=f"Too many failed logins: try again in {int(wait_s) + 1} s.",
        )
        response.status_code = 429
        response.headers["Retry-After"] = str(int(wait_s) + 1)
        return response
    with write_connection(settings) as conn, store.transaction(conn):
        made = accounts.login(conn, name=name, password=password, ttl_s=settings.auth.session_ttl_s)
    if made is None:
        throttle.failed(keys)
        log.warning("failed login for user %r from %s", name, address)
        response = render(
            request, "login.html", None, next=target, error="Wrong user name or password."
        )
        response.status_code = 401
        return response
    throttle.succeeded(keys)
    log.info("user %s (%s) logged in from %s", made.user, made.role.name, address)
    redirect = RedirectResponse(target, status_code=303)
    redirect.set_cookie(
        SESSION_COOKIE,
        made.session_id,
        max_age=int(settings.auth.session_ttl_s),
        httponly=True,
        samesite="strict",
        secure=_cookie_secure(settings),
        path="/",
    )
    return redirect


@router.post("/logout", response_model=None)
async def logout(request: Request, settings: Settings, conn: Db) -> Response:
    body = await request.body()
    form = {k: v[0] for k, v in parse_qs(body[:FORM_MAX_BYTES].decode("utf-8", "replace")).items()}
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        found = store.access.session_by_hash(conn, secrets.digest(cookie), now_ts=time.time())
        if found is None or not secrets.same(form.get("csrf", ""), found.csrf):
            raise HTTPException(403, "CSRF token missing or wrong")
        with write_connection(settings) as wconn, store.transaction(wconn):
            store.access.end_session(wconn, secrets.digest(cookie))
        log.info("user %s logged out", found.user_name)
    redirect = RedirectResponse("/login", status_code=303)
    redirect.delete_cookie(SESSION_COOKIE, path="/")
    return redirect


# events --------------------------------------------------------------------------------------


def _parse_time(value: str | None) -> float | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


FILTERS = ("camera", "site", "severity", "label", "reviewed", "state", "since", "until")


def _filters(request: Request) -> dict[str, str]:
    return {k: v[:200] for k in FILTERS if (v := request.query_params.get(k))}


def _find_events(
    conn: store.Connection,
    settings: AggregatorConfig,
    filters: dict[str, str],
    *,
    before_id: int | None = None,
    after_id: int | None = None,
) -> list[Any]:
    site = filters.get("site")
    cameras = None
    if site:
        cameras = sorted(c for c, s in settings.events.sites.items() if s == site)
    reviewed = {"yes": True, "no": False}.get(filters.get("reviewed", ""))
    state = filters.get("state") if filters.get("state") in ("open", "ended") else None
    return store.events.list_events(
        conn,
        limit=PAGE_SIZE,
        camera=filters.get("camera"),
        severity=filters.get("severity"),
        label=filters.get("label"),
        cameras=cameras,
        reviewed=reviewed,
        state=state,
        since_ts=_parse_time(filters.get("since")),
        until_ts=_parse_time(filters.get("until")),
        before_id=before_id,
        after_id=after_id,
    )


@router.get("/", response_class=HTMLResponse)
async def events_page(
    request: Request,
    who: User,
    conn: Db,
    settings: Settings,
    before_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    cursor: paging.IdCursor = None,
) -> HTMLResponse:
    """The newest events, a page at a time by the same keyset cursor as ``GET /api/events``
    (``before_id``, the older form, still works)."""
    filters = _filters(request)
    before_id = paging.below_id(cursor, before_id)

    def read(conn: store.Connection) -> dict[str, Any]:
        found = _find_events(conn, settings, filters, before_id=before_id)
        options = store.events.distinct_values(conn)
        options["site"] = sorted(set(settings.events.sites.values()))
        older = None
        if len(found) == PAGE_SIZE:
            older = "?" + urlencode({**filters, "cursor": paging.id_cursor(found[-1].id)})
        return {
            "cards": views.event_cards(conn, found),
            "options": options,
            "older": older,
            "latest_id": store.events.latest_id(conn) if before_id is None else None,
        }

    shown = await quick_read(conn, read)
    return render(
        request,
        "events.html",
        who,
        filters=filters,
        live_poll_s=LIVE_POLL_S,
        query=urlencode(filters),
        **shown,
    )


@router.get("/events/rows", response_class=HTMLResponse)
async def event_rows(
    request: Request,
    who: User,
    conn: Db,
    settings: Settings,
    after_id: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
) -> HTMLResponse:
    """The rows of events newer than ``after_id`` (the page's live updates), newest first;
    ``X-Latest-Id`` says where to ask from next time."""
    filters = _filters(request)

    def read(conn: store.Connection) -> tuple[list[Any], list[dict[str, Any]]]:
        found = _find_events(conn, settings, filters, after_id=after_id)
        return found, views.event_cards(conn, found)

    found, cards = await quick_read(conn, read)
    response = render(request, "_event_rows.html", who, cards=cards)
    response.headers["X-Latest-Id"] = str(max([after_id, *(e.id for e in found)]))
    return response


@router.get("/events/{event_id}", response_class=HTMLResponse)
async def event_page(
    request: Request,
    who: User,
    conn: Db,
    settings: Settings,
    event_id: Annotated[int, Path(ge=1, le=MAX_ID)],
) -> HTMLResponse:
    def read(conn: store.Connection) -> dict[str, Any]:
        event = store.events.get(conn, event_id)
        if event is None:
            raise HTTPException(404, f"event {event_id} not found")
        review = store.events.reviews_of(conn, [event_id]).get(event_id)
        frames = views.frames_of_event(conn, event_id)
        notifications = views.notifications_of(conn, event_id)
        return {
            "card": views.event_card(conn, event, review),
            "frames": frames,
            "notifications": notifications,
            "timeline": views.timeline(event, frames, notifications, review),
            "provenance": views.provenance(conn, event_id, limit=settings.api.graph_nodes_max),
            "logs": views.logs_of_event(conn, event_id),
        }

    return render(request, "event.html", who, **await quick_read(conn, read))


# agents and plots ----------------------------------------------------------------------------


@router.get("/agents", response_class=HTMLResponse)
def agents_page(request: Request, who: User, conn: Db) -> HTMLResponse:
    return render(request, "agents.html", who, **views.agents_page(conn))


@router.get("/plots", response_class=HTMLResponse)
def plots_page(request: Request, who: User, conn: Db) -> HTMLResponse:
    cameras = store.events.distinct_values(conn)["camera"]
    return render(request, "plots.html", who, cameras=cameras)
