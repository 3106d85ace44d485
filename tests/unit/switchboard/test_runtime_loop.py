"""``after_pauses``: a write tried again after each pause while it raises the error named, its last failure
returned rather than raised (the replay's final write and the redrive's REDRIVEN mark)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from switchboard.errors import StoreUnavailable
from switchboard.runtime.loop import after_pauses


def failing(times: int, calls: list[int]) -> Callable[[], Awaitable[None]]:
    async def attempt() -> None:
        calls.append(len(calls))
        if len(calls) <= times:
            raise StoreUnavailable(f"refused {len(calls)}")

    return attempt


async def test_it_tries_again_after_each_pause_and_reports_every_retried_failure() -> None:
    calls: list[int] = []
    seen: list[str] = []
    error = await after_pauses(failing(2, calls), (0.0, 0.0, 0.0), StoreUnavailable, lambda e: seen.append(e.message))
    assert error is None and len(calls) == 3 and seen == ["refused 1", "refused 2"]


async def test_the_last_failure_is_returned_not_raised() -> None:
    calls: list[int] = []
    error = await after_pauses(failing(9, calls), (0.0, 0.0), StoreUnavailable)
    assert isinstance(error, StoreUnavailable) and error.message == "refused 3" and len(calls) == 3


async def test_another_error_is_raised_at_once() -> None:
    async def broken() -> None:
        raise ValueError("a bug")

    with pytest.raises(ValueError):
        await after_pauses(broken, (0.0,), StoreUnavailable)
