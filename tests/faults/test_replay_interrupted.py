"""A replay job whose control service dies does not stay RUNNING forever: killed (SIGKILL), the job is
recorded FAILED on the first read after ``control.replay_stale_after_seconds`` without a heartbeat; stopped
(SIGTERM), the service records it FAILED itself. Either way the message says how much was enqueued, and the
job is not resumed. Without the heartbeat and the check, GetReplay answers RUNNING forever and both tests
fail on their deadline."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from webhooks.v1 import event_pb2, replay_pb2

from switchboard.config import PlatformConfig, load_config
from switchboard_devstack.stack import Stack
from tests.conftest import run_stack
from tests.e2e.test_operations import post, stubs, wait_status
from tests.stack_fixture import write_test_config

pytestmark = pytest.mark.integration

STALE_SECONDS = 3
EVENTS = 20


@pytest.fixture(scope="module")
def replay_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    cfg = write_test_config(Path(tmp_path_factory.mktemp("replay-stack")))
    text = cfg.path.read_text().replace("[control]\n", f"[control]\nreplay_stale_after_seconds = {STALE_SECONDS}\n", 1)
    cfg.path.write_text(text)
    yield from run_stack(load_config(cfg.path))


@pytest.fixture(scope="module")
def window(replay_stack: Stack) -> tuple[int, int]:
    """``EVENTS`` processed events of source ``shop``, and a time range that holds them."""
    cfg = replay_stack.cfg
    started = int(time.time()) - 1
    ids = [f"evt_intr_{secrets.token_hex(4)}_{i}" for i in range(EVENTS)]
    for event_id in ids:
        post(cfg, event_id, "invoice.paid", amount_due=1)
    for event_id in ids:
        wait_status(cfg, event_id, event_pb2.EVENT_STATUS_PROCESSED)
    return started, int(time.time()) + 1


def start_slow_job(cfg: PlatformConfig, window: tuple[int, int]) -> str:
    """Starts a job that enqueues 2 events per second and returns its id once it has enqueued one (the stream
    is dropped: the job runs on in the service)."""
    request = replay_pb2.ReplayEventsRequest(source="shop", rate_per_second=2)
    request.start_time.FromSeconds(window[0])
    request.end_time.FromSeconds(window[1])
    with stubs(cfg) as (_, replay):
        stream = replay.ReplayEvents(request, timeout=60)
        for update in stream:
            if update.progress.queued >= 1:
                stream.cancel()
                return str(update.progress.replay_id)
    raise AssertionError("the job never enqueued an event")


def restart_control(stack: Stack, how: str) -> None:
    assert stack.control is not None
    if how == "kill":
        stack.control.kill()
    else:
        assert stack.control.terminate(timeout=30) == 0, stack.control.log_tail()
    stack.control.start()
    stack.control.wait_ready(60)


def progress(cfg: PlatformConfig, replay_id: str) -> Any:
    with stubs(cfg) as (_, replay):
        return replay.GetReplay(replay_pb2.GetReplayRequest(replay_id=replay_id), timeout=10).progress


def test_a_job_whose_control_service_is_killed_is_recorded_failed_once_stale(
    replay_stack: Stack, window: tuple[int, int]
) -> None:
    cfg = replay_stack.cfg
    replay_id = start_slow_job(cfg, window)
    restart_control(replay_stack, "kill")
    last = progress(cfg, replay_id)
    deadline = time.monotonic() + STALE_SECONDS + 30
    while last.state == replay_pb2.REPLAY_STATE_RUNNING:
        assert time.monotonic() < deadline, f"still RUNNING long after its runner died: {last}"
        time.sleep(0.5)
        last = progress(cfg, replay_id)
    assert last.state == replay_pb2.REPLAY_STATE_FAILED, last
    assert last.message.startswith("interrupted: its control service stopped (nothing recorded for"), last.message
    assert 1 <= last.queued < EVENTS and last.matched >= last.queued, last  # enqueued in part, never resumed
    assert f"{last.queued} of {last.matched} matched events had been enqueued" in last.message
    assert last.finished_at.seconds > 0
    time.sleep(2)  # recorded, not recomputed per read: the same answer later
    again = progress(cfg, replay_id)
    assert (again.state, again.queued, again.message) == (last.state, last.queued, last.message)


def test_a_job_whose_control_service_stops_gracefully_is_failed_at_once(
    replay_stack: Stack, window: tuple[int, int]
) -> None:
    cfg = replay_stack.cfg
    replay_id = start_slow_job(cfg, window)
    restart_control(replay_stack, "term")
    last = progress(cfg, replay_id)  # no waiting for staleness: the stopping service wrote it
    assert last.state == replay_pb2.REPLAY_STATE_FAILED, last
    assert last.message.startswith("interrupted: its control service stopped;"), last.message
    assert 1 <= last.queued < EVENTS, last
