"""QueueWorker._process without a broker: what a batch does when one of its channels closes during a store
outage's pause. Only the worker's own decisions are under test here; the stand-ins are the ack tracker's and
the pika channel's two methods it calls."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pika
import pytest

from switchboard.errors import Unavailable
from switchboard.queue import Ack, QueueMessage, QueueWorker, Retry, Topology, Verdict, WorkerSettings
from switchboard.queue import worker as worker_module


@dataclass
class OpenFlag:
    is_open: bool = True


@dataclass(eq=False)
class Tracker:
    settled: list[int] = field(default_factory=list)

    def settle(self, tags: Sequence[int]) -> None:
        self.settled += tags


class OutageThenAck:
    """Raises Unavailable on the first batch and closes partition 'b''s channel meanwhile; then acks."""

    def __init__(self, closing: OpenFlag) -> None:
        self.closing = closing
        self.batches: list[list[str]] = []

    def key(self, message: QueueMessage) -> str:
        return message.message_id

    async def handle(self, batch: Sequence[QueueMessage]) -> list[Verdict]:
        self.batches.append([m.message_id for m in batch])
        if len(self.batches) == 1:
            self.closing.is_open = False
            raise Unavailable("the store is down")
        return [Ack() for _ in batch]


async def test_a_channel_closed_during_a_store_outage_leaves_out_its_messages_only(monkeypatch: object) -> None:
    """A batch mixes partitions, each on a channel of its own. Partition b's channel closes while the batch
    waits out a store outage: the batch is tried again with partition a's messages, which are acked (the
    whole batch used to be abandoned: a's messages stayed unacked, holding back a's acks)."""
    a, b = OpenFlag(), OpenFlag()
    tracker_a, tracker_b = Tracker(), Tracker()
    handler = OutageThenAck(b)
    worker = QueueWorker("amqp://unused", Topology("t", "events", (100,)), handler, WorkerSettings(), purpose="unit")
    batch = [
        QueueMessage(
            b"x",
            f"{queue}{tag}",
            {},
            False,
            queue,
            raw=worker_module._Delivery(channel, tracker, tag, pika.BasicProperties()),  # type: ignore[arg-type]
        )
        for tag in (1, 2)
        for queue, channel, tracker in (("a", a, tracker_a), ("b", b, tracker_b))
    ]
    await worker._process(batch)
    assert handler.batches == [["a1", "b1", "a2", "b2"], ["a1", "a2"]]
    assert tracker_a.settled == [1, 2] and tracker_b.settled == []


def held(message_id: str, queue: str) -> QueueMessage:
    """A message its (stand-in) channel still holds."""
    delivery = worker_module._Delivery(OpenFlag(), Tracker(), 1, pika.BasicProperties())  # type: ignore[arg-type]
    return QueueMessage(b"x", message_id, {}, False, queue, raw=delivery)


def test_a_retry_waits_the_level_of_its_backoff_attempt_and_keeps_its_attempt() -> None:
    """A replay's first failure is the event's attempt 3 but its own first: it waits level 1, not level 3
    (it used to wait the event's level, the longest for an event that had used up the ladder)."""
    topology = Topology("t", "events", (1000, 2000, 4000))
    worker = QueueWorker("amqp://unused", topology, OutageThenAck(OpenFlag()), WorkerSettings(), purpose="unit")
    message = held("m1", "q")
    for verdict, level in ((Retry(3, "e", backoff_attempt=1), "1000"), (Retry(3, "e"), "4000")):
        _, routing_key, (_, properties) = worker._copy_for(message, verdict)
        assert routing_key == level
        assert properties.headers["x-attempt"] == 3
        assert int(level) // 2 <= properties.headers["x-retry-delay-ms"] <= int(level)


class LeaksCancel:
    def key(self, message: QueueMessage) -> str:
        return message.message_id

    async def handle(self, batch: Sequence[QueueMessage]) -> list[Verdict]:
        raise asyncio.CancelledError()  # leaked from something it awaited; nothing cancels the worker


async def test_a_cancelled_error_the_handler_leaks_is_its_failure() -> None:
    """Let through, a CancelledError from the handler ended the batch's task: its messages stayed unacked until
    the channel closed, with nothing logged. It is handled as the handler's exception (here: returned later)."""
    worker = QueueWorker(
        "amqp://unused",
        Topology("t", "events", (100,)),
        LeaksCancel(),
        WorkerSettings(crash_attempts=0),
        purpose="unit",
    )
    returned: list[tuple[str, str]] = []
    worker._return_later = lambda m, exc: returned.append((m.message_id, str(exc)))  # type: ignore[method-assign,assignment]
    message = held("m1", "a")
    await worker._process([message])
    assert returned == [("m1", "the handler raised CancelledError without being cancelled")]


async def test_a_partition_that_keeps_coming_back_is_handed_over_less_and_less_often(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Members 0 and 2 of three, 1 down: both prefer the even partitions, and the odd ones went from one to the
    other at every rebalance check (5 s), each time returning their prefetched messages to the queue."""
    topology = Topology("t", "events", (100,), partitions=4, single_active=True)
    worker = QueueWorker("amqp://unused", topology, LeaksCancel(), WorkerSettings(member=0), purpose="unit")
    handed: list[float] = []
    clock = [1000.0]

    count = [2]

    async def members() -> int:
        return count[0]

    async def hand_over(sub: Any) -> None:
        assert sub.queue == odd
        handed.append(clock[0] - 1000.0)

    monkeypatch.setattr(worker, "_members", members)
    monkeypatch.setattr(worker, "_hand_over", hand_over)
    monkeypatch.setattr(worker_module.time, "monotonic", lambda: clock[0])  # type: ignore[attr-defined]
    odd = topology.work_queues[1]
    for _ in range(125):  # over ten minutes of checks every 5 s, the partition back at each
        for queue in (odd, topology.work_queues[0]):  # its own share (0) is never handed over
            sub = worker._subs[queue]
            sub.delivered, sub.channel = 10, object()  # type: ignore[assignment]
        await worker._rebalance()
        clock[0] += 5.0
    assert handed == [0, 10, 30, 70, 150, 310, 610]  # waits of 10, 20, 40, 80, 160 s, then 300 at most
    clock[0] += 2 * worker_module.HAND_OVER_HOLD  # quiet: a hand-over that comes back is tried again soon
    worker._subs[odd].delivered = 10
    await worker._rebalance()
    assert handed[-1] == clock[0] - 1000.0 and worker._subs[odd].hand_overs == 1
    for _ in range(3):  # backing off again...
        clock[0] += 5.0
        worker._subs[odd].delivered = 10
        await worker._rebalance()
    assert handed[-1] == clock[0] - 1000.0 - 5.0  # (10 s after the last: the second wait)
    count[0] = 3  # ...until a member joins (a rolling restart): its partitions go back at the next check
    clock[0] += 5.0
    worker._subs[odd].delivered = 10
    await worker._rebalance()
    assert handed[-1] == clock[0] - 1000.0
