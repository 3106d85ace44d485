"""Writes in as few requests as possible: unlogged batches of whole write units, and a group commit that
lets concurrent writers share them.

Cassandra's CPU on this 2-core box goes with the requests it serves more than with the cells they carry
(README, benchmark section), so every hot write path sends batches. An unlogged batch is not atomic across
partitions; it only saves requests. Writes to one partition in one batch are one atomic mutation, so a unit
is never split (an event's row and its results, for one).

A processor's commit also caps the units per request (``cassandra.batch_units``, 32): with the entity state
stored as a reference, a batch's entity writes are ~100 bytes each, and under the byte limit alone the
first phase of a 250-event batch went out as one request of 250 rows; draining a backlog then took 590-660
events/s against 906-1,004 with the cap, commit p99 468-483 against 333-380 ms (README, Benchmark). One
request's rows are apparently applied one after another, each waiting for the commit log's sync (batch
mode), so fewer, larger requests wait longer; not verified in Cassandra's source.

``GroupCommit`` is for writers that finish their work at different moments (delivery tasks whose POSTs come
back one by one): a unit handed in while fewer than ``in_flight`` requests are out goes at once, alone; while
they are all out, units wait and leave together in the next request, and as soon as a full batch's worth
waits it goes without waiting for a slot. Under light load nothing waits; under heavy load requests carry
many units, and the rate is never capped by the slots. Every writer learns the outcome of the request that
carried its unit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from cassandra import ConsistencyLevel
from cassandra.query import BatchStatement, BatchType, PreparedStatement

from switchboard.store.session import StoreSession

BoundStatement = tuple[Any, tuple[Any, ...]]  # a prepared statement and its values
Unit = Sequence[BoundStatement]  # statements that travel in one batch

# Batches stay under this many bytes of values unless one unit alone is larger (Cassandra 4 refuses batches
# over 50 KB by default).
BATCH_BYTES = 40_000


def unit_bytes(unit: Unit) -> int:
    return sum(len(v) for _, params in unit for v in params if isinstance(v, bytes | str))


def group_lengths(sizes: Sequence[int], limit: int = BATCH_BYTES, max_items: int | None = None) -> list[int]:
    """How many consecutive items of these sizes go in each group of at most ``limit`` bytes (an item larger
    than ``limit`` alone) and, with ``max_items``, at most that many items."""
    lengths: list[int] = []
    size = 0
    for n in sizes:
        if not lengths or (size + n > limit and size > 0) or (max_items is not None and lengths[-1] >= max_items):
            lengths.append(0)
            size = 0
        lengths[-1] += 1
        size += n
    return lengths


def pack(units: Sequence[Unit], limit: int = BATCH_BYTES, max_units: int | None = None) -> list[list[Unit]]:
    """Whole units, in order, into groups of at most ``limit`` bytes of values each (a larger unit alone) and
    at most ``max_units`` units."""
    groups: list[list[Unit]] = []
    start = 0
    for n in group_lengths([unit_bytes(u) for u in units], limit, max_units):
        groups.append(list(units[start : start + n]))
        start += n
    return groups


def unlogged(units: Sequence[Unit], level: ConsistencyLevel) -> BatchStatement:
    batch = BatchStatement(batch_type=BatchType.UNLOGGED, consistency_level=level)
    for unit in units:
        for statement, params in unit:
            batch.add(statement, params)
    return batch


async def write_all(
    store: StoreSession, units: Sequence[Unit], level: ConsistencyLevel, max_units: int | None = None
) -> None:
    """Every unit, in batches under ``BATCH_BYTES`` and of at most ``max_units`` units, all in flight at once."""
    await asyncio.gather(*(store.execute(unlogged(group, level)) for group in pack(units, max_units=max_units)))


class GroupCommit:
    """Units from concurrent callers, sent with at most ``in_flight`` requests out at a time (see the module
    docstring). ``write`` returns once the request carrying the unit succeeded and raises what it raised
    (``StoreUnavailable`` from the session): the caller retries its own unit, which must be idempotent. Values
    are bound in ``write``, so a unit that does not bind fails its own caller, never the units sent with it."""

    def __init__(self, store: StoreSession, level: ConsistencyLevel, in_flight: int = 2) -> None:
        if in_flight < 1:
            raise ValueError("in_flight must be at least 1")
        self.store = store
        self.level = level
        self.in_flight = in_flight
        self._waiting: list[tuple[int, Unit, asyncio.Future[None]]] = []  # (bytes of values, bound, outcome)
        self._out: set[asyncio.Task[None]] = set()
        self.requests = 0  # requests sent, for tests and stats
        self.units = 0  # units written

    async def write(self, unit: Unit) -> None:
        bound = [(s.bind(p), ()) if isinstance(s, PreparedStatement) else (s, p) for s, p in unit]
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((unit_bytes(unit), bound, fut))
        self._pump()
        await fut

    def _pump(self) -> None:
        """Sends what waits: every full batch at once (the slots are there to make batches, not to cap the
        rate), and the last, partial one only if a slot is free (else it waits for more company)."""
        if not self._waiting:
            return
        lengths = group_lengths([size for size, _, _ in self._waiting])
        for i, n in enumerate(lengths):
            if i == len(lengths) - 1 and len(self._out) >= self.in_flight:
                break
            taken, self._waiting = self._waiting[:n], self._waiting[n:]
            task = asyncio.get_running_loop().create_task(self._send(taken))
            self._out.add(task)
            task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._out.discard(task)
        self._pump()

    async def _send(self, taken: list[tuple[int, Unit, asyncio.Future[None]]]) -> None:
        self.requests += 1
        self.units += len(taken)
        try:
            await self.store.execute(unlogged([b for _, b, _ in taken], self.level))
        except asyncio.CancelledError:  # shutting down: the writers are told, nothing is retried here
            for _, _, fut in taken:
                fut.cancel()
            raise
        except Exception as exc:  # every writer of the request gets its failure, whatever it was
            for _, _, fut in taken:
                if not fut.done():
                    fut.set_exception(exc)
        else:
            for _, _, fut in taken:
                if not fut.done():
                    fut.set_result(None)
