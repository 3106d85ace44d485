"""Replay jobs: one whose run hits an unexpected error (a bug, not a store outage) ends FAILED with a message at
once (it used to stay RUNNING until it looked abandoned a minute later, "its control service stopped"); a
forced range longer than the store lists is refused when it is asked for (it used to start, then fail)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from control_service.replay import Limits, ReplayManager, Selection
from switchboard.errors import InvalidRequest
from switchboard.model.operations import ReplayJob, ReplayState


class BrokenEvents:
    async def list(self, source: str, start_us: int, end_us: int, limit: int, after: Any) -> Any:
        raise ValueError("year 10000 is out of range")


class Jobs:
    def __init__(self) -> None:
        self.written: list[ReplayState] = []

    async def put_replay(self, job: ReplayJob) -> None:
        self.written.append(job.state)

    async def get_replay(self, replay_id: str) -> ReplayJob | None:
        return None

    async def mark_replay_interrupted(self, job: ReplayJob, read_updated_us: int) -> bool:
        return False


async def test_a_replay_that_fails_on_an_internal_error_is_recorded_failed_not_left_running() -> None:
    jobs = Jobs()
    manager = ReplayManager(BrokenEvents(), None, None, jobs, None, Limits())  # type: ignore[arg-type]
    job = await manager.start(Selection(source="shop", start_us=1_000_000, end_us=2_000_000, dry_run=True))
    for _ in range(200):
        if job.state is not ReplayState.RUNNING:
            break
        await asyncio.sleep(0.01)
    assert job.state is ReplayState.FAILED
    assert job.message == "the replay stopped on an internal error (see the logs)"
    assert "year 10000" not in job.message  # the text of an internal error is for the logs only
    assert jobs.written[-1] is ReplayState.FAILED and job.finished_us > 0


async def test_a_forced_replay_longer_than_the_store_lists_is_refused_before_it_starts() -> None:
    jobs = Jobs()
    manager = ReplayManager(BrokenEvents(), None, None, jobs, None, Limits())  # type: ignore[arg-type]
    day = 86_400 * 1_000_000
    with pytest.raises(InvalidRequest) as caught:
        await manager.start(Selection(source="shop", start_us=day, end_us=91 * day, dry_run=True, force=True))
    assert caught.value.reason == "TIME_RANGE_TOO_LARGE" and jobs.written == []
    with pytest.raises(InvalidRequest) as unforced:  # without force, the replay limit (7 days) speaks first
        await manager.start(Selection(source="shop", start_us=day, end_us=9 * day, dry_run=True))
    assert "force" in unforced.value.message
