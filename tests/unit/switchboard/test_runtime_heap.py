"""The collector tuning every service gets from ``switchboard.runtime.service``."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest

from switchboard.runtime.service import GC_THRESHOLDS, serve, settle_heap, tune_gc


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_tune_gc_raises_the_first_generation(restored_gc: None) -> None:
    gc.set_threshold(700, 10, 10)
    tune_gc()
    assert gc.get_threshold() == GC_THRESHOLDS
    assert GC_THRESHOLDS[0] > 700


def test_settle_heap_freezes_what_is_alive_and_leaves_later_objects_collectable(restored_gc: None) -> None:
    gc.unfreeze()
    kept = [[i] for i in range(1000)]  # alive when the service is ready
    settle_heap()
    assert gc.get_freeze_count() >= len(kept)
    tracked = {id(o) for o in gc.get_objects()}
    assert not any(id(o) in tracked for o in kept)  # frozen objects are left out of the generations

    class Cycle:
        pass

    a, b = Cycle(), Cycle()
    a.other, b.other = b, a  # type: ignore[attr-defined]
    ref = weakref.ref(a)
    del a, b
    assert ref() is not None  # a cycle outlives its names until a collection finds it
    gc.collect()
    assert ref() is None


def test_a_service_settles_its_heap_once_ready(restored_gc: None) -> None:
    gc.unfreeze()

    async def service() -> int:
        async with serve() as life:
            life.stopping.set()
            await life.until_stopped()
        return gc.get_freeze_count()

    assert asyncio.run(service()) > 0
