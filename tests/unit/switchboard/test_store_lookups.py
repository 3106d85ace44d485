"""``GroupRead``: lookups of concurrent callers merged into few reads, driven by hand (each read waits until
the test answers it)."""

from __future__ import annotations

import asyncio

import pytest

from switchboard.errors import StoreUnavailable
from switchboard.store.lookups import GroupRead


class HandDriven:
    """Stands in for the store's read: records the keys of every read and waits for the test's answer."""

    def __init__(self) -> None:
        self.reads: list[tuple[list[str], asyncio.Future[dict[str, int]]]] = []

    async def read(self, keys: list[str]) -> dict[str, int]:
        fut: asyncio.Future[dict[str, int]] = asyncio.get_running_loop().create_future()
        self.reads.append((keys, fut))
        return await fut

    def answer(self, i: int) -> None:
        """Read ``i`` finds a row for every key but those starting with "missing"."""
        keys, fut = self.reads[i]
        fut.set_result({k: len(k) for k in keys if not k.startswith("missing")})


def looking_up(group: GroupRead[str, int], *calls: list[str]) -> list[asyncio.Task[dict[str, int]]]:
    return [asyncio.create_task(group.get(keys)) for keys in calls]


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def results(*tasks: asyncio.Task[dict[str, int]]) -> list[dict[str, int]]:
    return list(await asyncio.wait_for(asyncio.gather(*tasks), 5))


async def test_lookups_of_one_turn_share_a_read_and_each_caller_gets_its_own_rows() -> None:
    source = HandDriven()
    group: GroupRead[str, int] = GroupRead(source.read)
    tasks = looking_up(group, ["a"], ["bb", "a"], ["missing-1"], [])
    await settle()
    assert [keys for keys, _ in source.reads] == [["a", "bb", "missing-1"]]  # one read, each key once
    source.answer(0)
    assert await results(*tasks) == [{"a": 1}, {"bb": 2, "a": 1}, {}, {}]
    assert group.reads == 1


async def test_while_every_slot_is_out_lookups_wait_and_leave_together() -> None:
    source = HandDriven()
    group: GroupRead[str, int] = GroupRead(source.read, in_flight=2)
    first = looking_up(group, ["a"])
    await settle()
    second = looking_up(group, ["b"])
    await settle()
    waiting = looking_up(group, ["c"], ["d"])
    await settle()
    later = looking_up(group, ["e"])
    await settle()
    assert [keys for keys, _ in source.reads] == [["a"], ["b"]]  # light load: each went at once
    source.answer(0)
    await settle()
    assert [keys for keys, _ in source.reads][2:] == [["c", "d", "e"]]  # everything that waited, in one read
    source.answer(1)
    source.answer(2)
    assert await results(*first, *second, *waiting, *later) == [{"a": 1}, {"b": 1}, {"c": 1}, {"d": 1}, {"e": 1}]


async def test_reads_carry_at_most_max_keys_and_a_full_read_does_not_wait_for_a_slot() -> None:
    source = HandDriven()
    group: GroupRead[str, int] = GroupRead(source.read, in_flight=1, max_keys=3)
    blocker = looking_up(group, ["x"])
    await settle()
    tasks = looking_up(group, ["a", "b"], ["c"], ["d", "e"], ["f"], ["g", "h", "i", "j"])
    await settle()
    # [a b c] is full and goes although the one slot is out; [d e f] too; the caller asking for four keys, more
    # than the limit, goes alone, and at once as well (it is more than a full read's worth).
    assert [keys for keys, _ in source.reads] == [["x"], ["a", "b", "c"], ["d", "e", "f"], ["g", "h", "i", "j"]]
    for i in range(4):
        source.answer(i)
    got = await results(*blocker, *tasks)
    assert got[-1] == {"g": 1, "h": 1, "i": 1, "j": 1}


async def test_a_failed_read_fails_only_its_callers() -> None:
    source = HandDriven()
    group: GroupRead[str, int] = GroupRead(source.read, in_flight=1)
    (a,) = looking_up(group, ["a"])
    await settle()
    b, c = looking_up(group, ["b"], ["c"])
    await settle()
    source.reads[0][1].set_exception(StoreUnavailable("Cassandra: OperationTimedOut"))
    await settle()
    with pytest.raises(StoreUnavailable, match="OperationTimedOut"):
        await a
    assert [keys for keys, _ in source.reads][1] == ["b", "c"]  # the failure does not hold the others
    source.answer(1)
    assert await results(b, c) == [{"b": 1}, {"c": 1}]


async def test_a_caller_that_gives_up_is_left_out_and_the_others_are_answered() -> None:
    source = HandDriven()
    group: GroupRead[str, int] = GroupRead(source.read, in_flight=1)
    (blocker,) = looking_up(group, ["a"])
    await settle()
    quitter, stayer = looking_up(group, ["q"], ["s"])
    await settle()
    quitter.cancel()
    await settle()
    source.answer(0)
    await settle()
    assert [keys for keys, _ in source.reads] == [["a"], ["s"]]  # the cancelled lookup was not read
    source.answer(1)
    assert await results(blocker, stayer) == [{"a": 1}, {"s": 1}]
    assert quitter.cancelled()


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        GroupRead(HandDriven().read, in_flight=0)
    with pytest.raises(ValueError, match="at least 1"):
        GroupRead(HandDriven().read, max_keys=0)
