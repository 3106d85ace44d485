"""argparse value types with bounds: a value out of them is a usage error (exit 2, one line), not a traceback
from deep inside a conversion (an int32 field, a Timestamp, ``time.sleep``)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

INT32_MAX = 2**31 - 1
# The longest time span a command takes: ten years, far past any retention.
MAX_SECONDS = 10 * 365 * 86_400.0
MAX_MINUTES = 10 * 365 * 1440
# The services' largest page.
MAX_PAGE = 1000
# A listing (`events list`, `dlq list`) follows at most this many pages per run (each scans at most 5,000 rows
# with a filter; a page of dead letters ends early once its messages reach ~3 MiB).
LIST_CALLS = 10


def whole(low: int, high: int) -> Callable[[str], int]:
    """An integer in [low, high]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, not {value}")
        return value

    return parse


def number(low: float, high: float, *, above_low: bool = False) -> Callable[[str], float]:
    """A finite number in [low, high] (in (low, high] with ``above_low``); nan and inf are refused."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value) or value > high or value < low or (above_low and value == low):
            bound = "above" if above_low else "at least"
            raise argparse.ArgumentTypeError(
                f"must be a finite number {bound} {low:g} and at most {high:g}, not {text}"
            )
        return value

    return parse
