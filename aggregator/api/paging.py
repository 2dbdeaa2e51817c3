"""Keyset pagination of the API's lists: a ``cursor`` in, the next page's cursor out.

A page ends where the next one starts by the list's sort key (an id, or a time and an id), never
by an offset: a deep page costs what the first does, and rows that arrive meanwhile neither
repeat nor push rows out of later pages. The body stays the JSON list it always was; the next
page comes in headers (RFC 8288 ``Link: <url>; rel="next"``, and ``X-Next-Cursor``), sent only
when the page was full. ``before_id`` (the id-ordered lists' keyset parameter before cursors)
still works; given with a cursor, the lower bound of the two wins.

Clients treat a cursor as opaque. Today it is the sort key of the page's last row: an id
(``123``), or for log lines a time and an id (``1764467200.25_123``). The OpenAPI schema gives
its exact pattern, so anything else is a 422 before a route runs, and every cursor that matches
is a page (an id past the largest SQLite keeps means "from the top"): no cursor can reach the
store as anything but two numbers, nor make a 500.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

from fastapi import Query, Request, Response

from aggregator.api.deps import MAX_ID

_ID = "[0-9]{1,19}"
_TS = "-?[0-9]{1,17}(\\.[0-9]{1,17})?"
_NEXT = (
    'the next page: the cursor the previous page returned (`Link: rel="next"` or `X-Next-Cursor`)'
)
IdCursor = Annotated[
    str | None, Query(min_length=1, max_length=19, pattern=f"^{_ID}$", description=_NEXT)
]
LogCursor = Annotated[
    str | None,
    Query(min_length=1, max_length=60, pattern=f"^({_TS}_)?{_ID}$", description=_NEXT),
]


def _id(text: str) -> int:
    return min(int(text), MAX_ID)


def below_id(cursor: str | None, before_id: int | None = None) -> int | None:
    """The id a page of an id-ordered (newest first) list starts below: the cursor's, or
    ``before_id``, or the lower of both."""
    bounds = [b for b in (None if cursor is None else _id(cursor), before_id) if b is not None]
    return min(bounds) if bounds else None


def after_ts_id(cursor: str | None) -> tuple[float, int] | None:
    """The (time, id) a page of a time-ordered (oldest first) list starts after (a cursor of
    an id alone: after that id at the earliest time)."""
    if cursor is None:
        return None
    ts, _, found = cursor.rpartition("_")
    return (float(ts) if ts else float("-inf"), _id(found))


def id_cursor(row_id: int) -> str:
    return str(row_id)


def ts_id_cursor(ts: float, row_id: int) -> str:
    """``repr`` keeps the exact float, so the next page starts exactly after this row (a
    stored time is always in plain decimal form: times are checked on receipt)."""
    text = repr(float(ts))
    return f"{text if text.replace('.', '').lstrip('-').isdigit() else f'{ts:.6f}'}_{row_id}"


def log_below_id(cursor: str | None) -> int | None:
    """The id a page of the newest log lines starts below (the id of a log cursor)."""
    return None if cursor is None else _id(cursor.rpartition("_")[2])


def link_next(request: Request, response: Response, cursor: str | None) -> None:
    """Name the next page in ``response``'s headers (nothing when ``cursor`` is None: the
    last page). Its URL is this request's with the cursor replaced (``before_id`` dropped)."""
    if cursor is None:
        return
    query = [
        (k, v) for k, v in request.query_params.multi_items() if k not in ("cursor", "before_id")
    ]
    target = request.url.path + "?" + urlencode([*query, ("cursor", cursor)])
    response.headers["Link"] = f'<{target}>; rel="next"'
    response.headers["X-Next-Cursor"] = cursor
