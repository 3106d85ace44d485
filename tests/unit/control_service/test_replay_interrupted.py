"""When a stored replay job counts as interrupted (its runner stopped writing it)."""

from __future__ import annotations

from control_service.replay import Limits, interrupted
from switchboard.model.operations import ReplayJob, ReplayState

S = 1_000_000


def job(state: ReplayState = ReplayState.RUNNING, started: int = 100 * S, updated: int = 0) -> ReplayJob:
    return ReplayJob("rp_1", "{}", state=state, started_us=started, updated_us=updated)


def test_a_running_job_written_recently_is_not_interrupted() -> None:
    assert not interrupted(job(updated=150 * S), now=200 * S, stale_after_us=60 * S)


def test_a_running_job_silent_longer_than_the_limit_is_interrupted() -> None:
    assert interrupted(job(updated=139 * S), now=200 * S, stale_after_us=60 * S)
    assert not interrupted(job(updated=140 * S), now=200 * S, stale_after_us=60 * S)  # exactly at the limit


def test_a_job_without_heartbeats_counts_from_its_start() -> None:
    assert interrupted(job(started=100 * S), now=161 * S, stale_after_us=60 * S)
    assert not interrupted(job(started=100 * S), now=159 * S, stale_after_us=60 * S)


def test_a_finished_job_is_never_interrupted_however_old() -> None:
    for state in (ReplayState.DONE, ReplayState.CANCELLED, ReplayState.FAILED):
        assert not interrupted(job(state=state, updated=1 * S), now=10_000 * S, stale_after_us=60 * S)


def test_runners_write_six_times_per_staleness_window() -> None:
    assert Limits(stale_after_us=60 * S).heartbeat_seconds == 10.0
    assert Limits(stale_after_us=3 * S).heartbeat_seconds == 0.5
