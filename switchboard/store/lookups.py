"""Reads by key from concurrent callers, merged into few requests (the read side of ``batches.GroupCommit``).

A delivery worker starts each task on its own (one slow endpoint must not hold the others' acks), so its
tasks look their deliveries up one by one; Cassandra's CPU goes with the requests it serves more than with
the rows they return (docs/benchmarks.md). ``GroupRead`` gives them one ``IN`` read again:

* Lookups asked for in the same turn of the event loop (the worker starts every task it can in one turn)
  go out together, in reads of at most ``max_keys`` distinct keys (a caller asking for more goes alone).
* While ``in_flight`` reads are out, lookups wait and leave together when one comes back; a full read's worth
  goes at once. Under light load nothing waits longer than one turn of the loop.
* Every caller gets the rows of its own keys, or the exception of the read that carried them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class GroupRead(Generic[K, V]):
    def __init__(
        self, read: Callable[[list[K]], Awaitable[Mapping[K, V]]], *, in_flight: int = 2, max_keys: int = 64
    ) -> None:
        if in_flight < 1 or max_keys < 1:
            raise ValueError("in_flight and max_keys must be at least 1")
        self._read = read
        self.in_flight = in_flight
        self.max_keys = max_keys
        self._waiting: list[tuple[list[K], asyncio.Future[dict[K, V]]]] = []
        self._scheduled = False
        self._out = 0
        self._sending: set[asyncio.Task[None]] = set()
        self.reads = 0  # requests sent, for tests and stats

    async def get(self, keys: Sequence[K]) -> dict[K, V]:
        """The values found for ``keys`` (a key without a row is absent)."""
        if not keys:
            return {}
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[dict[K, V]] = loop.create_future()
        self._waiting.append((list(keys), fut))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._pump)
        return await fut

    def _group(self) -> tuple[int, dict[K, None]]:
        """How many waiting callers the next read takes, and its keys (in order, each once)."""
        keys: dict[K, None] = {}
        n = 0
        for wanted, _ in self._waiting:
            merged = keys | dict.fromkeys(wanted)
            if n and len(merged) > self.max_keys:
                break
            keys = merged
            n += 1
        return n, keys

    def _pump(self) -> None:
        self._scheduled = False
        self._waiting = [(k, f) for k, f in self._waiting if not f.done()]  # callers cancelled meanwhile
        while self._waiting:
            n, keys = self._group()
            if len(keys) < self.max_keys and self._out >= self.in_flight:
                return  # a partial read waits for a free slot (and more company)
            taken, self._waiting = self._waiting[:n], self._waiting[n:]
            self._out += 1
            task = asyncio.get_running_loop().create_task(self._send(taken, list(keys)))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, taken: list[tuple[list[K], asyncio.Future[dict[K, V]]]], keys: list[K]) -> None:
        self.reads += 1
        try:
            found = await self._read(keys)
        except asyncio.CancelledError:  # shutting down: the callers are told
            for _, fut in taken:
                fut.cancel()
            raise
        except Exception as exc:  # every caller of the read gets its failure
            for _, fut in taken:
                if not fut.done():
                    fut.set_exception(exc)
        else:
            for wanted, fut in taken:
                if not fut.done():
                    fut.set_result({k: found[k] for k in wanted if k in found})
        finally:
            self._out -= 1
            self._pump()
