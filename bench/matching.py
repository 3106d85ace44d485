"""What the fan-out's ``SubscriptionCache.matching`` costs per event as subscriptions grow: the index
(``switchboard.delivery.routing``) against asking every subscription's filter, which the cache did before.

Subscriptions: one source per 20 subscriptions (at least 50: many tenants, each with a few endpoints), 50
event types (10 objects times 5 verbs); each subscription names one source (2%: none, every source) and an exact
type (70%), an object's glob such as ``invoice.*`` (25%) or ``*`` (5%). Events: a random source and type.
Both ways must find the same subscriptions for the first 200 events (checked).

    python -m bench.matching [--sizes 100,1000,10000,100000] [--events 2000]
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import sys
import time
from collections.abc import Callable

from switchboard.model.events import InboundEvent
from switchboard.model.subscriptions import Subscription
from switchboard.subscription_cache import SubscriptionCache

OBJECTS = (
    "invoice",
    "charge",
    "customer",
    "payment_intent",
    "order",
    "refund",
    "product",
    "price",
    "checkout",
    "payout",
)
VERBS = ("created", "updated", "paid", "failed", "deleted")
TYPES = [f"{o}.{v}" for o in OBJECTS for v in VERBS]


class _Store:
    def __init__(self, subs: list[Subscription]) -> None:
        self.subs = subs

    async def all(self) -> list[Subscription]:
        return self.subs


def sources(n: int) -> list[str]:
    return [f"source{i}" for i in range(max(50, n // 20))]


def subscriptions(n: int, rng: random.Random) -> list[Subscription]:
    names = sources(n)
    out = []
    for i in range(n):
        r = rng.random()
        types = (rng.choice(TYPES),) if r < 0.7 else (f"{rng.choice(OBJECTS)}.*",) if r < 0.95 else ("*",)
        named = () if rng.random() < 0.02 else (rng.choice(names),)
        out.append(
            Subscription(
                id=f"sub_{i}", client_id="c", callback_url="https://h.example/", sources=named, event_types=types
            )
        )
    return out


def scan(cache: SubscriptionCache, e: InboundEvent) -> list[str]:
    """The cache's matching before the index: every subscription's filter (no conditions here)."""
    return [
        x.subscription.id
        for x in cache._entries.values()
        if x.subscription.enabled and x.filter is not None and x.filter.matches_meta(e.source, e.event_type)
    ]


def per_event_us(fn: Callable[[InboundEvent], object], events: list[InboundEvent], budget_s: float = 2.0) -> float:
    start = time.perf_counter()
    done = 0
    while done < len(events) and time.perf_counter() - start < budget_s:
        fn(events[done])
        done += 1
    return (time.perf_counter() - start) / max(1, done) * 1e6


async def run(sizes: list[int], n_events: int) -> list[dict[str, float]]:
    rng = random.Random(7)
    rows = []
    for n in sizes:
        cache = SubscriptionCache(_Store(subscriptions(n, rng)), "", "", purpose="bench")  # type: ignore[arg-type]
        await cache.reload()
        names = sources(n)
        events = [
            InboundEvent(rng.choice(names), f"evt_{i}", rng.choice(TYPES), "generic", 0, b"{}", "", {}, f"r{i}")
            for i in range(n_events)
        ]
        matches = 0
        for e in events[:200]:
            found = [s.id for s in cache.matching(e)]
            if sorted(found) != sorted(scan(cache, e)):
                raise SystemExit(f"the index and the scan disagree for {e.source} {e.event_type} at {n}")
            matches += len(found)
        rows.append(
            {
                "subscriptions": n,
                "matches_per_event": matches / min(200, len(events)),
                "index_us": per_event_us(cache.matching, events),
                "scan_us": per_event_us(functools.partial(scan, cache), events),
            }
        )
    return rows


def main() -> None:
    import asyncio

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100,1000,10000,100000")
    ap.add_argument("--events", type=int, default=2000)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    rows = asyncio.run(run([int(x) for x in args.sizes.split(",")], args.events))
    print("| subscriptions | matches per event | index, µs per event | every filter, µs per event |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['subscriptions']:,} | {r['matches_per_event']:.1f} | {r['index_us']:.1f} | {r['scan_us']:,.0f} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
