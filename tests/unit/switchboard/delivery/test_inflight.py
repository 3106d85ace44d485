"""InFlight: a subscription's own limit, a host's limit, the host's reserve for light subscriptions, and the
even share of the rest among heavy ones; a property test that no sequence of takes and releases breaks the
limits or leaves counts behind."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switchboard.delivery.inflight import LIGHT, MIN_HOST_LIMIT, InFlight

HOST = "hooks.example.com:443"


def fill(f: InFlight, subscription_id: str, limit: int = 1000, host: str = HOST) -> int:
    """Takes for the subscription until refused; how many it got."""
    n = 0
    while f.take(subscription_id, host, limit) is None:
        n += 1
    return n


def test_a_subscription_gets_its_own_limit_and_one_more_after_a_release() -> None:
    f = InFlight(64)
    assert fill(f, "sub_a", limit=5) == 5
    refused = f.take("sub_a", HOST, 5)
    assert refused == "5 requests in flight, as many as a worker sends it at once"
    assert (f.subscription("sub_a"), f.host(HOST)) == (5, 5)  # a refusal counts nothing
    f.release("sub_a", HOST)
    assert f.take("sub_a", HOST, 5) is None
    assert f.take("sub_b", HOST, 5) is None  # another subscription has its own count


def test_the_limit_counts_every_host_of_the_subscription() -> None:
    """A subscription whose URL changed while requests were out: its limit spans both hosts."""
    f = InFlight(64)
    for _ in range(3):
        assert f.take("sub_a", "old.example.com:443", 5) is None
    assert fill(f, "sub_a", limit=5, host="new.example.com:443") == 2
    assert (f.host("old.example.com:443"), f.host("new.example.com:443")) == (3, 2)


def test_light_subscriptions_fill_a_host_to_its_limit_and_no_further() -> None:
    f = InFlight(16)
    for i in range(16 // (LIGHT - 1) + 1):
        for _ in range(LIGHT - 1):
            f.take(f"sub_{i}", HOST, 1000)
    assert f.host(HOST) == 16
    refused = f.take("sub_new", HOST, 1000)
    assert refused == "0 requests in flight and its host 16, as many as a worker opens to one host"
    assert f.take("sub_new", "other.example.com:443", 1000) is None  # hosts are counted apart


def test_a_heavy_subscription_leaves_the_reserve_to_light_ones() -> None:
    f = InFlight(64)
    assert (f.reserve, LIGHT) == (16, 4)
    assert fill(f, "sub_slow") == 48
    assert (f.total(), f.busy_hosts()) == (48, 1)  # busy: the heavy part is taken
    refused = f.take("sub_slow", HOST, 1000)
    assert refused is not None and refused.startswith("48 requests in flight and its host 48: the last 16 of the 64")
    # Endpoints with few requests out still get through, each up to LIGHT, until the host is full.
    assert [fill(f, f"sub_fast_{i}") for i in range(5)] == [LIGHT, LIGHT, LIGHT, LIGHT, 0]
    assert f.host(HOST) == 64
    assert fill(f, "sub_elsewhere", host="other.example.com:443") == 48
    assert (f.total(), f.busy_hosts()) == (112, 2)
    f.release("sub_slow", HOST)
    assert f.busy_hosts() == 2  # 63 out: still more than the heavy part


def test_heavy_subscriptions_that_grow_together_share_the_rest_evenly() -> None:
    f = InFlight(64)
    subs = ["sub_a", "sub_b", "sub_c"]
    progress = True
    while progress:  # one take each in turn, as tasks of three busy subscriptions arrive
        progress = False
        for s in subs:
            progress |= f.take(s, HOST, 32) is None
    assert [f.subscription(s) for s in subs] == [16, 16, 16]  # (64 - 16) // 3
    f.release("sub_b", HOST)  # room below the reserve again, but not for the others: it is sub_b's share
    refused = f.take("sub_a", HOST, 32)
    assert refused == (
        "16 requests in flight, its share of the 48 a worker opens to its host for 3 endpoints with 4 or more"
    )
    assert f.take("sub_b", HOST, 32) is None
    assert fill(f, "sub_fast") == LIGHT  # and the reserve is there for one with few out


def test_one_that_came_late_gets_its_share_as_the_first_one_releases() -> None:
    """Nothing out is cut short: the first one keeps its 32, gets no more, and drops to the share as its
    requests are answered while the newcomer grows to it."""
    f = InFlight(64)
    assert fill(f, "sub_a", limit=32) == 32
    assert fill(f, "sub_b", limit=32) == 16  # up to the host's 48 for heavy ones
    for _ in range(8):
        f.release("sub_a", HOST)
        assert f.take("sub_a", HOST, 32) is not None  # above its share (24) while sub_b is heavy too
        assert f.take("sub_b", HOST, 32) is None
    assert (f.subscription("sub_a"), f.subscription("sub_b")) == (24, 24)
    assert f.take("sub_b", HOST, 32) is not None
    f.release("sub_a", HOST)
    assert f.take("sub_a", HOST, 32) is None  # back to its share


def test_releases_leave_nothing_behind() -> None:
    f = InFlight(MIN_HOST_LIMIT)
    assert fill(f, "sub_a") == MIN_HOST_LIMIT - MIN_HOST_LIMIT // 4
    for _ in range(MIN_HOST_LIMIT - MIN_HOST_LIMIT // 4):
        f.release("sub_a", HOST)
    assert (f.subscription("sub_a"), f.host(HOST)) == (0, 0)
    assert (f.total(), f.busy_hosts()) == (0, 0)
    assert f._hosts == {} and not f._subscriptions


def test_a_host_limit_too_small_to_keep_a_reserve_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 8"):
        InFlight(MIN_HOST_LIMIT - 1)


ops = st.lists(
    st.tuples(st.booleans(), st.sampled_from(["sub_a", "sub_b", "sub_c", "sub_d"]), st.sampled_from(["h1", "h2"])),
    max_size=400,
)


@settings(max_examples=200, deadline=None)
@given(host_limit=st.integers(MIN_HOST_LIMIT, 40), limit=st.integers(1, 40), steps=ops)
def test_no_sequence_of_takes_and_releases_passes_a_limit(
    host_limit: int, limit: int, steps: list[tuple[bool, str, str]]
) -> None:
    f = InFlight(host_limit)
    out: list[tuple[str, str]] = []
    for take, sub, host in steps:
        if take:
            if f.take(sub, host, limit) is None:
                out.append((sub, host))
        elif (sub, host) in out:
            out.remove((sub, host))
            f.release(sub, host)
        assert f.total() == len(out)
        for h in ("h1", "h2"):
            assert f.host(h) == sum(1 for _, o in out if o == h) <= host_limit
        for s in ("sub_a", "sub_b", "sub_c", "sub_d"):
            assert f.subscription(s) == sum(1 for o, _ in out if o == s) <= limit
    for sub, host in out:
        f.release(sub, host)
    assert f._hosts == {} and not f._subscriptions
