from __future__ import annotations

import pytest

from switchboard.delivery import policy
from switchboard.delivery.breaker import (
    PROBE_HOLD_MAX_SECONDS,
    PROBE_TIMEOUT_SECONDS,
    PROBE_WAIT_SECONDS,
    Admission,
    Breakers,
    BreakerSettings,
    State,
)

SETTINGS = BreakerSettings(failure_threshold=3, cooldown_seconds=10.0, max_cooldown_seconds=25.0)


def fail(b: Breakers, n: int, now: float, key: str = "sub") -> None:
    for _ in range(n):
        assert b.admit(key, now).hold == 0.0
        b.record(key, failed=True, now=now)


def test_it_opens_after_the_threshold_of_failures_in_a_row_and_holds_sends_for_the_cooldown() -> None:
    b = Breakers(SETTINGS)
    fail(b, 2, now=0.0)
    assert b.state("sub") is State.CLOSED
    assert b.admit("sub", 0.0).hold == 0.0
    assert b.open_count() == 0
    change = b.record("sub", failed=True, now=1.0)
    assert change is not None and (change.state, change.cooldown_seconds) == (State.OPEN, 10.0)
    assert b.admit("sub", 4.0).hold == pytest.approx(7.0)
    assert b.admit("other", 4.0).hold == 0.0  # one circuit per subscription
    assert b.open_count() == 1


def test_a_success_or_an_answer_that_is_the_requests_fault_resets_or_keeps_the_count() -> None:
    b = Breakers(SETTINGS)
    fail(b, 2, now=0.0)
    assert b.record("sub", failed=False, now=0.0) is None  # success: count reset
    fail(b, 2, now=0.0)
    assert b.record("sub", failed=None, now=0.0) is None  # a 400: neither way
    assert b.state("sub") is State.CLOSED
    fail(b, 1, now=0.0)
    assert b.state("sub") is State.OPEN


def test_after_the_cooldown_one_probe_goes_and_the_others_wait() -> None:
    b = Breakers(SETTINGS)
    fail(b, 3, now=0.0)
    assert b.admit("sub", 10.0).hold == 0.0  # the probe
    assert b.state("sub") is State.HALF_OPEN
    assert b.admit("sub", 10.5).hold == PROBE_WAIT_SECONDS
    change = b.record("sub", failed=False, now=11.0)
    assert change is not None and change.state is State.CLOSED
    assert b.admit("sub", 11.0).hold == 0.0 and b.state("sub") is State.CLOSED


def test_held_says_how_long_an_open_circuit_holds_sends_and_takes_no_probe() -> None:
    b = Breakers(SETTINGS)
    assert b.held("sub", 0.0) == 0.0  # closed
    fail(b, 3, now=0.0)
    assert b.held("sub", 4.0) == pytest.approx(6.0)
    assert b.held("sub", 10.0) == 0.0  # the cool-down is over: a probe may go...
    assert b.state("sub") is State.OPEN  # ...but held did not make it half-open,
    assert b.admit("sub", 10.0).hold == 0.0  # so admit still lets the probe go
    assert b.held("sub", 10.5) == 0.0 and b.state("sub") is State.HALF_OPEN


def test_a_failed_probe_opens_it_again_for_twice_as_long_up_to_the_max() -> None:
    b = Breakers(SETTINGS)
    fail(b, 3, now=0.0)
    cooldowns = []
    now = 10.0
    for _ in range(3):
        admission = b.admit("sub", now)
        assert admission.hold == 0.0 and admission.probe
        change = b.record("sub", failed=True, now=now, probe=admission.probe)
        assert change is not None and change.state is State.OPEN
        cooldowns.append(change.cooldown_seconds)
        assert b.admit("sub", now).hold == pytest.approx(change.cooldown_seconds)
        now += change.cooldown_seconds
    assert cooldowns == [20.0, 25.0, 25.0]


def test_a_probe_never_recorded_lets_another_go_after_the_probe_timeout() -> None:
    b = Breakers(SETTINGS)
    fail(b, 3, now=0.0)
    assert b.admit("sub", 10.0).hold == 0.0  # its worker loses it
    assert b.admit("sub", 10.0 + PROBE_TIMEOUT_SECONDS - 1).hold == PROBE_WAIT_SECONDS
    assert b.admit("sub", 10.0 + PROBE_TIMEOUT_SECONDS).hold == 0.0


def test_sends_in_flight_when_it_opened_do_not_extend_it_and_forget_closes_it() -> None:
    b = Breakers(SETTINGS)
    for _ in range(5):  # five sends allowed while closed, all fail afterwards
        assert b.admit("sub", 0.0).hold == 0.0
    for _ in range(5):
        b.record("sub", failed=True, now=1.0)
    assert b.admit("sub", 1.0).hold == pytest.approx(10.0)  # opened once, at the third
    b.forget("sub")
    assert b.state("sub") is State.CLOSED and b.admit("sub", 1.0).hold == 0.0


def test_a_success_of_a_send_from_before_it_opened_closes_it() -> None:
    b = Breakers(SETTINGS)
    assert b.admit("sub", 0.0).hold == 0.0  # in flight while the next three fail
    fail(b, 3, now=0.0)
    change = b.record("sub", failed=False, now=2.0)
    assert change is not None and change.state is State.CLOSED
    assert b.admit("sub", 2.0).hold == 0.0


def test_a_failure_of_a_send_from_before_it_opened_is_not_taken_for_the_probe() -> None:
    b = Breakers(SETTINGS)
    early = b.admit("sub", 0.0)  # let through while closed; its answer comes late
    assert early == Admission(0.0)
    fail(b, 3, now=0.0)
    probe = b.admit("sub", 10.0)  # the cool-down is over: the probe goes
    assert probe.hold == 0.0 and probe.probe
    assert b.record("sub", failed=True, now=10.5, probe=early.probe) is None  # not the probe: nothing changes
    assert b.state("sub") is State.HALF_OPEN
    assert b.admit("sub", 10.5).hold == PROBE_WAIT_SECONDS  # the probe is still out, still the only one
    change = b.record("sub", failed=True, now=11.0, probe=probe.probe)  # the probe decides
    assert change is not None and (change.state, change.cooldown_seconds) == (State.OPEN, 20.0)


def test_only_the_probe_releases_the_probe() -> None:
    b = Breakers(SETTINGS)
    fail(b, 3, now=0.0)
    probe = b.admit("sub", 10.0)
    b.release("sub", 0)  # a task that was not the probe is not sent: nothing changes
    assert b.admit("sub", 10.1).hold == PROBE_WAIT_SECONDS
    b.release("sub", probe.probe)  # the probe is not sent: the next task probes
    assert b.admit("sub", 10.2).probe


def test_a_probe_replaced_after_the_timeout_cannot_release_or_decide_for_its_successor() -> None:
    b = Breakers(SETTINGS)
    fail(b, 3, now=0.0)
    stale = b.admit("sub", 10.0)
    fresh = b.admit("sub", 10.0 + PROBE_TIMEOUT_SECONDS)  # the first one was taken for lost
    assert stale.probe and fresh.probe and fresh.probe != stale.probe
    b.release("sub", stale.probe)  # the stale one comes back unsent
    assert b.admit("sub", 11.0 + PROBE_TIMEOUT_SECONDS).hold == PROBE_WAIT_SECONDS  # no second probe
    assert b.record("sub", failed=True, now=12.0 + PROBE_TIMEOUT_SECONDS, probe=stale.probe) is None
    assert b.state("sub") is State.HALF_OPEN
    change = b.record("sub", failed=False, now=13.0 + PROBE_TIMEOUT_SECONDS, probe=fresh.probe)
    assert change is not None and change.state is State.CLOSED


@pytest.mark.parametrize(
    ("status", "error", "unavailable"),
    [
        (200, None, False),
        (503, None, True),
        (500, None, True),
        (429, None, True),
        (None, "timeout", True),
        (None, "connection", True),
        (400, None, None),
        (410, None, None),
        (302, None, None),
        (None, "forbidden_destination", None),
    ],
)
def test_what_the_breaker_counts(status: int | None, error: str | None, unavailable: bool | None) -> None:
    decision = policy.classify(status, error, None, 0.0, attempt=1)
    assert policy.endpoint_unavailable(decision) is unavailable


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        BreakerSettings(failure_threshold=0)
    with pytest.raises(ValueError):
        BreakerSettings(cooldown_seconds=700.0, max_cooldown_seconds=600.0)


def test_while_the_probe_is_out_the_others_wait_until_its_answer_is_due() -> None:
    """They were deferred a second at a time: with a 10 s timeout, a backlog went round the delay queue ten
    times per probe (a state read and a confirmed publish each), found in review. They now wait until the
    probe's answer is due, at least a second and at most PROBE_HOLD_MAX_SECONDS; a probe that stays out past
    PROBE_TIMEOUT_SECONDS is replaced."""
    b = Breakers(SETTINGS)
    fail(b, 3, now=0.0)
    probe = b.admit("sub", 10.0, answer_within=11.0)
    assert (probe.hold, bool(probe.probe)) == (0.0, True)
    assert b.admit("sub", 10.5, answer_within=11.0).hold == pytest.approx(PROBE_HOLD_MAX_SECONDS)  # 10.5 s to 21.0
    assert b.probe_hold("sub", 12.0) == pytest.approx(9.0)
    assert b.admit("sub", 20.8).hold == PROBE_WAIT_SECONDS  # at least a second
    assert b.admit("other", 12.0).hold == 0.0 and b.probe_hold("other", 12.0) == PROBE_WAIT_SECONDS
    change = b.record("sub", failed=True, now=21.0, probe=probe.probe)  # the probe timed out: open again
    assert change is not None and change.cooldown_seconds == 20.0
    assert b.admit("sub", 21.5).hold == pytest.approx(19.5)
    assert b.admit("sub", 41.0, answer_within=5.0).probe  # the next probe, due 5 s later
    assert b.admit("sub", 42.0).hold == pytest.approx(4.0)
    assert b.admit("sub", 41.0 + PROBE_TIMEOUT_SECONDS, answer_within=5.0).probe  # lost: another one goes
