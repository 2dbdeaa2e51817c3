"""The review pages, served by ``secagg`` itself: plain HTML rendered on the server (Jinja2)
and a small vanilla script (``static/app.js``), no build step, no CDN: the pages work on a site
network without internet, and every byte they load comes from this server.

- ``/login``, ``/logout``: a form login; the session cookie is HttpOnly and SameSite=Strict,
  and unsafe requests also carry the session's CSRF token (a header from the script, a hidden
  field in the logout form).
- ``/``: events, newest first, with filters; each with its best snapshot and the boxes drawn
  (SVG over the JPEG), score, duration, cameras, review; select and mark reviewed.
  New events appear without a reload: the script polls ``/events/rows?after_id=N`` every few
  seconds and inserts the rows the server rendered (polling, not server-sent events: a request
  every few seconds costs one indexed query, passes any proxy, needs no connection held open
  through secagg's clean stop, and authenticates like every other request).
- ``/events/{id}``: every threat with its frame, the timeline, the notifications and their
  attempts, the provenance as a graph with release tags, "reproduce", and the logs of the run.
- ``/agents``: agents, cameras, versions and releases; rollouts and their progress.
- ``/plots``: the three plots, drawn by ``POST /api/plots`` (the recorded, deterministic path).

A page asked for without a session redirects to the login.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from aggregator.web.pages import LoginNeeded, router

HERE = Path(__file__).resolve().parent
STATIC_URL = "/static/web"


def mount(app: FastAPI) -> None:
    """Add the pages and their static files (CSS, script: public, they hold no data)."""
    app.include_router(router)
    app.mount(STATIC_URL, StaticFiles(directory=HERE / "static"), name="web-static")
    app.add_exception_handler(LoginNeeded, _to_login)


async def _to_login(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LoginNeeded)
    return RedirectResponse("/login?" + urlencode({"next": exc.path}), status_code=303)


__all__ = ["STATIC_URL", "mount"]
