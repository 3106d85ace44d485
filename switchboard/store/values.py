"""Conversions between the driver's column values and the model's integer microseconds."""

from __future__ import annotations

import calendar
import datetime as dt
from typing import Any

from switchboard.errors import InvalidRequest

DAY_US = 86_400 * 1_000_000


def ts(us: int) -> dt.datetime:
    """Microseconds since the epoch as an aware UTC datetime (the driver writes milliseconds)."""
    return dt.datetime.fromtimestamp(us / 1_000_000, tz=dt.UTC)


def us_of(value: Any) -> int:
    """A driver datetime (naive UTC) as microseconds; 0 for None."""
    if value is None:
        return 0
    return int(calendar.timegm(value.utctimetuple())) * 1_000_000 + int(value.microsecond)


def check_range(start_us: int, end_us: int, ttl_seconds: int) -> None:
    """Listings read their range one bucket or one day at a time, so its length bounds their work: a range
    longer than twice the retention (a replayed event keeps its received time and is stored for another
    retention), or 30 days if that is more, plus a day, is refused (``TIME_RANGE_TOO_LARGE``)."""
    longest = max(2 * ttl_seconds * 1_000_000, 30 * DAY_US) + DAY_US
    if end_us - start_us > longest:
        raise InvalidRequest(
            f"the time range may span at most {longest / DAY_US:g} days (twice the retention of "
            f"{ttl_seconds / 86_400:g} days, at least 30, and one)",
            reason="TIME_RANGE_TOO_LARGE",
            metadata={"field": "start_time"},
        )
