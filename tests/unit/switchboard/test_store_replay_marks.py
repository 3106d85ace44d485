"""``OperationsStore.mark_replay_interrupted``'s values (the lightweight transaction itself runs on the stack's
Cassandra: tests/e2e/test_redrive_reset.py)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from switchboard.model.operations import ReplayJob, ReplayState
from switchboard.store.operations import OperationsStore


def test_the_mark_keeps_the_ttl_the_rest_of_the_row_has_left() -> None:
    """The rest of the row was written last when it was read; marked with a fresh TTL, the four marked cells
    outlived it: a job with no request, no counts and a start at the epoch."""
    sent: list[tuple[Any, ...]] = []

    class Session:
        cfg = SimpleNamespace(ttl_seconds=30 * 86_400)
        statements = SimpleNamespace(operations=SimpleNamespace(replay_interrupted="mark"))

        async def execute(self, statement: str, params: tuple[Any, ...]) -> list[Any]:
            sent.append(params)
            return [(True,)]

    job = ReplayJob("rp_1", "{}", state=ReplayState.FAILED, updated_us=10 * 86_400 * 1_000_000)
    marked = asyncio.run(OperationsStore(Session()).mark_replay_interrupted(job, read_updated_us=0))  # type: ignore[arg-type]
    assert marked and sent[0][0] == 20 * 86_400  # 30 days from the last write, 10 of them gone
    job.updated_us = 40 * 86_400 * 1_000_000
    asyncio.run(OperationsStore(Session()).mark_replay_interrupted(job, read_updated_us=0))  # type: ignore[arg-type]
    assert sent[1][0] == 1  # expiring anyway: at once
