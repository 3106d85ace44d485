"""Retry schedule, jitter and the outcome rules of one attempt."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from switchboard.delivery.policy import (
    DEFAULT_POLICY,
    MAX_RETRY_AFTER,
    Decision,
    Outcome,
    RetryPolicy,
    classify,
    parse_retry_after,
)
from switchboard.errors import InvalidRequest

NOW = 1_700_000_000.0


class FixedRng(random.Random):
    """``uniform(a, b)`` returns the point ``fraction`` of the way from a to b."""

    def __init__(self, fraction: float) -> None:
        super().__init__(0)
        self.fraction = fraction

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.fraction


MIDDLE = FixedRng(0.5)  # no jitter


def decide(status: int | None, error: str | None = None, retry_after: str | None = None, attempt: int = 1) -> Decision:
    return classify(status, error, retry_after, NOW, attempt=attempt, rng=MIDDLE)


# ------------------------------------------------------------------------------------------------ schedule


def test_default_schedule_is_svix_like() -> None:
    assert DEFAULT_POLICY.retry_delays == (5, 300, 1800, 7200, 18000, 36000, 36000)
    assert DEFAULT_POLICY.max_attempts == 8
    delays = [DEFAULT_POLICY.delay_ms(attempt, MIDDLE) for attempt in range(1, 9)]
    assert delays == [5_000, 300_000, 1_800_000, 7_200_000, 18_000_000, 36_000_000, 36_000_000, None]
    assert sum(d for d in delays if d is not None) == (27 * 3600 + 35 * 60 + 5) * 1000


def test_jitter_never_goes_past_the_longest_delay_queue() -> None:
    """A 24 h delay jittered up to 26.4 h came back after 24 h (the longest delay queue) for half the draws,
    its recorded next attempt wrong: the jitter's top is cut at 24 h, the draws spread below it."""
    day = RetryPolicy.custom([86_400, 60_000])
    assert day.delay_ms(1, FixedRng(1.0)) == 86_400_000
    assert day.delay_ms(1, FixedRng(0.0)) == 77_760_000
    assert day.delay_ms(2, FixedRng(1.0)) == 66_000_000  # far enough below: ±10 % as ever
    rng = random.Random(3)
    draws = [day.delay_ms(1, rng) or 0 for _ in range(1000)]
    assert max(draws) <= 86_400_000 and sum(d == 86_400_000 for d in draws) < 5


def test_jitter_is_ten_percent_either_way() -> None:
    assert DEFAULT_POLICY.delay_ms(1, FixedRng(0.0)) == 4_500
    assert DEFAULT_POLICY.delay_ms(1, FixedRng(1.0)) == 5_500
    assert DEFAULT_POLICY.delay_ms(4, FixedRng(0.0)) == 6_480_000
    rng = random.Random(7)
    seen = {DEFAULT_POLICY.delay_ms(2, rng) or 0 for _ in range(500)}
    assert min(seen) >= 270_000 and max(seen) <= 330_000
    assert len(seen) > 400  # actually jittered
    # Same seed, same delays: the rng is the only source of randomness.
    assert [DEFAULT_POLICY.delay_ms(3, random.Random(1)) for _ in range(3)] == [
        DEFAULT_POLICY.delay_ms(3, random.Random(1))
    ] * 3


def test_attempts_start_at_one() -> None:
    with pytest.raises(ValueError, match="start at 1"):
        DEFAULT_POLICY.delay_ms(0, MIDDLE)
    with pytest.raises(ValueError, match="start at 1"):
        classify(500, None, None, NOW, attempt=0)


def test_custom_schedules_are_validated() -> None:
    policy = RetryPolicy.custom([1, 60, 86_400])
    assert policy.retry_delays == (1.0, 60.0, 86_400.0)
    assert policy.max_attempts == 4
    assert RetryPolicy.custom([2.5] * 20).max_attempts == 21


@pytest.mark.parametrize(
    ("delays", "words"),
    [
        ([], "at least one"),
        ([0.5], "between 1 s and 24 h"),
        ([86_401], "between 1 s and 24 h"),
        ([-1], "between 1 s and 24 h"),
        ([float("nan")], "between 1 s and 24 h"),
        ([float("inf")], "between 1 s and 24 h"),
        ([True], "not a number"),
        (["5"], "not a number"),
        ([5] * 21, "at most 20"),
        ("5,10", "list of delays"),
    ],
)
def test_bad_custom_schedules_are_refused(delays: object, words: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        RetryPolicy.custom(delays)  # type: ignore[arg-type]
    assert info.value.reason == "RETRY_POLICY_INVALID"
    assert info.value.metadata == {"field": "retry_policy"}
    assert words in info.value.message


# ------------------------------------------------------------------------------------------------ classify


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_2xx_is_delivered(status: int) -> None:
    decision = decide(status)
    assert decision == Decision(Outcome.DELIVERED, "DELIVERED", detail=f"HTTP {status}")


@pytest.mark.parametrize("status", [300, 301, 302, 303, 307, 308])
def test_3xx_is_a_retried_failure(status: int) -> None:
    decision = decide(status, retry_after="10000")
    assert (decision.outcome, decision.reason, decision.delay_ms) == (Outcome.RETRY, "REDIRECT", 5_000)


def test_410_disables_the_subscription_without_retry() -> None:
    decision = decide(410)
    assert decision.outcome is Outcome.FAILED
    assert decision.reason == "GONE"
    assert decision.disable_subscription
    assert decision.delay_ms is None
    assert not decision.exhausted


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 409, 413, 422, 451, 499])
def test_other_4xx_fail_without_retry(status: int) -> None:
    decision = decide(status, attempt=1)
    assert (decision.outcome, decision.reason, decision.delay_ms) == (Outcome.FAILED, "CLIENT_ERROR", None)
    assert not decision.disable_subscription and not decision.exhausted


@pytest.mark.parametrize("status", [500, 501, 505, 507, 599])
def test_other_5xx_retry_on_the_schedule(status: int) -> None:
    decision = decide(status, retry_after="3000", attempt=3)
    assert (decision.outcome, decision.reason, decision.delay_ms) == (Outcome.RETRY, "SERVER_ERROR", 1_800_000)


@pytest.mark.parametrize("status", [100, 101, 199, 600, 999])
def test_unexpected_statuses_retry(status: int) -> None:
    assert decide(status).reason == "UNEXPECTED_STATUS"
    assert decide(status).outcome is Outcome.RETRY


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        ("timeout", "TIMEOUT"),
        ("connection", "CONNECTION_ERROR"),
        ("tls", "TLS_ERROR"),
        ("dns", "DNS_ERROR"),
        ("something_new", "UNKNOWN_ERROR"),
        (None, "UNKNOWN_ERROR"),
    ],
)
def test_transport_errors_retry_on_the_schedule(error: str | None, reason: str) -> None:
    decision = decide(None, error, attempt=2)
    assert (decision.outcome, decision.reason, decision.delay_ms) == (Outcome.RETRY, reason, 300_000)


@pytest.mark.parametrize(
    ("error", "reason"), [("forbidden_destination", "FORBIDDEN_DESTINATION"), ("invalid_url", "INVALID_URL")]
)
def test_policy_refusals_are_not_retried(error: str, reason: str) -> None:
    decision = decide(None, error)
    assert (decision.outcome, decision.reason, decision.delay_ms) == (Outcome.FAILED, reason, None)


def test_a_status_wins_over_an_error_class() -> None:
    assert decide(200, "timeout").outcome is Outcome.DELIVERED
    assert decide(404, "timeout").reason == "CLIENT_ERROR"


@pytest.mark.parametrize(
    ("status", "error"), [(500, None), (503, None), (302, None), (None, "timeout"), (None, "connection")]
)
def test_the_last_attempt_dead_letters(status: int | None, error: str | None) -> None:
    assert decide(status, error, attempt=7).outcome is Outcome.RETRY
    decision = decide(status, error, attempt=8)
    assert decision.outcome is Outcome.FAILED
    assert decision.exhausted
    assert decision.delay_ms is None
    assert "8 made" in decision.detail
    short = RetryPolicy.custom([10])
    assert classify(status, error, None, NOW, attempt=1, policy=short, rng=MIDDLE).delay_ms == 10_000
    assert classify(status, error, None, NOW, attempt=2, policy=short, rng=MIDDLE).exhausted


# ---------------------------------------------------------------------------------------------- Retry-After


@pytest.mark.parametrize("status", [408, 429, 502, 503, 504])
def test_throttling_statuses_retry_on_the_schedule_without_retry_after(status: int) -> None:
    decision = decide(status, attempt=1)
    assert (decision.outcome, decision.reason, decision.delay_ms) == (Outcome.RETRY, "THROTTLED", 5_000)


def test_retry_after_seconds_lengthens_the_wait() -> None:
    decision = decide(429, retry_after="120", attempt=1)
    assert decision.delay_ms == 120_000
    assert "Retry-After honoured" in decision.detail


def test_retry_after_never_shortens_the_schedule() -> None:
    assert decide(503, retry_after="0", attempt=1).delay_ms == 5_000
    assert decide(503, retry_after="60", attempt=3).delay_ms == 1_800_000
    assert "honoured" not in decide(503, retry_after="60", attempt=3).detail


def test_retry_after_is_capped_at_an_hour() -> None:
    assert decide(503, retry_after="86400", attempt=1).delay_ms == int(MAX_RETRY_AFTER * 1000)
    assert decide(503, retry_after="9" * 40, attempt=1).delay_ms == 3_600_000
    # Past the cap the schedule still rules when it is longer.
    assert decide(503, retry_after="86400", attempt=5).delay_ms == 18_000_000


def test_retry_after_is_capped_at_the_configured_maximum() -> None:
    """delivery.max_retry_after_seconds reaches the decision (it was read and never used: the cap was always
    an hour)."""
    capped = classify(503, None, "86400", NOW, attempt=1, rng=MIDDLE, max_retry_after=600)
    assert capped.delay_ms == 600_000 and "honoured (600 s)" in capped.detail


def test_retry_after_http_date() -> None:
    when = datetime.fromtimestamp(NOW + 600, tz=UTC)
    header = format_datetime(when, usegmt=True)
    assert header.endswith("GMT")
    assert decide(503, retry_after=header).delay_ms == 600_000
    past = format_datetime(datetime.fromtimestamp(NOW - 600, tz=UTC), usegmt=True)
    assert decide(503, retry_after=past).delay_ms == 5_000


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        ("", None),
        ("  ", None),
        ("120", 120.0),
        (" 120 ", 120.0),
        ("0000000000000000000007", 7.0),
        ("-5", None),
        ("1.5", None),
        ("soon", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
        ("Sun, 06 Nov 1994 08:49:37 GMT", 0.0),
        ("Tue, 14 Nov 2023 22:13:20 GMT", 0.0),
        ("Tue, 14 Nov 2023 22:13:30 GMT", 10.0),
        ("Tuesday, 14-Nov-23 22:13:30 GMT", 10.0),
        ("Tue Nov 14 22:13:30 2023", 10.0),
        ("Fri, 31 Dec 9999 23:59:59 GMT", 253402300799.0 - NOW),
        ("Tue, 99 Nov 2023 22:23:30 GMT", None),
        ("x" * 200, None),
    ],
)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, NOW) == seconds
