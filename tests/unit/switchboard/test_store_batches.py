"""Packing whole units into batches, and the group commit's scheduling (``switchboard.store.batches``).

The group commit is driven here by a session whose requests the test finishes by hand; writing through a real
Cassandra is in ``tests/e2e/test_delivery.py``."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import namedtuple
from typing import Any, cast

import pytest
from cassandra import ConsistencyLevel
from cassandra import cqltypes as t
from cassandra.query import BatchStatement, BatchType, PreparedStatement

from switchboard.errors import StoreUnavailable
from switchboard.store.batches import (
    BATCH_BYTES,
    BoundStatement,
    GroupCommit,
    pack,
    unit_bytes,
    unlogged,
    write_all,
)
from switchboard.store.session import StoreSession

QUORUM = ConsistencyLevel.LOCAL_QUORUM


def unit(tag: str, size: int = 10) -> list[tuple[Any, tuple[Any, ...]]]:
    # A plain CQL string (the driver binds its values into the text) instead of a prepared statement.
    return [("%s,%s,%s", (tag, b"x" * size, 7))]


def tags_of(batch: BatchStatement) -> list[str]:
    return [query.split(",")[0].strip("'") for _, query, _ in batch._statements_and_parameters]


def test_units_are_packed_whole_and_in_order_under_the_limit() -> None:
    units = [unit("a", 400), unit("b", 400), unit("c", 400), unit("d", 1500), unit("e", 10)]
    assert unit_bytes(units[0]) == 16 + (16 + 1) + (16 + 400) + (16 + 8)  # the row, each cell and its value
    groups = pack(units, limit=1000)
    assert [[u[0][1][0] for u in g] for g in groups] == [["a", "b"], ["c"], ["d"], ["e"]]
    assert pack([]) == []
    numbers_only = [("%s", (1,))]
    assert pack([numbers_only, numbers_only]) == [[numbers_only, numbers_only]]
    per_unit = unit_bytes(unit("0", 1000))
    assert len(pack([unit(str(i % 10), 1000) for i in range(100)])) == -(-100 // (BATCH_BYTES // per_unit))


def test_a_unit_is_sized_as_cassandra_sizes_a_batch_against_its_limit() -> None:
    """Cassandra 3+ refuses a batch of several partitions over 50 KB (``batch_size_fail_threshold``), measured as
    its mutations' data size: every cell's value plus 16 bytes (timestamp, expiry, local deletion time), every
    row's liveness, a map's entries as cells of their own. Counting text and bytes only, requests of ~64 KB
    went out (29 realistic events' commits; the local 2.1 node has no such limit)."""
    statement = ("%s", ("stripe", "evt_1", b"\x00" * 100, 3, {"k": "vv", "kk": "v"}, None))
    expected = 16 + (16 + 6) + (16 + 5) + (16 + 100) + (16 + 8) + 2 * (16 + 3) + (16 + 8)
    assert unit_bytes([statement]) == expected
    assert unit_bytes([statement, statement]) == 2 * expected


def test_a_unit_cap_splits_batches_that_the_byte_limit_would_keep_whole() -> None:
    small = [unit(str(i), 10) for i in range(10)]
    assert len(pack(small)) == 1
    assert [len(g) for g in pack(small, max_units=4)] == [4, 4, 2]
    big = [unit(str(i), 600) for i in range(6)]  # the byte limit binds first: 1 unit each at 1000 bytes
    assert [len(g) for g in pack(big, limit=1000, max_units=4)] == [1] * 6


Column = namedtuple("Column", "keyspace_name table_name name type")


def prepared(types: list[Any], routing: list[int] | None, query_id: bytes) -> PreparedStatement:
    """A prepared statement as the driver builds it from Cassandra's answer (protocol 3)."""
    columns = [Column("ks", "tbl", f"c{i}", ty) for i, ty in enumerate(types)]
    return PreparedStatement(columns, query_id, routing, "a statement", "ks", 3, [], None)


def test_prepared_statements_are_bound_as_the_driver_binds_them() -> None:
    """``unlogged`` binds prepared statements itself; the values, their order and the batch's routing key are
    what ``BatchStatement.add`` (the driver's binding) gives."""
    text_map = t.MapType.apply_parameters([t.UTF8Type, t.UTF8Type])
    now = dt.datetime(2026, 12, 6, 1, 2, 3, 456000, tzinfo=dt.UTC)
    row = prepared(
        [t.UTF8Type, t.UTF8Type, t.BytesType, t.DateType, t.Int32Type, t.LongType, t.BooleanType, text_map],
        [0, 1],  # a composite partition key: (source, event_id)
        b"row",
    )
    index = prepared([t.LongType, t.Int32Type, t.UTF8Type, t.UTF8Type], [3], b"idx")
    units: list[list[BoundStatement]] = [
        [(index, (1_796_517_130_000_000, 2_592_000, "", "in_1"))],
        [
            (row, ("shop", "evt_1", b"\x01body", now, 7, 2**40, True, {"a": "b"})),
            (row, ("shop", "evt_2", b"", now, 0, 0, False, None)),  # None: a null cell
        ],
    ]
    ours = unlogged(units, QUORUM)
    theirs = BatchStatement(batch_type=BatchType.UNLOGGED, consistency_level=QUORUM)
    for unit in units:
        for statement, params in unit:
            theirs.add(statement, params)
    assert ours._statements_and_parameters == theirs._statements_and_parameters
    assert len(ours._statements_and_parameters) == 3
    assert (ours.routing_key, ours.keyspace) == (theirs.routing_key, theirs.keyspace) == (b"in_1", "ks")
    composite = unlogged(units[1:], QUORUM)
    reference = BatchStatement()
    reference.add(row, units[1][0][1])
    assert composite.routing_key == reference.routing_key and composite.routing_key.startswith(b"\x00\x04shop\x00")


def test_a_value_of_the_wrong_type_names_its_column() -> None:
    statement = prepared([t.UTF8Type, t.Int32Type], [0], b"q")
    with pytest.raises(TypeError, match="'c1'"):
        unlogged([[(statement, ("shop", "not a number"))]], QUORUM)
    with pytest.raises(ValueError, match="3 values for a statement of 2"):
        unlogged([[(statement, ("shop", 1, 2))]], QUORUM)


class HandDriven:
    """Stands in for ``StoreSession.execute``: every request waits until the test answers it."""

    def __init__(self) -> None:
        self.requests: list[tuple[list[str], asyncio.Future[list[Any]]]] = []

    async def execute(self, statement: Any, params: Any = None) -> list[Any]:
        assert isinstance(statement, BatchStatement) and params is None
        fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self.requests.append((tags_of(statement), fut))
        return await fut


def group_of(session: HandDriven, in_flight: int) -> GroupCommit:
    return GroupCommit(cast(StoreSession, session), QUORUM, in_flight=in_flight)


def writing(group: GroupCommit, *tags: str, size: int = 10) -> list[asyncio.Task[None]]:
    """One write per tag, started (each runs up to its first wait once the test yields)."""
    return [asyncio.create_task(group.write(unit(t, size))) for t in tags]


async def finished(*writes: asyncio.Task[None]) -> None:
    """The writes complete (a scheduling bug fails the test instead of hanging it)."""
    await asyncio.wait_for(asyncio.gather(*writes), 5)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_units_go_alone_while_slots_are_free_then_wait_and_leave_together() -> None:
    session = HandDriven()
    group = group_of(session, in_flight=2)
    (first,) = writing(group, "a")
    await settle()
    assert [tags for tags, _ in session.requests] == [["a"]]  # light load: no wait, no company
    (second,) = writing(group, "b")
    waiting = writing(group, *"cdef")
    await settle()
    assert [tags for tags, _ in session.requests] == [["a"], ["b"]]  # both slots out: c-f wait
    session.requests[0][1].set_result([])
    await settle()
    assert first.done() and not second.done()
    assert [tags for tags, _ in session.requests][2:] == [["c", "d", "e", "f"]]  # one request for all four
    session.requests[1][1].set_result([])
    session.requests[2][1].set_result([])
    await finished(second, *waiting)
    assert (group.requests, group.units) == (3, 6)


async def test_a_failed_request_fails_only_the_units_it_carried() -> None:
    session = HandDriven()
    group = group_of(session, in_flight=1)
    (a,) = writing(group, "a")
    await settle()
    b, c = writing(group, "b", "c")
    await settle()
    session.requests[0][1].set_exception(StoreUnavailable("Cassandra: OperationTimedOut"))
    await settle()
    with pytest.raises(StoreUnavailable, match="OperationTimedOut"):
        await finished(a)
    assert [tags for tags, _ in session.requests][1] == ["b", "c"]  # the failure does not hold the others
    session.requests[1][1].set_result([])
    await finished(b, c)
    # The failed writer retries its own unit (the caller's job); it goes like any other.
    (retry,) = writing(group, "a")
    await settle()
    session.requests[2][1].set_result([])
    await finished(retry)
    assert [tags for tags, _ in session.requests][2] == ["a"]


async def test_a_writer_that_gives_up_does_not_break_the_request_of_the_others() -> None:
    session = HandDriven()
    group = group_of(session, in_flight=1)
    (blocker,) = writing(group, "a")
    await settle()
    quitter, stayer = writing(group, "b", "c")
    await settle()
    quitter.cancel()
    session.requests[0][1].set_result([])
    await settle()
    session.requests[1][1].set_result([])
    await finished(blocker, stayer)
    assert quitter.cancelled()
    assert [tags for tags, _ in session.requests] == [["a"], ["b", "c"]]  # b was already handed in


def test_in_flight_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        GroupCommit(cast(StoreSession, HandDriven()), QUORUM, in_flight=0)


def test_a_batch_carries_every_statement_of_its_units_at_the_given_level() -> None:
    batch = unlogged([unit("a"), unit("b") + unit("c")], QUORUM)
    assert batch.consistency_level == QUORUM
    assert tags_of(batch) == ["a", "b", "c"]


async def test_a_full_batch_goes_at_once_even_with_every_slot_taken() -> None:
    session = HandDriven()
    group = group_of(session, in_flight=1)
    (blocker,) = writing(group, "a")
    await settle()
    # ~12 KB each: three fill a batch (under 40 KB), the fourth would not fit.
    big = writing(group, *(f"b{i}" for i in range(7)), size=12_000)
    await settle()
    assert [tags for tags, _ in session.requests] == [["a"], ["b0", "b1", "b2"], ["b3", "b4", "b5"]]
    for _, fut in session.requests:
        fut.set_result([])
    await settle()
    assert [tags for tags, _ in session.requests][3:] == [["b6"]]  # the partial one waited for a slot
    session.requests[3][1].set_result([])
    await finished(blocker, *big)


async def test_write_all_fails_only_once_every_batch_is_answered() -> None:
    """A commit's batches are all in flight at once: when one fails, the failure waits for the others, so a
    retry (or a re-run of the message alone) never reads before a write of its own first try has landed."""
    session = HandDriven()
    units = [unit("a", 30_000), unit("b", 30_000)]  # two batches: together they are over the limit
    task = asyncio.create_task(write_all(cast(StoreSession, session), units, QUORUM))
    await settle()
    assert [tags for tags, _ in session.requests] == [["a"], ["b"]]
    session.requests[0][1].set_exception(StoreUnavailable("Cassandra: WriteTimeout"))
    await settle()
    assert not task.done()  # "b" is still on its way
    session.requests[1][1].set_result([])
    with pytest.raises(StoreUnavailable, match="WriteTimeout"):
        await task
