"""Keyset pagination of the API's lists: an opaque ``cursor`` in, the next page's cursor out.

A page ends where the next one starts by the list's sort key (an id, or a time and an id), never
by an offset: a deep page costs what the first does, and rows that arrive meanwhile neither
repeat nor push rows out of later pages. The body stays the JSON list it always was; the next
page comes in headers (RFC 8288 ``Link: <url>; rel="next"``, and ``X-Next-Cursor``), sent only
when the page was full. ``before_id`` (the id-ordered lists' keyset parameter before cursors)
still works.

A cursor is ``base64url("<list>:<key>:<key>")``: opaque to clients, readable in a log. One that
is not what this list hands out (garbage, another list's, out of range) is refused with 422.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Annotated
from urllib.parse import urlencode

from fastapi import Query, Request, Response
from fastapi.exceptions import RequestValidationError

from aggregator.api.deps import MAX_ID

CursorParam = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=200,
        pattern="^[A-Za-z0-9_-]+$",
        description="the next page: the cursor the previous page returned (its `Link: "
        'rel="next"` header or `X-Next-Cursor`)',
    ),
]


class BadCursor(ValueError):
    """A cursor that this list did not hand out."""


def _refuse(cursor: str, why: str) -> RequestValidationError:
    """A 422 shaped like FastAPI's own (what the OpenAPI schema documents for 422)."""
    return RequestValidationError(
        [{"type": "value_error", "loc": ("query", "cursor"), "msg": why, "input": cursor}]
    )


def encode(kind: str, *keys: int | float) -> str:
    text = ":".join([kind, *(repr(k) for k in keys)])
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _decode(kind: str, cursor: str) -> list[str]:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, ValueError) as exc:
        raise BadCursor("not a cursor") from exc
    parts = text.split(":")
    if parts[0] != kind:
        raise BadCursor(f"not a cursor of this list ({kind})")
    return parts[1:]


def _id(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_ID:
        raise BadCursor("not an id")
    return int(text)


def _ts(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise BadCursor("not a time") from exc
    if not math.isfinite(value):
        raise BadCursor("not a time")
    return value


def id_cursor(kind: str, cursor: str | None, before_id: int | None = None) -> int | None:
    """The id a page of an id-ordered list starts below (the cursor's, else ``before_id``);
    422 for a bad cursor or for both at once."""
    if cursor is None:
        return before_id
    if before_id is not None:
        raise _refuse(cursor, "give cursor or before_id, not both")
    try:
        parts = _decode(kind, cursor)
        if len(parts) != 1:
            raise BadCursor("wrong number of keys")
        return _id(parts[0])
    except BadCursor as exc:
        raise _refuse(cursor, f"bad cursor: {exc}") from exc


def ts_id_cursor(kind: str, cursor: str | None) -> tuple[float, int] | None:
    """The (time, id) a page of a time-ordered list starts after; 422 for a bad cursor."""
    if cursor is None:
        return None
    try:
        parts = _decode(kind, cursor)
        if len(parts) != 2:
            raise BadCursor("wrong number of keys")
        return _ts(parts[0]), _id(parts[1])
    except BadCursor as exc:
        raise _refuse(cursor, f"bad cursor: {exc}") from exc


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
