"""Conversions between the driver's column values and the model's integer microseconds."""

from __future__ import annotations

import calendar
import datetime as dt
from typing import Any

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def ts(us: int) -> dt.datetime:
    """Microseconds since the epoch as an aware UTC datetime (the driver writes milliseconds). Exact, in
    integers: through a float, the last microsecond of 9999 rounded up into the year 10000 and raised."""
    return EPOCH + dt.timedelta(microseconds=us)


def us_of(value: Any) -> int:
    """A driver datetime (naive UTC) as microseconds; 0 for None."""
    if value is None:
        return 0
    return int(calendar.timegm(value.utctimetuple())) * 1_000_000 + int(value.microsecond)
