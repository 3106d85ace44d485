"""bench/wrkstats.py: wrk 4.1.0's latency correction taken out again, and the open loop's pacing."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from bench import wrkstats


def test_the_interval_is_wrks_integer_arithmetic() -> None:
    # runtime_us / (complete / connections), both divisions on integers
    assert wrkstats.wrk_interval(65_000_000, 48_000, 128) == 65_000_000 // 375
    assert wrkstats.wrk_interval(20_003_117, 28_001, 32) == 20_003_117 // 875
    assert wrkstats.wrk_interval(1_000_000, 100, 128) is None  # fewer answers than connections: no correction


def test_the_correction_adds_copies_below_each_long_latency() -> None:
    assert wrkstats.stats_correct({10: 2, 35: 1, 50: 3}, 10) == {10: 2, 35: 1, 25: 1, 15: 1, 50: 3, 40: 3, 30: 3, 20: 3}
    assert wrkstats.stats_correct({19: 5}, 10) == {19: 5}  # below twice the interval: nothing added


@pytest.mark.parametrize("sigma", [0.5, 0.75, 1.0, 1.5])
def test_uncorrect_restores_the_measured_histogram_exactly(sigma: float) -> None:
    rnd = random.Random(sigma)
    measured = dict(Counter(int(rnd.lognormvariate(math.log(50_000), sigma)) for _ in range(48_000)))
    interval = wrkstats.wrk_interval(65_000_000, 48_000, 128)
    assert interval is not None
    corrected = wrkstats.stats_correct(measured, interval)
    assert sum(corrected.values()) > 48_000  # heavier tails: more synthetic samples
    assert wrkstats.uncorrect(corrected, interval) == measured
    summary, why = wrkstats.raw_latency(corrected, duration_us=65_000_000, requests=48_000, timeouts=0, connections=128)
    assert why is None and summary is not None
    assert summary["n"] == 48_000
    assert summary["p99"] == wrkstats.percentile(measured, 99) / 1000  # type: ignore[operator]
    assert summary["max"] == max(measured) / 1000


def test_copies_below_the_smallest_measured_value_are_taken_out_too() -> None:
    # min 150, interval 100: the 320 adds a copy at 220 and one at 120, below every measured value
    measured = {150: 4, 320: 1}
    corrected = wrkstats.stats_correct(measured, 100)
    assert corrected == {150: 4, 320: 1, 220: 1, 120: 1}
    assert wrkstats.uncorrect(corrected, 100) == measured


def test_a_histogram_that_is_not_what_the_correction_leaves_is_unavailable() -> None:
    measured = {10_000: 950, 900_000: 50}
    ok, why = wrkstats.raw_latency(
        wrkstats.stats_correct(measured, 80_000),
        duration_us=10_000_000, requests=1000, timeouts=0, connections=8,
    )  # fmt: skip
    assert why is None and ok is not None and ok["p90"] == 10.0 and ok["mean"] == 54.5
    # read without the correction's copies: slots go below zero
    none, why = wrkstats.raw_latency(measured, duration_us=10_000_000, requests=1000, timeouts=0, connections=8)
    assert none is None and why is not None and "below zero" in why
    # responses over --timeout are not in the histogram: they are accounted for, not taken for missing samples
    _, why = wrkstats.raw_latency(
        wrkstats.stats_correct(measured, 80_000), duration_us=10_000_000, requests=1003, timeouts=3, connections=8
    )
    assert why is None
    # a count that does not match wrk's answers (another wrk's correction, a partial read)
    _, why = wrkstats.raw_latency(
        wrkstats.stats_correct(measured, 80_000), duration_us=10_000_000, requests=1200, timeouts=0, connections=8
    )
    assert why is not None and "not the 1200 responses" in why


def test_percentile_is_wrks_rank_with_c_rounding() -> None:
    hist = {i: 1 for i in range(1, 101)}
    # rank = round(p/100 * count + 0.5), half away from zero: 50.5 -> 51 (Python's round would give 50)
    assert wrkstats.percentile(hist, 50) == 51
    assert wrkstats.percentile(hist, 99) == 100
    assert wrkstats.percentile({}, 50) is None


def test_pacing_counts_a_200_at_the_rate_only_when_its_request_left_on_time() -> None:
    # The review's case: 48,000 planned at 800/s, sent at 776/s with every one answered 200 before wrk stopped.
    # Request k leaves when it can: k / 776 s after T0 instead of k / 800.
    sent = [[f"e{k}" for k in range(48_000)]]
    lags = [[1000 * (k / 776 - k / 800) for k in range(48_000)]]
    answers = [list(reversed(sent[0]))]  # the order of the answers does not matter
    p = wrkstats.pacing(sent, lags, answers, 48_000, 10.0)
    assert p["accepted_share"] == 1.0
    on_time = sum(1 for x in lags[0] if x <= 10.0)
    assert on_time == 259  # within 10 ms of schedule only for the first third of a second
    assert p["sent_on_time"] == p["accepted_on_time"] == on_time
    assert p["accepted_on_time_share"] == on_time / 48_000
    assert p["lag_ms"]["max"] == pytest.approx(1000 * (47_999 / 776 - 47_999 / 800))


def test_pacing_pairs_a_200_with_its_own_send_and_counts_unsent_requests_as_late() -> None:
    # thread 0 sent a, b, a (a re-send of a); thread 1 sent c; 10 planned, 6 never sent
    sent = [["a", "b", "a"], ["c"]]
    lags = [[0.5, 30.0, 2.0], [-0.3]]  # b left 30 ms late; c a little early (counts as 0)
    ok = wrkstats.split(["b", "a", "a", "c"], [3, 1])
    assert ok == [["b", "a", "a"], ["c"]]
    p = wrkstats.pacing(sent, lags, ok, 10, 10.0)
    assert p["sent"] == 4 and p["sent_on_time"] == 3 and p["sent_on_time_share"] == 0.3
    assert p["accepted"] == 4 and p["accepted_on_time"] == 3  # b's 200 came, but b left late
    assert p["accepted_on_time_share"] == 0.3 and p["accepted_share"] == 0.4
    assert p["lag_ms"]["p50"] == 2.0 and p["lag_ms"]["max"] == 30.0
    assert p["unmatched_200s"] == 0
    with pytest.raises(ValueError):
        wrkstats.pacing(sent, [[0.5], [0.1]], ok, 10, 10.0)
