"""FilterIndex and the subscription cache's ``matching`` on it: the same subscriptions as asking every
subscription's filter (the index: in the order they were added), for random filters (sources, exact types,
globs with ``*`` and ``?`` anywhere, no types at all) and events; through adds, changes, disables and
removals."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from switchboard.delivery.filters import Filter
from switchboard.delivery.routing import FilterIndex
from switchboard.errors import SwitchboardError
from switchboard.model.subscriptions import Subscription, SubscriptionStatus
from switchboard.subscription_cache import SubscriptionCache
from tests.unit.factories import event

SOURCES = ["stripe", "shop", "gh", "s4"]
TYPES = ["invoice.paid", "invoice.payment.failed", "in", "charge.refunded", "charge", "customer.created", "x"]


def random_globs(rng: random.Random) -> tuple[str, ...]:
    globs = []
    for _ in range(rng.choice([0, 1, 1, 1, 2, 3])):
        t = rng.choice(TYPES)
        shape = rng.randrange(6)
        if shape == 0:
            globs.append(t)
        elif shape == 1:
            globs.append("*")
        elif shape == 2:
            cut = rng.randrange(len(t) + 1)
            globs.append(t[:cut] + "*")
        elif shape == 3:
            i = rng.randrange(len(t))
            globs.append(t[:i] + "?" + t[i + 1 :])
        elif shape == 4:
            cut = rng.randrange(len(t) + 1)
            globs.append("*" + t[cut:])
        else:
            i, j = sorted(rng.sample(range(len(t) + 1), 2))
            globs.append(t[:i] + "*" + t[j:] + rng.choice(["", "*", "?"]))
    return tuple(globs)


def random_filter(rng: random.Random) -> Filter:
    sources = rng.sample(SOURCES, rng.choice([0, 0, 1, 1, 2]))
    return Filter(sources=sources, event_types=random_globs(rng))


def random_event_type(rng: random.Random) -> str:
    t = rng.choice(TYPES)
    return t if rng.random() < 0.8 else t + rng.choice([".x", "s", ""])


@pytest.mark.parametrize("seed", range(8))
def test_the_index_finds_what_asking_every_filter_finds_in_the_order_they_were_added(seed: int) -> None:
    rng = random.Random(seed)
    filters: dict[str, Filter] = {}
    index = FilterIndex()
    for step in range(600):
        key = f"sub_{rng.randrange(120)}"
        if rng.random() < 0.2:
            filters.pop(key, None)
            index.remove(key)
        else:
            f = random_filter(rng)
            filters[key] = f  # a key added again keeps its place, as in a dict
            index.add(key, f)
        if step % 10 == 0:
            for _ in range(20):
                source, event_type = rng.choice([*SOURCES, "other"]), random_event_type(rng)
                found = index.candidates(source, event_type)
                expected = [k for k, f in filters.items() if f.matches_meta(source, event_type)]
                assert [k for k in found if filters[k].matches_meta(source, event_type)] == expected
                assert len(found) == len(set(found)) and set(found) <= set(filters)
    assert len(index) == len(filters)


def test_a_glob_is_found_by_its_literal_prefix_and_the_rest_is_left_to_the_filter() -> None:
    index = FilterIndex()
    index.add("a", Filter(event_types=["invoice.*"]))
    index.add("b", Filter(event_types=["in?oice.paid"]))
    index.add("c", Filter(sources=["stripe"], event_types=["charge.refunded"]))
    index.add("d", Filter())  # every source, every type
    assert index.candidates("stripe", "invoice.paid") == ["a", "b", "d"]
    assert index.candidates("stripe", "charge.refunded") == ["c", "d"]
    assert index.candidates("shop", "charge.refunded") == ["d"]
    assert index.candidates("stripe", "inxyz") == ["b", "d"]  # found by "in"; its filter says no
    index.remove("d")
    index.remove("missing")
    assert index.candidates("shop", "customer.created") == []


def test_removing_everything_leaves_nothing_behind() -> None:
    rng = random.Random(3)
    index = FilterIndex()
    for i in range(200):
        index.add(f"k{i}", random_filter(rng))
    for i in range(200):
        index.remove(f"k{i}")
    assert len(index) == 0
    assert not index._exact and not index._prefixed and not index._lengths and not index._order


class Store:
    """What the cache reads: every subscription, or one."""

    def __init__(self, subs: list[Subscription]) -> None:
        self.subs = {s.id: s for s in subs}

    async def all(self) -> list[Subscription]:
        return list(self.subs.values())

    async def get(self, subscription_id: str) -> Subscription | None:
        return self.subs.get(subscription_id)


def sub(i: int, **over: Any) -> Subscription:
    fields: dict[str, Any] = {"id": f"sub_{i}", "client_id": "c", "callback_url": "https://h.example.com/"}
    return Subscription(**(fields | over))


async def test_the_cache_matches_through_reloads_changes_disables_and_deletes() -> None:
    rng = random.Random(5)

    def random_sub(i: int) -> Subscription:
        f = random_filter(rng)
        condition = "event.amount > 10" if rng.random() < 0.2 else ""
        status = SubscriptionStatus.DISABLED if rng.random() < 0.15 else SubscriptionStatus.ENABLED
        return sub(
            i, sources=tuple(f.sources), event_types=f.event_types.globs, trigger_conditions=condition, status=status
        )

    store = Store([random_sub(i) for i in range(150)])
    cache = SubscriptionCache(store, "", "", purpose="test")  # type: ignore[arg-type]
    await cache.reload()

    def expected(e: Any) -> list[str]:
        out = []
        for s in store.subs.values():
            f = Filter(sources=s.sources, event_types=s.event_types, condition=s.trigger_conditions or None)
            if s.status is SubscriptionStatus.ENABLED and f.matches(e.source, e.event_type, {"amount": 20}):
                out.append(s.id)
        return out

    for round_ in range(30):
        for _ in range(10):  # changes the cache hears of
            i = rng.randrange(170)
            if rng.random() < 0.2:
                store.subs.pop(f"sub_{i}", None)
            else:
                store.subs[f"sub_{i}"] = random_sub(i)
            await cache.refresh(f"sub_{i}")
        if round_ % 10 == 9:
            await cache.reload()
        for _ in range(20):
            e = event(source=rng.choice(SOURCES), event_type=random_event_type(rng), body=b'{"amount": 20}')
            got = [s.id for s in cache.matching(e)]
            assert sorted(got) == sorted(expected(e))
            assert len(got) == len(set(got))


async def test_a_subscription_whose_stored_filter_no_longer_compiles_matches_nothing_but_exists() -> None:
    """Found in review: taken for deleted, its queued retries were recorded CANCELLED ("the subscription is
    deleted") and its circuit forgotten every minute."""
    broken = sub(1, trigger_conditions="event.amount >")  # stored before a rule that now refuses it
    store = Store([broken, sub(2)])
    cache = SubscriptionCache(store, "", "", purpose="test")  # type: ignore[arg-type]
    await cache.reload()
    assert cache.get("sub_1") == broken and await cache.refresh("sub_1") == broken
    assert [s.id for s in cache.matching(event(source="shop", event_type="invoice.paid"))] == ["sub_2"]


class SlowStore(Store):
    """``all`` answers with what the store held when it was called, once ``release`` is set."""

    def __init__(self, subs: list[Subscription]) -> None:
        super().__init__(subs)
        self.release = asyncio.Event()

    async def all(self) -> list[Subscription]:
        snapshot = list(self.subs.values())
        await self.release.wait()
        return snapshot


async def test_a_change_refreshed_while_a_reload_reads_is_not_undone_by_the_reload() -> None:
    store = SlowStore([sub(1, event_types=("invoice.*",))])
    cache = SubscriptionCache(store, "", "", purpose="test")  # type: ignore[arg-type]
    store.release.set()
    await cache.reload()
    store.release.clear()
    reload = asyncio.create_task(cache.reload())  # reads the store as it is now
    await asyncio.sleep(0)
    store.subs["sub_1"] = sub(1, event_types=("charge.*",))  # changed meanwhile; its notice refreshes it
    await cache.refresh("sub_1")
    store.release.set()
    await reload
    changed = cache.get("sub_1")
    assert changed is not None and changed.event_types == ("charge.*",)
    assert [s.id for s in cache.matching(event(source="shop", event_type="charge.paid"))] == ["sub_1"]
    assert cache.matching(event(source="shop", event_type="invoice.paid")) == []


class SlowFirstRead(Store):
    """Its first ``get`` reads the subscription as it is, then answers after the second read returned."""

    def __init__(self, subs: list[Subscription]) -> None:
        super().__init__(subs)
        self.second_done = asyncio.Event()
        self.reads = 0

    async def get(self, subscription_id: str) -> Subscription | None:
        self.reads += 1
        found = self.subs.get(subscription_id)
        if self.reads == 1:
            await self.second_done.wait()
        else:
            self.second_done.set()
        return found


@pytest.mark.parametrize("second", ["enabled", "deleted"])
async def test_of_two_refreshes_of_one_subscription_the_one_started_last_is_applied(second: str) -> None:
    """Found in review: notices are handled concurrently and the cache applied whichever read ended last, so
    disabling then re-enabling a subscription quickly left it disabled (no fan-out to it) until the next
    reload, and updating then deleting one left it matched."""
    store = SlowFirstRead([sub(1)])
    cache = SubscriptionCache(store, "", "", purpose="test")  # type: ignore[arg-type]
    await cache.reload()
    store.subs["sub_1"] = sub(1, status=SubscriptionStatus.DISABLED)
    first = asyncio.create_task(cache.refresh("sub_1"))  # reads DISABLED, answers late
    await asyncio.sleep(0)
    if second == "enabled":
        store.subs["sub_1"] = sub(1)
    else:
        del store.subs["sub_1"]
    await cache.refresh("sub_1")
    await first
    matched = [s.id for s in cache.matching(event(source="shop", event_type="invoice.paid"))]
    if second == "enabled":
        assert cache.get("sub_1") == sub(1) and matched == ["sub_1"]
    else:
        assert cache.get("sub_1") is None and matched == []
    assert cache._reading == {}


class FailingSecondRead(SlowFirstRead):
    async def get(self, subscription_id: str) -> Subscription | None:
        second = self.reads == 1  # the read about to start is the second
        found = await super().get(subscription_id)
        if second:
            raise SwitchboardError("the store timed out")
        return found


async def test_a_later_refresh_that_fails_does_not_hold_back_an_earlier_ones_result() -> None:
    """Found in the review of the fix above: the failing later read took the earlier read's result with it."""
    store = FailingSecondRead([sub(1)])
    cache = SubscriptionCache(store, "", "", purpose="test")  # type: ignore[arg-type]
    await cache.reload()
    store.subs["sub_1"] = sub(1, status=SubscriptionStatus.DISABLED)
    first = asyncio.create_task(cache.refresh("sub_1"))  # reads DISABLED, answers after the second failed
    await asyncio.sleep(0)
    with pytest.raises(SwitchboardError):
        await cache.refresh("sub_1")
    await first
    assert cache.get("sub_1") == sub(1, status=SubscriptionStatus.DISABLED) and cache._reading == {}
