"""``ReplayManager.follow``: the stream of a job's progress ends with its final state, however the job's end
falls between two progress messages."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from control_service import replay
from control_service.replay import Limits, ReplayManager
from switchboard.model.operations import ReplayJob, ReplayState


class NoStore:
    """The manager's store and broker ports, none of which ``follow`` may reach while the job runs here."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"follow reached the store: {name}")


def manager_running(job: ReplayJob, runner: asyncio.Task[None]) -> ReplayManager:
    """A manager that runs ``job`` (as ``start`` leaves it), the job's state moved by the test."""
    store: Any = NoStore()
    manager = ReplayManager(store, store, store, store, store, Limits())
    manager._running[job.id] = (job, runner, asyncio.Event())
    return manager


async def test_a_job_that_ends_while_its_running_copy_is_sent_still_sends_its_final_state(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(replay, "PROGRESS_EVERY", 0.0)
    job = ReplayJob("rp_1", "{}", state=ReplayState.RUNNING, started_us=1)
    runner = asyncio.create_task(asyncio.sleep(3600))
    manager = manager_running(job, runner)

    seen: list[ReplayJob] = []
    async for progress in manager.follow(job):
        seen.append(progress)
        if len(seen) == 1:  # the job finishes while the caller is busy with the RUNNING copy
            job.state, job.matched = ReplayState.DONE, 3
        assert len(seen) < 5

    assert [p.state for p in seen] == [ReplayState.RUNNING, ReplayState.DONE]
    assert seen[-1].matched == 3
    assert seen[0] is not job and seen[-1] is not job  # copies: later changes do not rewrite what was sent
    runner.cancel()


async def test_a_finished_job_sends_its_state_once() -> None:
    job = ReplayJob("rp_2", "{}", state=ReplayState.CANCELLED, started_us=1)
    runner = asyncio.create_task(asyncio.sleep(3600))
    manager = manager_running(job, runner)

    assert [p.state async for p in manager.follow(job)] == [ReplayState.CANCELLED]
    runner.cancel()
