"""Writes in as few requests as possible: unlogged batches of whole write units, and a group commit that
lets concurrent writers share them.

Cassandra's CPU on this 2-core box goes with the requests it serves more than with the cells they carry
(docs/benchmarks.md), so every hot write path sends batches. An unlogged batch is not atomic across
partitions; it only saves requests. Writes to one partition in one batch are one atomic mutation, so a unit
is never split (an event's row and its results, for one).

A processor's commit also caps the units per request (``cassandra.batch_units``, 32): with the entity state
stored as a reference, a batch's entity writes are ~100 bytes each, and under the byte limit alone the
first phase of a 250-event batch went out as one request of 250 rows; draining a backlog then took 590-660
events/s against 906-1,004 with the cap, commit p99 468-483 against 333-380 ms (docs/benchmarks.md). Cassandra
2.1 applies one request's mutations (one per partition) one after another, each waiting for the commit log's
next sync in batch mode (read in its bytecode; ``switchboard_devstack.cassandra``), so fewer, larger requests
wait longer.

``GroupCommit`` is for writers that finish their work at different moments (delivery tasks whose POSTs come
back one by one): a unit handed in while fewer than ``in_flight`` requests are out goes at once, alone; while
they are all out, units wait and leave together in the next request, and as soon as a full batch's worth
waits it goes without waiting for a slot. Under light load nothing waits; under heavy load requests carry
many units, and the rate is never capped by the slots. Every writer learns the outcome of the request that
carried its unit.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from cassandra import ConsistencyLevel
from cassandra.query import BatchStatement, BatchType, PreparedStatement

from switchboard.runtime.loop import gather_settled
from switchboard.store.session import StoreSession

BoundStatement = tuple[Any, tuple[Any, ...]]  # a prepared statement and its values
Unit = Sequence[BoundStatement]  # statements that travel in one batch

# Batches stay under this many bytes (``unit_bytes``) unless one unit alone is larger: Cassandra 3+ refuses
# a batch of more than one partition over ``batch_size_fail_threshold`` (50 KB by default), "Batch too large".
BATCH_BYTES = 40_000
# What Cassandra adds per cell to its value (``Cell.dataSize``: the timestamp, and with a TTL its expiry and
# local deletion time) and per row (the row's liveness, the same three), and counts for a number or a time.
CELL_OVERHEAD = 16
ROW_OVERHEAD = 16
FIXED_VALUE_BYTES = 8


def unit_bytes(unit: Unit) -> int:
    """The unit's size as Cassandra measures a batch against its limit (``IMutation.dataSize``: every cell's
    value plus ``CELL_OVERHEAD``, every row's liveness; a map's entries are cells of their own), taking every
    bound value for a cell: the partition key, which the server leaves out, is counted too, and the TTL, so
    the estimate errs large. Counting text and bytes only, a realistic event's commit came to ~1.3 KB where
    Cassandra 4 counts ~2.2: 29 units a request, ~64 KB, refused on a production cluster (2.1, the local node,
    has no such limit)."""
    return sum(ROW_OVERHEAD + sum(map(_value_bytes, params)) for _, params in unit)


def _value_bytes(v: Any) -> int:
    """The cells of one bound value: one, or one per entry of a map or element of a collection."""
    if isinstance(v, Mapping):
        return sum(CELL_OVERHEAD + _raw_bytes(k) + _raw_bytes(x) for k, x in v.items())
    if isinstance(v, list | tuple | set | frozenset):
        return sum(_value_bytes(x) for x in v)
    return CELL_OVERHEAD + _raw_bytes(v)


def _raw_bytes(v: Any) -> int:
    """A value's own bytes: text and bytes their length; numbers, booleans, times, None (a null is a tombstone
    cell) ``FIXED_VALUE_BYTES``."""
    if isinstance(v, str):
        return len(v.encode())
    if isinstance(v, bytes):
        return len(v)
    return FIXED_VALUE_BYTES


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


class _Plan:
    """How to bind one prepared statement's values: its columns' serializers, as ``BoundStatement.bind`` uses
    them, without the column descriptor that method builds for every value (for column encryption, which
    this project does not use): ~50 instead of ~90 µs for one event's commit statements (docs/benchmarks.md).
    """

    __slots__ = ("columns", "keyspace", "protocol", "routing")

    def __init__(self, statement: PreparedStatement) -> None:
        meta = statement.column_metadata
        self.keyspace = meta[0].keyspace_name if meta else None
        self.protocol = statement.protocol_version
        self.columns = [(c.name, c.type.serialize) for c in meta]
        self.routing: tuple[int, ...] = tuple(statement.routing_key_indexes or ())

    def values(self, params: Sequence[Any]) -> list[bytes | None]:
        if len(params) != len(self.columns):
            raise ValueError(f"{len(params)} values for a statement of {len(self.columns)}")
        out: list[bytes | None] = []
        for value, (name, serialize) in zip(params, self.columns, strict=True):
            if value is None:
                out.append(None)
                continue
            try:
                out.append(serialize(value, self.protocol))
            except (TypeError, struct.error) as exc:
                raise TypeError(f"value of invalid type for column {name!r}: {type(value).__name__} ({exc})") from exc
        return out

    def routing_parts(self, values: list[bytes | None]) -> list[bytes] | None:
        """The partition key's bound values, which the batch's ``routing_key`` setter packs as the driver does for
        a bound statement (token-aware routing); None if the statement has no key or a part is null."""
        parts = [values[i] for i in self.routing]
        if not parts or any(p is None for p in parts):
            return None
        return [p for p in parts if p is not None]


_PLANS: dict[PreparedStatement, _Plan] = {}  # the services prepare their statements once, at start-up


def unlogged(units: Sequence[Unit], level: ConsistencyLevel) -> BatchStatement:
    """One unlogged batch of the units' statements. Prepared statements are bound by ``_Plan`` and appended to
    the driver's own list of the batch's statements (what ``BatchStatement.add`` does after its binding; a
    unit test checks both give the same values and routing key); anything else goes through ``add``."""
    batch = BatchStatement(batch_type=BatchType.UNLOGGED, consistency_level=level)
    rows = batch._statements_and_parameters
    for unit in units:
        for statement, params in unit:
            if not isinstance(statement, PreparedStatement) or statement.column_encryption_policy is not None:
                batch.add(statement, params)
                continue
            plan = _PLANS.get(statement)
            if plan is None:
                plan = _PLANS[statement] = _Plan(statement)
            values = plan.values(params)
            if batch.routing_key is None and plan.keyspace:  # the first statement with a key routes the batch
                parts = plan.routing_parts(values)
                if parts is not None:
                    batch.routing_key = parts  # the driver's setter packs a composite key
                    batch.keyspace = plan.keyspace
            rows.append((True, statement.query_id, values))
    return batch


async def write_all(
    store: StoreSession, units: Sequence[Unit], level: ConsistencyLevel, max_units: int | None = None
) -> None:
    """Every unit, in batches under ``BATCH_BYTES`` and of at most ``max_units`` units, all in flight at once.
    A failure is raised once every batch is answered: none is still on its way when the caller retries or
    reads what it wrote."""
    await gather_settled(*(store.execute(unlogged(group, level)) for group in pack(units, max_units=max_units)))


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
        self._waiting: list[tuple[int, Unit, asyncio.Future[None]]] = []  # (unit_bytes, bound, outcome)
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
