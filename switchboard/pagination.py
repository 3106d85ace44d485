"""Opaque page tokens: a small JSON object (the query it belongs to and the cursor), URL-safe base64. The
services check that a token comes back with the same query; anything else is ``PAGE_TOKEN_INVALID``: a token
longer than ``MAX_TOKEN_CHARS``, one that is not base64 of a JSON object (however deeply nested), a cursor
whose parts are not of their kind (``position``). ``check_range``: the longest time range a listing reads."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from switchboard.errors import InvalidRequest
from switchboard.model.operations import DeadLetter
from switchboard.model.subscriptions import Attempt

# Tokens this module issues are a few hundred characters.
MAX_TOKEN_CHARS = 4096
_INT64 = 2**63
# Milliseconds (microseconds) since the epoch up to 9999-12-31, what a stored time can be.
MAX_EPOCH_MS = 253_402_300_799_999
MAX_EPOCH_US = MAX_EPOCH_MS * 1000 + 999
MAX_TEXT = 1024
DAY_US = 86_400 * 1_000_000
# The fewest rows a filtered listing reads a call (``take_matches``).
SCAN_PAGE = 100
# What a page of a listing whose items can be large carries at most (``fits``): under the 4 MiB a gRPC client
# takes by default (grpcurl's, grpc's own), with room for the rest of the answer.
PAGE_BYTES = 3 * 1024 * 1024

T = TypeVar("T")

# The stores' listing cursors, the position after the last row returned (what domain code that cuts a page
# short gives back, without importing a store): dead letters (kind, day, dead_at in ms, id); a subscription's
# deliveries (day, created_at in ms, id); its attempts (day, started_at in ms, delivery id, attempt, run).
DeadCursor = tuple[str, int, int, str]
DeliveryCursor = tuple[int, int, str]
AttemptCursor = tuple[int, int, str, int, str]


def dead_cursor(d: DeadLetter) -> DeadCursor:
    return (d.kind.value, d.dead_us // DAY_US, d.dead_us // 1000, d.id)


def delivery_cursor(created_us: int, delivery_id: str) -> DeliveryCursor:
    return (created_us // DAY_US, created_us // 1000, delivery_id)


def attempt_cursor(a: Attempt) -> AttemptCursor:
    return (a.started_us // DAY_US, a.started_us // 1000, a.delivery_id, a.attempt, a.run_id)


def take_matches(out: list[T], rows: Sequence[T], matches: Callable[[T], bool], limit: int) -> T | None:
    """Appends the ``rows`` that ``matches`` takes to ``out`` until it holds ``limit``; returns the row it
    stopped at when rows after it were read and not looked at (the next page starts after that row), else None.
    A filtered listing reads at least ``SCAN_PAGE`` rows a call: asking the store for the matches still missing,
    a filter that took few rows read one row a round trip once a page was nearly full."""
    for i, row in enumerate(rows):
        if matches(row):
            out.append(row)
            if len(out) >= limit:
                return row if i < len(rows) - 1 else None
    return None


def fits(items: Sequence[T], size: Callable[[T], int], budget: int = PAGE_BYTES) -> int:
    """How many of ``items``, from the first, a page carries: as many as add up to ``budget`` bytes by
    ``size``, at least one (a larger item has a page of its own). The caller's next page starts after the last
    one it carries."""
    total = 0
    for n, item in enumerate(items):
        total += size(item)
        if n and total > budget:
            return n
    return len(items)


def encode_token(fields: Mapping[str, Any]) -> str:
    raw = json.dumps(fields, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_token(token: str) -> dict[str, Any]:
    if len(token) > MAX_TOKEN_CHARS:
        raise invalid_token()
    try:
        value = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, RecursionError):
        value = None
    if not isinstance(value, dict):
        raise invalid_token()
    return value


def invalid_token() -> InvalidRequest:
    return InvalidRequest("page_token is not a token this service issued", reason="PAGE_TOKEN_INVALID")


def mismatched_token() -> InvalidRequest:
    return InvalidRequest("page_token belongs to another query", reason="PAGE_TOKEN_MISMATCH")


def position(value: object, kinds: str) -> tuple[Any, ...]:
    """A cursor read back from a token: a list with one part per letter of ``kinds``, ``i`` an integer (64-bit),
    ``m`` milliseconds since the epoch (up to 9999-12-31), ``s`` a string of at most ``MAX_TEXT`` characters;
    anything else is ``PAGE_TOKEN_INVALID``."""
    if not isinstance(value, list) or len(value) != len(kinds):
        raise invalid_token()
    out: list[Any] = []
    for kind, part in zip(kinds, value, strict=True):
        if kind == "s":
            if not isinstance(part, str) or len(part) > MAX_TEXT:
                raise invalid_token()
            out.append(part)
            continue
        if not isinstance(part, int) or isinstance(part, bool):
            raise invalid_token()
        low, high = (0, MAX_EPOCH_MS) if kind == "m" else (-_INT64, _INT64 - 1)
        if not low <= part <= high:
            raise invalid_token()
        out.append(part)
    return tuple(out)


def listing_range(start_us: int | None, end_us: int | None, default_us: int) -> tuple[int, int]:
    """A first page's range: the bounds given (the epoch is a time, not "unset": unset is None), else up to now
    and ``default_us`` before the end (not before the epoch); ``TIME_RANGE_INVALID`` unless start < end (one
    reason for every listing: the subscriptions' deliveries and attempts answered ``FIELD_INVALID``)."""
    end = time.time_ns() // 1000 if end_us is None else end_us
    start = max(0, end - default_us) if start_us is None else start_us
    if start >= end:
        raise InvalidRequest(
            "start_time must be before end_time", reason="TIME_RANGE_INVALID", metadata={"field": "start_time"}
        )
    return start, end


def pinned_range(start: object, end: object, start_us: int | None, end_us: int | None) -> tuple[int, int]:
    """The time range a listing's next page reads: the token's ``start`` and ``end``, in which the first page
    pinned the bounds the caller left to their defaults (now, and a day before it); ``PAGE_TOKEN_MISMATCH``
    if the caller now sends a bound the token does not hold. (Defaults move with the clock: compared with the
    token, every next page of a listing without an end time was refused.) The token's range must be one a
    first page could have pinned: times from the epoch to the end of 9999, start before end."""
    a, b = position([start, end], "ii")
    if not 0 <= a < b <= MAX_EPOCH_US:
        raise invalid_token()
    if (start_us is not None and a != start_us) or (end_us is not None and b != end_us):
        raise mismatched_token()
    return a, b


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
