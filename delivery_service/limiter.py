"""Per-subscription rate limits: one token bucket each, in this process. With the deliveries stream partitioned
by subscription (``delivery.partitions``) the worker holding a subscription's partition is the only one sending
for it and its limit holds across workers (while a partition moves to another worker, both may spend tokens for
a moment); without, the one worker applies it."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass


@dataclass
class Bucket:
    rate: float
    tokens: float
    stamp: float

    def take(self, now: float) -> float:
        """Takes a token; returns how long to wait for it (0 when one was there)."""
        self.tokens = min(self.rate, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= 1
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


class Limiter:
    def __init__(self) -> None:
        self._buckets: dict[str, Bucket] = {}

    async def acquire(self, key: str, rate: float) -> float:
        """Waits until ``key`` may send (``rate`` per second, bursts up to ``rate``); returns the seconds waited."""
        now = time.monotonic()
        bucket = self._buckets.get(key)
        if bucket is None or bucket.rate != rate:
            bucket = self._buckets[key] = Bucket(rate, rate, now)
        wait = bucket.take(now)
        if wait > 0:
            await asyncio.sleep(wait)
        return wait

    def prune(self, now: float) -> int:
        """Drops the buckets that have refilled (a new one starts full: nothing changes for their keys), so
        that the buckets kept are those of keys that sent within the last second or so; returns how many."""
        full = [k for k, b in self._buckets.items() if b.tokens + (now - b.stamp) * b.rate >= b.rate]
        for key in full:
            del self._buckets[key]
        return len(full)

    def __len__(self) -> int:
        return len(self._buckets)
