"""Exponential back-off, the one schedule every wait-and-retry loop uses (connecting to the broker or the
store, preparing statements, a worker holding messages while the store is down).

``Backoff(initial, maximum).delays()`` yields ``initial, initial*factor, ...`` capped at ``maximum``, for ever;
the loop decides when to give up (a deadline, a stop event). ``jittered`` spreads retries of many clients
that failed together, as dramatiq's ``compute_backoff`` does.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["Backoff", "jittered"]


@dataclass(frozen=True)
class Backoff:
    initial: float = 0.2
    maximum: float = 5.0
    factor: float = 2.0

    def delays(self) -> Iterator[float]:
        delay = self.initial
        while True:
            yield delay
            delay = min(delay * self.factor, self.maximum)


def jittered(level: float, rng: random.Random) -> float:
    """A delay drawn between half and all of ``level``."""
    return rng.uniform(level / 2, level)
