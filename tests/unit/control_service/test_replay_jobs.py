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


@pytest.mark.parametrize(
    ("selection", "reason"),
    [
        ({"event_types": tuple(f"type.{i}.*" for i in range(65))}, "EVENT_TYPE_INVALID"),
        ({"event_types": ("invoice.[a-z]*",)}, "EVENT_TYPE_INVALID"),
        ({"event_types": ("x" * 129,)}, "EVENT_TYPE_INVALID"),
        ({"event_types": ("",)}, "EVENT_TYPE_INVALID"),
        ({"source": "s" * 256}, "SOURCE_INVALID"),
        ({"reason": "r" * 1025}, "FIELD_INVALID"),
    ],
)
async def test_a_replay_refuses_globs_sources_and_reasons_no_subscription_or_event_could_have(
    selection: dict[str, Any], reason: str
) -> None:
    """Globs were not checked: 40,000 of them (or '[' classes, which fnmatch compiles anew past its cache) took
    seconds of the control service's one event loop per event listed, the subscription API and the dead-letter
    recorders' heartbeats with it; a source longer than any key ended DONE with 0 matched or FAILED in the
    store, and the reason, rewritten into the job's row every second, had no bound."""
    jobs = Jobs()
    manager = ReplayManager(BrokenEvents(), None, None, jobs, None, Limits())  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest) as caught:
        await manager.start(Selection(**{"source": "shop", "start_us": 1, "end_us": 2, **selection}))
    assert caught.value.reason == reason and jobs.written == []


async def test_a_single_replay_refuses_a_key_longer_than_any_stored_event_and_an_overlong_reason() -> None:
    manager = ReplayManager(BrokenEvents(), None, None, Jobs(), None, Limits())  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest) as caught:
        await manager.replay_event("shop", "e" * 251, "", "")
    assert caught.value.reason == "EVENT_ID_INVALID"
    with pytest.raises(InvalidRequest) as caught:
        await manager.replay_event("shop", "evt_1", "", "r" * 1025)
    assert caught.value.reason == "FIELD_INVALID"


class TypedEvents:
    """One page of events of three types."""

    async def list(self, source: str, start_us: int, end_us: int, limit: int, after: Any) -> Any:
        from switchboard.model.events import EventStatus, EventSummary

        types = ["invoice.paid", "invoice.created", "charge.refunded"]
        return [
            EventSummary(source, f"evt_{i}", t, 1_500_000, EventStatus.PROCESSED, "r1") for i, t in enumerate(types)
        ], None


async def test_a_replay_counts_the_events_its_globs_take() -> None:
    manager = ReplayManager(TypedEvents(), None, None, Jobs(), None, Limits())  # type: ignore[arg-type]
    sel = Selection(source="shop", start_us=1_000_000, end_us=2_000_000, dry_run=True, event_types=("invoice.*",))
    job = await manager.start(sel)
    for _ in range(200):
        if job.state is not ReplayState.RUNNING:
            break
        await asyncio.sleep(0.01)
    assert (job.state, job.matched) == (ReplayState.DONE, 2)
