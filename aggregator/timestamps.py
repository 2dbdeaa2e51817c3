"""Stored epoch times as datetimes, for everything that reads them (API, event messages,
summaries, plots). Times are checked against a window on receipt
(:mod:`aggregator.admission`), but a store written before that may hold a time at the edge of
the calendar (``0001-01-01T00:00:00+14:00`` is year 0 in UTC): such a time is shown clamped to
the calendar, never an error that breaks a whole listing."""

from __future__ import annotations

import math
from datetime import UTC, datetime

FIRST_TS = datetime(1, 1, 1, tzinfo=UTC).timestamp()
LAST_TS = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()


def utc(ts: float) -> datetime:
    """``ts`` (epoch seconds) as an aware UTC datetime, clamped to the calendar."""
    if math.isnan(ts):
        ts = FIRST_TS
    return datetime.fromtimestamp(min(max(ts, FIRST_TS), LAST_TS), UTC)
