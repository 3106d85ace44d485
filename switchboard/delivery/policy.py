"""Retry policy and the outcome rules of one delivery attempt.

Contract
--------
Schedule (Standard Webhooks / Svix-like). Attempt 1 is made at once; when attempt ``n`` fails with a
retryable outcome, attempt ``n + 1`` is made ``retry_delays[n - 1]`` later (jittered). With the default
``retry_delays`` (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h):

==========  =============================  ==================================
 attempt     made after attempt n-1 by      time since attempt 1 (no jitter)
==========  =============================  ==================================
 1           immediately                    0
 2           5 s                            5 s
 3           5 min                          5 min 5 s
 4           30 min                         35 min 5 s
 5           2 h                            2 h 35 min 5 s
 6           5 h                            7 h 35 min 5 s
 7           10 h                           17 h 35 min 5 s
 8           10 h                           27 h 35 min 5 s
==========  =============================  ==================================

so ``max_attempts = len(retry_delays) + 1`` (8 by default: the first attempt and 7 retries). A custom
schedule (:meth:`RetryPolicy.custom`) has 1 to :data:`MAX_RETRIES` delays of 1 s to 24 h each, else
``InvalidRequest(reason="RETRY_POLICY_INVALID", metadata={"field": "retry_policy"})``. Every delay is
jittered uniformly by ±10 % with an injected ``random.Random``.

Outcome rules (:func:`classify`; a status always wins over an error class):

* 2xx → ``DELIVERED``.
* 3xx → failure, retried on the schedule (redirects are never followed): ``REDIRECT``.
* 410 → ``FAILED`` without retry and ``disable_subscription=True`` (reason ``GONE``, recorded).
* 408, 429, 502, 503, 504 → ``THROTTLED``, retried. ``Retry-After`` (delta-seconds or an HTTP-date) is
  honoured only to wait LONGER: the delay is ``max(jittered schedule delay, min(Retry-After,
  max_retry_after))``, ``max_retry_after`` the worker's ``delivery.max_retry_after_seconds`` (by default
  ``MAX_RETRY_AFTER`` = 1 h). A receiver can thus slow us down (up to an hour per
  attempt) but never burn through the attempts faster than the schedule (``Retry-After: 0`` on a load
  balancer's 503 would otherwise spend all 8 attempts in seconds); a value that does not parse is ignored.
* any other 4xx → ``FAILED`` without retry (dead-letter): ``CLIENT_ERROR``.
* any other 5xx → retried: ``SERVER_ERROR``; a status outside 200..599 (1xx, 6xx) → retried:
  ``UNEXPECTED_STATUS``.
* no status: the error class (``ERROR_*`` constants) decides: ``timeout``, ``connection``, ``tls``, ``dns``
  and any unknown class are retried (``TIMEOUT``, ``CONNECTION_ERROR``, ``TLS_ERROR``, ``DNS_ERROR``,
  ``UNKNOWN_ERROR``); ``forbidden_destination`` (the SSRF guard refused the address) and ``invalid_url`` are
  ``FAILED`` without retry: policy does not change between attempts, and redrive exists for the rare DNS fix.
* a retryable outcome on attempt ``max_attempts`` → ``FAILED`` (dead-letter) with ``exhausted=True``.

``Decision.delay_ms`` is set only for ``RETRY``: how long to wait before the next attempt.
"""

from __future__ import annotations

import enum
import math
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Final

from switchboard.errors import InvalidRequest

__all__ = [
    "DEFAULT_POLICY",
    "DEFAULT_RETRY_DELAYS",
    "ERROR_CONNECTION",
    "ERROR_DNS",
    "ERROR_FORBIDDEN_DESTINATION",
    "ERROR_INVALID_URL",
    "ERROR_TIMEOUT",
    "ERROR_TLS",
    "JITTER",
    "MAX_RETRIES",
    "MAX_RETRY_AFTER",
    "MAX_TIMEOUT_MS",
    "MIN_TIMEOUT_MS",
    "Decision",
    "Outcome",
    "RetryPolicy",
    "classify",
    "parse_retry_after",
]

DEFAULT_RETRY_DELAYS: Final[tuple[float, ...]] = (5, 5 * 60, 30 * 60, 2 * 3600, 5 * 3600, 10 * 3600, 10 * 3600)
MIN_DELAY: Final = 1.0
MAX_DELAY: Final = 24 * 3600.0
MAX_RETRIES: Final = 20
JITTER: Final = 0.10
MAX_RETRY_AFTER: Final = 3600.0
# An attempt's timeout (a subscription's, or delivery.timeout_seconds for those that set none).
MIN_TIMEOUT_MS: Final = 1_000
MAX_TIMEOUT_MS: Final = 60_000

ERROR_TIMEOUT: Final = "timeout"
ERROR_CONNECTION: Final = "connection"
ERROR_TLS: Final = "tls"
ERROR_DNS: Final = "dns"
ERROR_FORBIDDEN_DESTINATION: Final = "forbidden_destination"
ERROR_INVALID_URL: Final = "invalid_url"

_RETRYABLE_ERRORS: Final = {
    ERROR_TIMEOUT: "TIMEOUT",
    ERROR_CONNECTION: "CONNECTION_ERROR",
    ERROR_TLS: "TLS_ERROR",
    ERROR_DNS: "DNS_ERROR",
}
_FINAL_ERRORS: Final = {
    ERROR_FORBIDDEN_DESTINATION: "FORBIDDEN_DESTINATION",
    ERROR_INVALID_URL: "INVALID_URL",
}
_THROTTLE_STATUSES: Final = frozenset({408, 429, 502, 503, 504})
# Reasons that say the endpoint is unavailable (what the circuit breaker counts); DELIVERED says it is fine;
# the others (redirects, 410, other 4xx, odd statuses, refused destinations) are the request's own matter.
UNAVAILABLE_REASONS: Final = frozenset({"THROTTLED", "SERVER_ERROR", "UNKNOWN_ERROR", *_RETRYABLE_ERRORS.values()})
_DELTA_SECONDS = re.compile(r"[0-9]+")


class Outcome(enum.StrEnum):
    DELIVERED = "DELIVERED"
    RETRY = "RETRY"
    FAILED = "FAILED"


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do after one attempt.

    ``reason`` (stable, UPPER_SNAKE): ``DELIVERED``, ``REDIRECT``, ``GONE``, ``THROTTLED``, ``CLIENT_ERROR``,
    ``SERVER_ERROR``, ``UNEXPECTED_STATUS``, ``TIMEOUT``, ``CONNECTION_ERROR``, ``TLS_ERROR``, ``DNS_ERROR``,
    ``UNKNOWN_ERROR``, ``FORBIDDEN_DESTINATION``, ``INVALID_URL``. ``detail`` is for people.
    """

    outcome: Outcome
    reason: str
    delay_ms: int | None = None
    disable_subscription: bool = False
    exhausted: bool = False
    detail: str = ""


def _policy_error(message: str) -> InvalidRequest:
    return InvalidRequest(f"retry_policy: {message}", reason="RETRY_POLICY_INVALID", metadata={"field": "retry_policy"})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``retry_delays[i]`` (seconds) separates attempt ``i + 1`` from attempt ``i + 2``."""

    retry_delays: tuple[float, ...] = DEFAULT_RETRY_DELAYS

    @classmethod
    def custom(cls, delays: Iterable[float]) -> RetryPolicy:
        """A validated custom schedule (1 to 20 delays of 1 s to 24 h)."""
        if isinstance(delays, str | bytes):
            raise _policy_error("the schedule must be a list of delays in seconds")
        values: list[float] = []
        for index, delay in enumerate(delays):
            if isinstance(delay, bool) or not isinstance(delay, int | float):
                raise _policy_error(f"delay #{index + 1} is not a number of seconds")
            if not math.isfinite(delay) or not MIN_DELAY <= delay <= MAX_DELAY:
                raise _policy_error(f"delay #{index + 1} ({delay!r} s) must be between 1 s and 24 h")
            values.append(float(delay))
            if len(values) > MAX_RETRIES:
                raise _policy_error(f"at most {MAX_RETRIES} retries")
        if not values:
            raise _policy_error("the schedule needs at least one retry delay")
        return cls(tuple(values))

    @property
    def max_attempts(self) -> int:
        return len(self.retry_delays) + 1

    def delay_ms(self, attempt: int, rng: random.Random) -> int | None:
        """The jittered wait (ms) after attempt ``attempt`` (1-based) failed, or None if it was the last."""
        if attempt < 1:
            raise ValueError(f"attempt numbers start at 1, not {attempt}")
        if attempt >= self.max_attempts:
            return None
        base = self.retry_delays[attempt - 1]
        # Within ±JITTER, but never past MAX_DELAY, the longest delay queue: a 24 h delay jittered to 26.4 h
        # came back at 24 h (half of all draws), its recorded next attempt wrong.
        return round(base * 1000 * rng.uniform(1 - JITTER, min(1 + JITTER, MAX_DELAY / base)))


DEFAULT_POLICY: Final = RetryPolicy()


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait according to a ``Retry-After`` value (delta-seconds or an IMF-fixdate/RFC 850/asctime
    HTTP-date, relative to ``now`` in Unix seconds; a date in the past gives 0), or None if absent or unusable.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if _DELTA_SECONDS.fullmatch(text):
        digits = text.lstrip("0") or "0"
        return float(int(digits)) if len(digits) <= 12 else 1e12  # beyond ~31,700 years: capped anyway
    if len(text) > 64:
        return None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # "-0000" parses naive; HTTP dates are always GMT
    try:
        seconds = when.timestamp() - now
    except (OverflowError, OSError, ValueError):
        return None
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _retry(
    policy: RetryPolicy,
    attempt: int,
    rng: random.Random,
    reason: str,
    detail: str,
    floor_s: float | None = None,
    cap_s: float = MAX_RETRY_AFTER,
) -> Decision:
    delay = policy.delay_ms(attempt, rng)
    if delay is None:
        return Decision(
            Outcome.FAILED, reason, exhausted=True, detail=f"{detail}; no attempt left ({policy.max_attempts} made)"
        )
    if floor_s is not None:
        wanted = round(min(floor_s, cap_s) * 1000)
        if wanted > delay:
            delay = wanted
            detail = f"{detail}; Retry-After honoured ({wanted / 1000:g} s)"
    return Decision(Outcome.RETRY, reason, delay_ms=delay, detail=detail)


def classify(
    status: int | None,
    error: str | None,
    retry_after: str | None,
    now: float,
    *,
    attempt: int,
    policy: RetryPolicy = DEFAULT_POLICY,
    rng: random.Random | None = None,
    max_retry_after: float = MAX_RETRY_AFTER,
) -> Decision:
    """Decide what follows attempt number ``attempt`` (1-based), which ended with an HTTP ``status`` or,
    without one, an ``error`` class; ``retry_after`` is the response's ``Retry-After`` header (honoured up to
    ``max_retry_after`` seconds), ``now`` the current Unix time (for HTTP-dates). Rules in the module
    docstring."""
    if attempt < 1:
        raise ValueError(f"attempt numbers start at 1, not {attempt}")
    rng = rng if rng is not None else random.Random()
    if status is not None:
        if 200 <= status <= 299:
            return Decision(Outcome.DELIVERED, "DELIVERED", detail=f"HTTP {status}")
        if 300 <= status <= 399:
            return _retry(policy, attempt, rng, "REDIRECT", f"HTTP {status} (redirects are not followed)")
        if status == 410:
            return Decision(
                Outcome.FAILED, "GONE", disable_subscription=True, detail="HTTP 410: the endpoint asked to be disabled"
            )
        if status in _THROTTLE_STATUSES:
            return _retry(
                policy,
                attempt,
                rng,
                "THROTTLED",
                f"HTTP {status}",
                floor_s=parse_retry_after(retry_after, now),
                cap_s=max_retry_after,
            )
        if 400 <= status <= 499:
            return Decision(Outcome.FAILED, "CLIENT_ERROR", detail=f"HTTP {status} (not retried)")
        if 500 <= status <= 599:
            return _retry(policy, attempt, rng, "SERVER_ERROR", f"HTTP {status}")
        return _retry(policy, attempt, rng, "UNEXPECTED_STATUS", f"HTTP {status}")
    if error in _FINAL_ERRORS:
        return Decision(Outcome.FAILED, _FINAL_ERRORS[error], detail=f"{error} (not retried)")
    reason = _RETRYABLE_ERRORS.get(error or "", "UNKNOWN_ERROR")
    return _retry(policy, attempt, rng, reason, error or "no status and no error class")


def endpoint_unavailable(decision: Decision) -> bool | None:
    """For the circuit breaker: True if the attempt says the endpoint is unavailable, False if it answered
    well, None if it says neither (``UNAVAILABLE_REASONS``)."""
    if decision.outcome is Outcome.DELIVERED:
        return False
    return True if decision.reason in UNAVAILABLE_REASONS else None
