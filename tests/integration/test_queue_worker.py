"""The shared queue worker on a real RabbitMQ node: a partitioned single-active-consumer stream spread over
two workers, partitions handed over while messages flow, and a worker's death failing its partitions over;
every message is handled exactly once while its worker lives, and the two workers never hold one key at the
same time."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import aio_pika
import aiormq
import pytest

from switchboard.errors import BrokerUnavailable, ConfigError, InvalidRequest
from switchboard.queue import (
    Ack,
    DeadLetter,
    QueueMessage,
    QueueWorker,
    Retry,
    Topology,
    Verdict,
    WorkerHooks,
    WorkerSettings,
)
from switchboard.queue import worker as worker_module
from switchboard.queue.amqp import close_and_wait, declare, open_connection
from switchboard.queue.publisher import Publisher
from switchboard.queue.retire import retire_unpartitioned
from switchboard_devstack.ports import free_port
from switchboard_devstack.rabbitmq import RabbitNode

pytestmark = pytest.mark.integration

PARTITIONS = 6


@pytest.fixture(scope="module")
def rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitNode]:
    port = free_port()
    node = RabbitNode(Path(tmp_path_factory.mktemp("rabbit-worker")), port, nodename=f"sbworker{port}")
    node.start()
    try:
        node.wait_ready(120)
        yield node
    finally:
        node.stop()


class Recorder:
    """Handles batches slowly, recording which worker handled which message and noting any moment when two
    workers held the same key."""

    holding: ClassVar[dict[str, str]] = {}
    overlaps: ClassVar[list[str]] = []
    handled: ClassVar[list[tuple[str, str, bool]]] = []  # (worker, message id, redelivered)

    def __init__(self, name: str) -> None:
        self.name = name

    def key(self, message: QueueMessage) -> str:
        return message.message_id

    async def handle(self, batch: Sequence[QueueMessage]) -> list[Verdict]:
        for m in batch:
            other = Recorder.holding.get(m.message_id)
            if other is not None and other != self.name:
                Recorder.overlaps.append(m.message_id)
            Recorder.holding[m.message_id] = self.name
        await asyncio.sleep(0.05)
        for m in batch:
            Recorder.holding.pop(m.message_id, None)
            Recorder.handled.append((self.name, m.message_id, m.redelivered))
        return [Ack() for _ in batch]


async def publish(url: str, topology: Topology, ids: Sequence[str], rate: float) -> None:
    conn = await aio_pika.connect(url)
    try:
        channel = await conn.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(topology.exchange)
        t0 = time.monotonic()
        for i, message_id in enumerate(ids):
            await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
            await exchange.publish(aio_pika.Message(b"x", message_id=message_id), topology.routing_key)
    finally:
        await conn.close()


async def wait_handled(n: int, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while len({m for _, m, _ in Recorder.handled}) < n:
        assert time.monotonic() < deadline, f"handled {len(Recorder.handled)} of {n}"
        await asyncio.sleep(0.1)


def settings(member: int) -> WorkerSettings:
    return WorkerSettings(
        prefetch=32, max_batch=16, concurrency=2, member=member, standby_delay=0.5, rebalance_interval=0.5
    )


async def test_partitions_spread_over_two_workers_and_hand_over_without_running_a_key_twice(rabbit: RabbitNode) -> None:
    topology = Topology(f"t{free_port()}", "events", (200,), partitions=PARTITIONS, single_active=True)
    first = QueueWorker(rabbit.amqp_url, topology, Recorder("a"), settings(0), purpose="a")
    await first.start()
    second = QueueWorker(rabbit.amqp_url, topology, Recorder("b"), settings(1), purpose="b")
    await second.start()
    try:
        ids = [f"k{i:05d}" for i in range(1500)]
        await publish(rabbit.amqp_url, topology, ids, rate=300)  # 5 s: several rebalance rounds meanwhile
        await wait_handled(len(ids))
    finally:
        for w in (first, second):
            await w.stop(5)
            await w.close()
    by_worker = Counter(worker for worker, _, _ in Recorder.handled)
    times = Counter(m for _, m, _ in Recorder.handled)
    assert not Recorder.overlaps, f"two workers held the same key at once: {Recorder.overlaps[:5]}"
    assert [m for m, n in times.items() if n > 1] == [], "a message was handled twice"
    assert by_worker["a"] > 0 and by_worker["b"] > 0, f"one worker did all the work: {dict(by_worker)}"


class Blocking:
    """Holds its first batch until released; records every message it handles with its redelivered flag."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.first: list[str] = []
        self.handled: list[tuple[str, bool]] = []

    def key(self, message: QueueMessage) -> str:
        return message.message_id

    async def handle(self, batch: Sequence[QueueMessage]) -> list[Verdict]:
        if not self.first:
            self.first = [m.message_id for m in batch]
            await self.release.wait()
        self.handled.extend((m.message_id, m.redelivered) for m in batch)
        return [Ack() for _ in batch]


async def wait_for(condition: Callable[[], bool], what: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_messages_waiting_when_the_channel_closes_are_left_to_the_broker(rabbit: RabbitNode) -> None:
    """The broker drops the worker's connection while one batch is running and more messages wait in the
    worker. The broker takes every unacked message back and redelivers it on the new connection; of the old
    copies, only the batch that had started is handled (it cannot be recalled): the waiting ones are dropped,
    not run a second time next to their redeliveries."""
    topology = Topology(f"t{free_port()}", "events", (200,))
    handler = Blocking()
    worker = QueueWorker(
        rabbit.amqp_url, topology, handler, WorkerSettings(prefetch=50, max_batch=10, concurrency=1), purpose="c"
    )
    await worker.start()
    try:
        ids = [f"c{i:03d}" for i in range(50)]
        await publish(rabbit.amqp_url, topology, ids, rate=1000)
        await wait_for(lambda: bool(handler.first) and worker.in_flight == 50, "50 messages held")
        rabbit.rabbitmqctl("close_all_connections", "test: connection lost")
        # The robust connection comes back and the broker redelivers all 50 (the 10 running ones included).
        await wait_for(lambda: worker.in_flight == 100, "the redeliveries")
        handler.release.set()
        await wait_for(lambda: sum(r for _, r in handler.handled) == 50, "the redeliveries handled")
        await wait_for(lambda: worker.in_flight == 0, "the worker idle")
        depths = await worker.depths()
        unacked = worker.unacked
    finally:
        await worker.stop(5)
        await worker.close()
    first_copies = [m for m, redelivered in handler.handled if not redelivered]
    assert sorted(first_copies) == sorted(handler.first), "only the batch that had started ran from the lost channel"
    assert sorted(m for m, redelivered in handler.handled if redelivered) == ids
    assert depths[topology.work_queues[0]] == 0
    # Nothing is left unacked on the new channel; the closed one's 50 were never acked (the broker had them back).
    assert unacked == 0


async def test_the_publisher_queues_persistent_messages_and_refuses_what_the_broker_cannot_route(
    rabbit: RabbitNode,
) -> None:
    # no single active consumer: basic.get, which reads the message back, is refused on such quorum queues
    topology = Topology(f"p{free_port()}", "events", (200,), partitions=2, single_active=False)
    publisher = Publisher(rabbit.amqp_url, topology, confirm_timeout=5.0, purpose="publisher-test")
    await publisher.start()
    conn = await aio_pika.connect(rabbit.amqp_url)
    try:
        headers = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "receipt-id": "r1"}
        await publisher.publish(
            b"event bytes", message_id="demo/evt_1", headers=headers, timestamp=1_700_000_000.0, type="inbound"
        )
        channel = await conn.channel()
        got = []
        for name in topology.work_queues:
            queue = await channel.declare_queue(name, passive=True)
            message = await queue.get(no_ack=True, fail=False)
            if message is not None:
                got.append(message)
        assert len(got) == 1
        m = got[0]
        assert m.body == b"event bytes" and m.message_id == "demo/evt_1" and m.type == "inbound"
        assert m.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert m.content_type == "application/x-protobuf"
        assert {k: v for k, v in m.headers.items() if k != "x-delivery-count"} == headers  # the broker adds that
        assert m.timestamp is not None and m.timestamp.timestamp() == 1_700_000_000

        for name in topology.work_queues:  # nothing is bound to the exchange any more: unroutable
            await channel.queue_delete(name)
        with pytest.raises(BrokerUnavailable, match="did not accept"):
            await publisher.publish(b"x", message_id="demo/evt_2", headers={}, timestamp=1.0, type="inbound")
    finally:
        await conn.close()
        await publisher.close()
    with pytest.raises(BrokerUnavailable, match="not connected"):
        await publisher.publish(b"x", message_id="demo/evt_3", headers={}, timestamp=1.0, type="inbound")


async def drain_partitions(channel: aio_pika.abc.AbstractChannel, topology: Topology) -> dict[str, list[Any]]:
    """Every message waiting in each of ``topology``'s partitions, taken off them (basic.get: the partitions
    must not be single-active-consumer queues)."""
    got: dict[str, list[Any]] = {}
    for name in topology.work_queues:
        queue = await channel.declare_queue(name, passive=True)
        got[name] = []
        while (m := await queue.get(no_ack=True, fail=False)) is not None:
            got[name].append(m)
    return got


async def test_a_stream_hashed_on_a_header_keeps_each_value_in_one_partition(rabbit: RabbitNode) -> None:
    """The deliveries stream's layout: partitions by the ``subscription-id`` header, not by message id."""
    topology = Topology(f"p{free_port()}", "deliveries", (200,), partitions=4, hash_header="subscription-id")
    publisher = Publisher(rabbit.amqp_url, topology, confirm_timeout=5.0, purpose="hash-header-test")
    await publisher.start()
    conn = await aio_pika.connect(rabbit.amqp_url)
    try:
        for i in range(60):
            await publisher.publish(
                b"task", message_id=f"d{i}", headers={"subscription-id": f"sub_{i % 6}"}, timestamp=1.0, type="t"
            )
        got = await drain_partitions(await conn.channel(), topology)
    finally:
        await conn.close()
        await publisher.close()
    where: dict[str, set[str]] = {}
    for name, messages in got.items():
        for m in messages:
            where.setdefault(m.headers["subscription-id"], set()).add(name)
    assert sum(len(ms) for ms in got.values()) == 60
    assert len(where) == 6 and all(len(names) == 1 for names in where.values()), where  # one partition each
    assert len({name for names in where.values() for name in names}) > 1  # and not all in one
    ids = {m.message_id for ms in got.values() for m in ms}
    assert ids == {f"d{i}" for i in range(60)}


async def test_retiring_the_unpartitioned_work_queue_moves_its_messages_into_the_partitions(
    rabbit: RabbitNode,
) -> None:
    """A broker that holds the stream's layout from before it was partitioned: its one work queue, still
    bound to the stream's exchange, with tasks waiting. Declaring the partitioned layout adds the partitions
    beside it (a message published now lands in both); retiring the old queue moves what waits there into the
    partitions with the header the stream hashes on, keeping each message's id, body and headers, and
    deletes it."""
    prefix = f"p{free_port()}"
    old = Topology(prefix, "deliveries", (200,))
    new = Topology(prefix, "deliveries", (200,), partitions=3, hash_header="subscription-id")
    old_publisher = Publisher(rabbit.amqp_url, old, confirm_timeout=5.0, purpose="retire-old")
    await old_publisher.start()
    for i in range(5):
        await old_publisher.publish(
            f"sub_{i}".encode(), message_id=f"d{i}", headers={"traceparent": f"tp{i}"}, timestamp=1.0, type="t"
        )
    await old_publisher.close()
    publisher = Publisher(rabbit.amqp_url, new, confirm_timeout=5.0, purpose="retire-new")
    await publisher.start()  # declares the partitioned layout
    await publisher.publish(b"sub_5", message_id="d5", headers={"subscription-id": "sub_5"}, timestamp=1.0, type="t")
    conn = await aio_pika.connect(rabbit.amqp_url)
    try:
        moved = await retire_unpartitioned(
            rabbit.amqp_url, new, lambda m: {"subscription-id": m.body.decode()}, purpose="retire-test"
        )
        assert moved == 6  # five from before, and the one published while both were bound
        assert await retire_unpartitioned(rabbit.amqp_url, new, lambda m: {}, purpose="retire-test") == 0
        channel = await conn.channel()
        with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
            await channel.declare_queue(old.name, passive=True)
        await publisher.publish(
            b"sub_6", message_id="d6", headers={"subscription-id": "sub_6"}, timestamp=1.0, type="t"
        )
        got = await drain_partitions(await conn.channel(), new)
    finally:
        await conn.close()
        await publisher.close()
    messages = [m for ms in got.values() for m in ms]
    assert sorted(m.message_id for m in messages) == ["d0", "d1", "d2", "d3", "d4", "d5", "d5", "d6"]
    for m in messages:
        assert m.headers["subscription-id"] == m.body.decode()
        assert m.delivery_mode == aio_pika.DeliveryMode.PERSISTENT and m.type == "t"
    assert {m.headers.get("traceparent") for m in messages if m.message_id in {"d0", "d4"}} == {"tp0", "tp4"}
    for name, ms in got.items():  # a subscription's copies hash to one partition, moved or published
        assert all(
            m.headers["subscription-id"] not in {x.headers["subscription-id"] for x in got[other]}
            for other in got
            if other != name
            for m in ms
        )


async def test_a_stream_refuses_a_broker_that_holds_it_with_more_partitions(rabbit: RabbitNode) -> None:
    """The extra partitions, still bound, would get their share of every message for nobody: declaring the
    stream unpartitioned, or with fewer partitions, is refused; with as many or more it is not."""
    prefix = f"p{free_port()}"
    await declare(rabbit.amqp_url, Topology(prefix, "deliveries", (200,), partitions=3, hash_header="h"), purpose="t")
    with pytest.raises(ConfigError, match=rf"more partitions than configured \({prefix}.deliveries.hash exists"):
        await declare(rabbit.amqp_url, Topology(prefix, "deliveries", (200,)), purpose="t")
    with pytest.raises(ConfigError, match=rf"{prefix}.deliveries.p02 exists"):
        await declare(
            rabbit.amqp_url, Topology(prefix, "deliveries", (200,), partitions=2, hash_header="h"), purpose="t"
        )
    await declare(rabbit.amqp_url, Topology(prefix, "deliveries", (200,), partitions=3, hash_header="h"), purpose="t")
    await declare(rabbit.amqp_url, Topology(prefix, "deliveries", (200,), partitions=5, hash_header="h"), purpose="t")
    await declare(rabbit.amqp_url, Topology(f"p{free_port()}", "deliveries", (200,)), purpose="t")  # a fresh one


def connections_named(rabbit: RabbitNode, name: str) -> list[str]:
    """The broker's connections (their Erlang pids) whose client gave ``name`` as its connection name."""
    listing = rabbit.rabbitmqctl("list_connections", "pid", "client_properties", "--no-table-headers", "--quiet")
    return [line.split("\t", 1)[0] for line in listing.stdout.splitlines() if f'"{name}"' in line]


async def test_the_publisher_fails_the_calls_of_a_lost_connection_and_reconnects(rabbit: RabbitNode) -> None:
    """The broker closes the publisher's connection (as a network cut or a broker restart would) while calls
    wait for their confirms: each of them raises ``BrokerUnavailable`` at once (none hangs until its timeout,
    none returns as if confirmed), and the publisher reconnects on its own; what it publishes then is queued."""
    topology = Topology(f"p{free_port()}", "events", (200,))
    purpose = f"reconnect-test-{free_port()}"
    publisher = Publisher(rabbit.amqp_url, topology, confirm_timeout=30.0, purpose=purpose)
    await publisher.start()
    outcomes: dict[str, BaseException | None] = {}  # message id -> what its call ended with
    cut = asyncio.Event()  # set once the broker closed the connection

    async def lane(n: int) -> None:
        """Publishes one message after another until one fails or the cut was made."""
        i = 0
        while not cut.is_set():
            message_id = f"demo/lane{n}_{i}"
            i += 1
            try:
                await publisher.publish(b"x", message_id=message_id, headers={}, timestamp=1.0, type="inbound")
            except BrokerUnavailable as exc:
                outcomes[message_id] = exc
                return
            outcomes[message_id] = None

    try:
        await publisher.publish(b"before", message_id="demo/evt_1", headers={}, timestamp=1.0, type="inbound")
        [first] = connections_named(rabbit, purpose)
        lanes = [asyncio.create_task(lane(n)) for n in range(16)]
        await asyncio.sleep(0.5)
        await asyncio.to_thread(rabbit.rabbitmqctl, "close_connection", first, "test: publisher cut off")
        cut.set()
        started = time.monotonic()
        await asyncio.gather(*lanes)
        settled_within = time.monotonic() - started
        await wait_for(lambda: publisher.connected, "the publisher reconnected")
        await publisher.publish(b"after", message_id="demo/evt_2", headers={}, timestamp=1.0, type="inbound")
        second = connections_named(rabbit, purpose)
    finally:
        await publisher.close()
    lost = [e for e in outcomes.values() if isinstance(e, BrokerUnavailable) and "lost the message" in e.message]
    assert lost, "no call was waiting for its confirm when the connection closed"
    assert settled_within < 30.0, "a call waited for its confirm timeout instead of failing with the connection"
    assert second and first not in second, "the publisher did not open a new connection"
    conn = await aio_pika.connect(rabbit.amqp_url)
    try:
        channel = await conn.channel()
        queue = await channel.declare_queue(topology.work_queues[0], passive=True)
        queued = set()
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            queued.add(message.message_id)
    finally:
        await conn.close()
    confirmed = {message_id for message_id, outcome in outcomes.items() if outcome is None}
    assert {"demo/evt_1", "demo/evt_2"} | confirmed <= queued, "a confirmed message is missing from the queue"


async def test_the_publisher_declares_its_topology_again_when_the_broker_lost_it(rabbit: RabbitNode) -> None:
    """Someone deletes the stream's exchange while the publisher runs: the next publish is refused (the broker
    closes the channel, 404), the publisher reconnects and declares the topology again, and publishing works
    with no restart."""
    topology = Topology(f"p{free_port()}", "events", (200,))
    publisher = Publisher(rabbit.amqp_url, topology, confirm_timeout=5.0, purpose=f"redeclare-{free_port()}")
    await publisher.start()
    conn = await aio_pika.connect(rabbit.amqp_url)
    try:
        channel = await conn.channel()
        await channel.exchange_delete(topology.exchange)
        with pytest.raises(BrokerUnavailable) as refused:
            await publisher.publish(b"x", message_id="demo/evt_1", headers={}, timestamp=1.0, type="inbound")
        # the broker's reason names the exchange: the log has it, the webhook's sender does not
        assert topology.exchange in refused.value.message and topology.exchange not in refused.value.public
        await wait_for(lambda: publisher.connected, "the publisher reconnected")
        await publisher.publish(b"y", message_id="demo/evt_2", headers={}, timestamp=1.0, type="inbound")
        queue = await channel.declare_queue(topology.work_queues[0], passive=True)
        message = await queue.get(no_ack=True, fail=False)
    finally:
        await conn.close()
        await publisher.close()
    assert message is not None and message.message_id == "demo/evt_2"


class Timed:
    """Records when each batch reached the handler and what it held."""

    def __init__(self) -> None:
        self.batches: list[tuple[float, list[str]]] = []

    def key(self, message: QueueMessage) -> str:
        return message.message_id

    async def handle(self, batch: Sequence[QueueMessage]) -> list[Verdict]:
        self.batches.append((time.monotonic(), [m.message_id for m in batch]))
        return [Ack() for _ in batch]


def lingering(rabbit: RabbitNode, linger: float, prefetch: int) -> tuple[Topology, Timed, QueueWorker]:
    """A worker on a fresh stream, batches of at most 16, one at a time, with ``linger``."""
    topology = Topology(f"t{free_port()}", "events", (200,))
    handler = Timed()
    settings = WorkerSettings(prefetch=prefetch, max_batch=16, concurrency=1, linger=linger)
    return topology, handler, QueueWorker(rabbit.amqp_url, topology, handler, settings, purpose="linger")


async def test_a_small_batch_lingers_for_company_and_a_full_one_does_not(rabbit: RabbitNode) -> None:
    """With a linger, messages that arrive within it of the first go to the handler together, not before the
    first is ``linger`` old; a batch's worth (``max_batch``) goes at once."""
    linger = 1.0
    topology, handler, worker = lingering(rabbit, linger, prefetch=64)
    await worker.start()
    try:
        sent = time.monotonic()
        await publish(rabbit.amqp_url, topology, [f"s{i}" for i in range(5)], rate=1000)
        await wait_for(lambda: sum(len(ids) for _, ids in handler.batches) == 5, "the five messages handled")
        small_at, small = handler.batches[0]

        sent_full = time.monotonic()
        await publish(rabbit.amqp_url, topology, [f"f{i:02d}" for i in range(32)], rate=1000)
        await wait_for(lambda: sum(len(ids) for _, ids in handler.batches) == 37, "two full batches")
    finally:
        await worker.stop(5)
        await worker.close()
    assert small == [f"s{i}" for i in range(5)], "the five messages waited for each other"
    assert small_at - sent >= linger, "the batch started before its first message was a linger old"
    full = handler.batches[1:]
    assert [len(ids) for _, ids in full] == [16, 16]
    assert all(at - sent_full < linger for at, _ in full), "a full batch waited for the linger"


async def test_stopping_ends_a_linger_and_leaves_its_messages_to_the_broker(rabbit: RabbitNode) -> None:
    topology, handler, worker = lingering(rabbit, 30.0, prefetch=16)
    await worker.start()
    try:
        await publish(rabbit.amqp_url, topology, ["x1", "x2"], rate=1000)
        await wait_for(lambda: worker.in_flight == 2, "two messages waiting in the worker")
        started = time.monotonic()
        drained = await worker.stop(10)
        stopped_in = time.monotonic() - started
        # The broker puts them back once it has processed the channel's close (on a quorum queue, through its
        # log): poll, do not read once.
        ready = 0
        deadline = time.monotonic() + 10
        while ready < 2 and time.monotonic() < deadline:
            ready = (await worker.depths())[topology.work_queues[0]]
            await asyncio.sleep(0.1)
    finally:
        await worker.close()
    assert drained and stopped_in < 5, f"stop waited {stopped_in:.1f} s"
    assert handler.batches == [], "a lingering batch was started while stopping"
    assert ready == 2, "the unstarted messages did not go back to the queue"


class Gated:
    """Holds every message whose id starts with "slow" until released; answers the others at once."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.running = 0
        self.most_running = 0
        self.started: list[str] = []
        self.done: list[str] = []

    def key(self, message: QueueMessage) -> str:
        return message.message_id

    async def handle(self, batch: Sequence[QueueMessage]) -> list[Verdict]:
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        self.started.extend(m.message_id for m in batch)
        try:
            if any(m.message_id.startswith("slow") for m in batch):
                await self.release.wait()
            self.done.extend(m.message_id for m in batch)
            return [Ack() for _ in batch]
        finally:
            self.running -= 1


async def test_held_batches_take_only_their_own_slots_and_stop_returns_them_to_the_broker(
    rabbit: RabbitNode,
) -> None:
    """Batches of one, four slots: three held batches leave the fourth slot to everything else; a fourth
    held one takes it and the next message waits for a slot; released, all finish. Stopped while batches are
    held past the drain time, the worker cancels them and the broker has their messages back."""
    topology = Topology(f"t{free_port()}", "events", (200,))
    handler = Gated()
    settings = WorkerSettings(prefetch=64, max_batch=1, concurrency=4)
    worker = QueueWorker(rabbit.amqp_url, topology, handler, settings, purpose="slots")
    await worker.start()
    try:
        await publish(rabbit.amqp_url, topology, ["slow1", "slow2", "slow3"], rate=1000)
        await wait_for(lambda: handler.running == 3, "three held batches")
        fast = [f"fast{i:02d}" for i in range(20)]
        await publish(rabbit.amqp_url, topology, fast, rate=1000)
        await wait_for(lambda: set(fast) <= set(handler.done), "the fast messages, past the held ones")
        await publish(rabbit.amqp_url, topology, ["slow4", "next"], rate=1000)
        await wait_for(lambda: handler.running == 4, "a fourth held batch")
        await asyncio.sleep(0.5)
        assert "next" not in handler.started, "a fifth batch ran with four slots"
        handler.release.set()
        await wait_for(lambda: "next" in handler.done and worker.unacked == 0, "everything handled and acked")
        assert handler.most_running == 4

        handler.release.clear()
        await publish(rabbit.amqp_url, topology, ["slow5", "slow6"], rate=1000)
        await wait_for(lambda: handler.running == 2, "two held batches")
        drained = await worker.stop(0.5)
        assert not drained, "stop reported held batches as drained"
        assert handler.running == 0, "stop left held batches running"
        ready = 0
        deadline = time.monotonic() + 10
        while ready < 2 and time.monotonic() < deadline:
            ready = (await worker.depths())[topology.work_queues[0]]
            await asyncio.sleep(0.1)
        assert ready == 2, "the cancelled batches' messages did not go back to the queue"
    finally:
        await worker.stop(1)
        await worker.close()
    assert sorted(handler.done) == sorted(["slow1", "slow2", "slow3", "slow4", "next", *fast])


async def first_dead_letter(
    channel: aio_pika.abc.AbstractChannel, topology: Topology, within: float = 10.0
) -> aio_pika.abc.AbstractIncomingMessage | None:
    """The first message in the stream's dead-letter queue, waiting up to ``within`` seconds for one."""
    dead_queue = await channel.declare_queue(topology.dead_queue, passive=True)
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        dead = await dead_queue.get(no_ack=True, fail=False)
        if dead is not None:
            return dead
        await asyncio.sleep(0.05)
    return None


class Forwarding:
    """Asks for a retry on a message's first delivery and gives it up (dead letter) on the second."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int, float]] = []  # (message id, x-attempt, monotonic arrival)
        self.types: list[str] = []

    def key(self, message: QueueMessage) -> str:
        return message.message_id

    async def handle(self, batch: Sequence[QueueMessage]) -> list[Verdict]:
        out: list[Verdict] = []
        for m in batch:
            self.seen.append((m.message_id, m.attempt, time.monotonic()))
            self.types.append(m.type)
            out.append(Retry(1, "boom") if m.attempt == 0 else DeadLetter(m.attempt + 1, "gave up", again=True))
        return out


async def test_a_retry_comes_back_after_its_delay_and_a_dead_letter_keeps_the_original_properties(
    rabbit: RabbitNode,
) -> None:
    """The worker's copies carry what the original carried (body, id, type, timestamp, content type, headers)
    plus its own headers; the retried copy expires from its delay queue back into the work queue."""
    topology = Topology(f"t{free_port()}", "events", (300,))
    handler = Forwarding()
    worker = QueueWorker(rabbit.amqp_url, topology, handler, WorkerSettings(prefetch=8, max_batch=4), purpose="fwd")
    await worker.start()
    conn = await aio_pika.connect(rabbit.amqp_url)
    try:
        channel = await conn.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(topology.exchange)
        original = aio_pika.Message(
            b"payload",
            message_id="demo/evt_9",
            type="inbound",
            content_type="application/x-protobuf",
            timestamp=1_700_000_000,
            headers={"receipt-id": "r9"},
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        await exchange.publish(original, topology.routing_key)
        await wait_for(lambda: len(handler.seen) == 2, "the retried copy handled")
        dead = await first_dead_letter(channel, topology)
    finally:
        await conn.close()
        await worker.stop(5)
        await worker.close()
    (_, first_attempt, first_at), (_, second_attempt, second_at) = handler.seen
    assert (first_attempt, second_attempt) == (0, 1)
    assert handler.types == ["inbound", "inbound"], "the handler did not see the message's type"
    assert second_at - first_at >= 0.15, "the retry came back before half its delay (the jitter's floor)"
    assert dead is not None, "no dead letter"
    assert dead.body == b"payload" and dead.message_id == "demo/evt_9" and dead.type == "inbound"
    assert dead.content_type == "application/x-protobuf" and dead.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert dead.timestamp is not None and dead.timestamp.timestamp() == 1_700_000_000
    headers = dead.headers
    assert headers["receipt-id"] == "r9" and headers["x-attempt"] == 2 and headers["x-last-error"] == "gave up"
    assert headers["x-dead-reason"] == "dead_lettered" and isinstance(headers["x-dead-at"], int)
    assert headers["x-dead-again"] == 1  # DeadLetter(again=True): a copy of a death dead-lettered before
    assert not any(str(k).startswith("x-death") for k in headers), "the broker's dead-letter history was kept"


async def test_a_forward_the_broker_refuses_reopens_the_worker_and_the_message_is_forwarded_later(
    rabbit: RabbitNode,
) -> None:
    """Someone deletes the stream's retry exchange while the worker runs: the retry copy is refused (the broker
    closes the forwarding channel, 404), the message goes back to the queue, the worker reconnects and declares
    the topology again, and the redelivered message is retried and then dead-lettered as if nothing happened.
    Fails if the worker keeps its closed forwarding channel (every later forward would fail)."""
    topology = Topology(f"t{free_port()}", "events", (200,))
    handler = Forwarding()
    purpose = f"refused-{free_port()}"
    worker = QueueWorker(rabbit.amqp_url, topology, handler, WorkerSettings(prefetch=8, max_batch=4), purpose=purpose)
    await worker.start()
    conn = await aio_pika.connect(rabbit.amqp_url)
    try:
        [first] = connections_named(rabbit, purpose)
        channel = await conn.channel(publisher_confirms=True)
        await channel.exchange_delete(topology.retry_exchange)
        exchange = await channel.get_exchange(topology.exchange)
        await exchange.publish(aio_pika.Message(b"payload", message_id="demo/evt_7"), topology.routing_key)
        dead_queue = await channel.declare_queue(topology.dead_queue, passive=True)
        dead = None
        deadline = time.monotonic() + 30
        while dead is None and time.monotonic() < deadline:
            dead = await dead_queue.get(no_ack=True, fail=False)
            await asyncio.sleep(0.1)
        second = connections_named(rabbit, purpose)
    finally:
        await conn.close()
        await worker.stop(5)
        await worker.close()
    assert dead is not None and dead.message_id == "demo/evt_7", "the message never reached the dead-letter queue"
    attempts = [attempt for _, attempt, _ in handler.seen]
    assert attempts[0] == 0 and attempts[-1] == 1 and 0 in attempts[1:-1], (
        f"no redelivery after the refusal: {attempts}"
    )
    assert second and first not in second, "the worker did not open a new connection"


async def test_a_work_queue_deleted_under_the_worker_is_declared_again_and_consumed(rabbit: RabbitNode) -> None:
    """Someone deletes the work queue the worker consumes: the broker cancels the consumer (the channel stays
    open, idle), the worker reconnects, declares the topology again and consumes the new queue. Fails if the
    cancelled consumer is left as it is (nothing would be consumed again)."""
    topology = Topology(f"t{free_port()}", "events", (200,))
    handler = Timed()
    worker = QueueWorker(rabbit.amqp_url, topology, handler, WorkerSettings(prefetch=8, max_batch=4), purpose="del")
    await worker.start()
    conn = await aio_pika.connect(rabbit.amqp_url)
    try:
        channel = await conn.channel()
        await channel.queue_delete(topology.work_queues[0])
        exchange = await channel.get_exchange(topology.exchange)
        deadline = time.monotonic() + 30
        i = 0
        while not handler.batches and time.monotonic() < deadline:
            # Published without a queue bound, a message is dropped: keep sending until one is consumed.
            await exchange.publish(aio_pika.Message(b"x", message_id=f"d{i}"), topology.routing_key)
            i += 1
            await asyncio.sleep(0.2)
    finally:
        await conn.close()
        await worker.stop(5)
        await worker.close()
    assert handler.batches, "nothing was consumed after the queue was deleted and declared again"


async def ignore(_message: aio_pika.abc.AbstractIncomingMessage) -> None:
    pass


async def test_a_standby_queue_that_cannot_be_subscribed_reopens_the_worker_which_declares_it_again(
    rabbit: RabbitNode,
) -> None:
    """A partition the worker is to stand by for is deleted between its start and its standby subscription:
    the subscribe on the live connection is refused (404), the worker closes that connection, reconnects,
    declares the topology again and consumes the partition with the rest. A second member (a plain consumer of
    the members queue) makes the partition a standby one. Fails if neither the refused subscribe nor the
    broker's closing of its channel reopens the worker (each alone does): the partition would stay deleted."""
    topology = Topology(f"t{free_port()}", "events", (200,), partitions=4, single_active=True)
    await declare(rabbit.amqp_url, topology, purpose="setup")
    purpose = f"standby-{free_port()}"
    conn = await aio_pika.connect(rabbit.amqp_url)
    worker = QueueWorker(
        rabbit.amqp_url,
        topology,
        Timed(),
        WorkerSettings(prefetch=8, max_batch=4, member=0, standby_delay=2.0, rebalance_interval=60),
        purpose=purpose,
    )
    try:
        channel = await conn.channel()
        # the other member: partitions 1 and 3 are its, the worker stands by for them
        await (await channel.declare_queue(topology.members_queue, passive=True)).consume(ignore, no_ack=True)
        await worker.start()
        [first] = connections_named(rabbit, purpose)
        standby = topology.work_queues[1]
        await channel.queue_delete(standby)
        deadline = time.monotonic() + 30
        consumers = 0
        while consumers == 0:
            assert time.monotonic() < deadline, f"{standby} was not declared again and consumed"
            await asyncio.sleep(0.2)
            probe = await conn.channel()
            try:
                declared = await probe.declare_queue(standby, passive=True)
                consumers = declared.declaration_result.consumer_count or 0
            except aio_pika.exceptions.ChannelClosed:  # not declared again (yet): the broker closed the probe
                consumers = 0
            else:
                await probe.close()
        second = connections_named(rabbit, purpose)
    finally:
        await conn.close()
        await worker.stop(5)
        await worker.close()
    assert second and first not in second, "the worker did not open a new connection"


async def test_an_open_given_up_halfway_logs_no_error_and_leaves_no_connection(
    rabbit: RabbitNode, caplog: pytest.LogCaptureFixture
) -> None:
    """``open_connection`` cancelled at moments from before the TCP connect to after the handshake (a service
    stopping while it reconnects): no error is logged (aborting pika's opening made it log errors and a
    traceback of its own assertion) and no connection stays open on the broker (one that opened after its
    caller gave up is closed)."""
    caplog.set_level(logging.WARNING)
    purpose = f"abandoned-{free_port()}"
    for delay in (0, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064):
        task = asyncio.create_task(open_connection(rabbit.amqp_url, purpose=purpose, on_closed=lambda _c, _r: None))
        await asyncio.sleep(delay)
        task.cancel()
        try:
            opened = await task
        except asyncio.CancelledError:
            continue
        await close_and_wait(opened)  # it opened before the cancel arrived
    deadline = time.monotonic() + 20
    while left := connections_named(rabbit, purpose):
        assert time.monotonic() < deadline, f"{len(left)} abandoned connection(s) still open"
        await asyncio.sleep(0.5)
    errors = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []


class Crashing:
    """Raises for any batch holding ``poison``; acks the others."""

    def __init__(self, poison: str) -> None:
        self.poison = poison
        self.done: list[str] = []
        self.poison_attempts: list[int] = []

    def key(self, message: QueueMessage) -> str:
        return message.message_id

    async def handle(self, batch: Sequence[QueueMessage]) -> list[Verdict]:
        for m in batch:
            if m.message_id == self.poison:
                self.poison_attempts.append(int(m.headers.get("x-crash-attempt", 0)))
                raise InvalidRequest(f"the store refused the request: {m.message_id}", reason="STORE_REFUSED")
        self.done += [m.message_id for m in batch]
        return [Ack() for _ in batch]


async def test_a_message_the_handler_fails_on_is_retried_alone_then_dead_lettered_and_the_others_go_on(
    rabbit: RabbitNode,
) -> None:
    """Batches of eight with one message that makes the handler raise (a value the store refuses, or a bug; not
    an outage): the other seven are handled (they used to stay unacked with it until the channel closed), and
    the poison goes through the delay queue and back until it raised three times (counted apart from its
    x-attempt, which is the handler's), then to the dead letters with the error."""
    topology = Topology(f"t{free_port()}", "events", (50,))
    handler = Crashing("m3")
    worker = QueueWorker(
        rabbit.amqp_url,
        topology,
        handler,
        WorkerSettings(prefetch=16, max_batch=8, linger=0.3, crash_attempts=3),
        purpose="crash",
    )
    await worker.start()
    ids = [f"m{i}" for i in range(8)]
    conn = await aio_pika.connect(rabbit.amqp_url)
    try:
        await publish(rabbit.amqp_url, topology, ids, rate=1000)
        await wait_for(lambda: len(handler.poison_attempts) == 3, "the poison's three attempts")
        channel = await conn.channel()
        dead = await first_dead_letter(channel, topology)
        await wait_for(lambda: worker.running == 0, "nothing left unacked")
    finally:
        await conn.close()
        await worker.stop(5)
        await worker.close()
    assert sorted(handler.done) == sorted(i for i in ids if i != "m3")
    assert handler.poison_attempts[0] == 0 and handler.poison_attempts[-2:] == [1, 2]
    assert dead is not None and dead.message_id == "m3"
    assert dead.headers["x-crash-attempt"] == 3 and dead.headers["x-dead-reason"] == "crashed"
    assert dead.headers["x-attempt"] == 0
    assert dead.headers["x-last-error"] == "the handler failed: InvalidRequest: the store refused the request: m3"


class HeldThenRetry:
    """Holds every batch until ``gate`` opens; then asks a retry for ids starting with "retry", acks the rest."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.seen: Counter[str] = Counter()

    def key(self, message: QueueMessage) -> str:
        return message.message_id

    async def handle(self, batch: Sequence[QueueMessage]) -> list[Verdict]:
        self.seen.update(m.message_id for m in batch)
        await self.gate.wait()
        return [Retry(1, "later") if m.message_id.startswith("retry") else Ack() for m in batch]


class ForwardLog(WorkerHooks):
    def __init__(self) -> None:
        self.failures: list[str] = []
        self.copied: list[str] = []

    def forward_failed(self, message: QueueMessage, error: BrokerUnavailable) -> None:
        self.failures.append(error.message)

    def forwarded(self, message: QueueMessage, verdict: Verdict) -> None:
        self.copied.append(message.message_id)


def messages_in(rabbit: RabbitNode, queues: Sequence[str]) -> int:
    listing = rabbit.rabbitmqctl("list_queues", "name", "messages", "--no-table-headers", "--quiet")
    counts = dict(line.split("\t") for line in listing.stdout.splitlines() if "\t" in line)
    return sum(int(counts.get(q, 0)) for q in queues)


async def refuses_at_once(publisher: Publisher) -> bool:
    """True if a publish fails within a quarter of a second saying the broker blocks publishers."""
    started = time.monotonic()
    try:
        await publisher.publish(b"x", message_id=f"probe-{started}", headers={}, timestamp=time.time(), type="t")
    except BrokerUnavailable as exc:
        return "blocks" in exc.message and time.monotonic() - started < 0.25
    return False


async def test_during_a_memory_alarm_acks_go_on_copies_wait_and_publishes_fail_at_once(rabbit: RabbitNode) -> None:
    """A memory alarm while a batch of nine runs (eight acks, one retry). RabbitMQ stops reading from every
    connection that publishes: the retry's copy used to go out on the consuming connection, which then held
    back the eight acks with it until the alarm ended (the queues kept all nine). Now the copy has a connection
    of its own: the acks go through, the retried message is held apart from its batch (not returned to its
    queue, where each return counted toward its delivery limit; not in its batch's slot, which stopped a worker
    running one batch at a time) and its copy goes out once the alarm ends; ingest's publisher fails at once
    instead of buffering."""
    topology = Topology(f"t{free_port()}", "events", (200,))
    handler, hooks = HeldThenRetry(), ForwardLog()
    settings = WorkerSettings(prefetch=16, max_batch=16, linger=0.3)
    worker = QueueWorker(rabbit.amqp_url, topology, handler, settings, purpose="alarm", hooks=[hooks])
    publisher = Publisher(rabbit.amqp_url, topology, confirm_timeout=2.0, purpose=f"alarm-pub-{free_port()}")
    await worker.start()
    await publisher.start()
    ids = [f"ack-{i}" for i in range(8)] + ["retry-0"]
    try:
        for message_id in ids:
            await publisher.publish(b"x", message_id=message_id, headers={}, timestamp=time.time(), type="t")
        await wait_for(lambda: worker.running == len(ids), "the nine messages in the handler")
        rabbit.rabbitmqctl("set_vm_memory_high_watermark", "0.000001")
        try:
            deadline = time.monotonic() + 30
            while not await refuses_at_once(publisher):
                assert time.monotonic() < deadline, "the publisher never failed at once during the alarm"
            handler.gate.set()
            await wait_for(lambda: messages_in(rabbit, topology.work_queues) == 1, "the eight acks", within=30)
            await asyncio.sleep(8)  # past the first copy's confirm timeout (5 s) and a return's pause (1 s)
            assert (hooks.copied, hooks.failures) == ([], []), "the copy went out or failed during the alarm"
            assert handler.seen["retry-0"] == 1, "the retried message was returned and handled again"
            # Held apart from its batch: the batch's slot is free for other messages (one batch at a time
            # stopped the worker for the whole alarm), and the message still counts as in flight.
            assert (worker.running, worker.in_flight) == (0, 1)
        finally:
            rabbit.rabbitmqctl("set_vm_memory_high_watermark", "0.4")
        await wait_for(lambda: "retry-0" in hooks.copied, "the copy forwarded after the alarm", within=30)
    finally:
        await publisher.close()
        await worker.stop(5)
        await worker.close()


async def test_a_worker_without_retries_returns_what_fails_its_handler_and_the_others_go_on(
    rabbit: RabbitNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """crash_attempts 0 (the dead-letter recorders): a message that makes the handler raise went nowhere and
    stayed unacked until the channel closed, and its batch with it; 64 of them stopped a recorder. Now the
    others are handled and it returns to its queue, to be tried again."""
    monkeypatch.setattr(worker_module, "CRASH_RETURN_PAUSE", 0.3)
    topology = Topology(f"t{free_port()}", "events", (50,))
    handler = Crashing("m3")
    settings = WorkerSettings(prefetch=16, max_batch=8, linger=0.3, crash_attempts=0)
    worker = QueueWorker(rabbit.amqp_url, topology, handler, settings, purpose="no-retries")
    await worker.start()
    ids = [f"m{i}" for i in range(8)]
    try:
        await publish(rabbit.amqp_url, topology, ids, rate=1000)
        await wait_for(lambda: len(handler.poison_attempts) >= 3, "the poison tried three times")
        await wait_for(lambda: sorted(handler.done) == sorted(i for i in ids if i != "m3"), "the other seven")
    finally:
        await worker.stop(5)
        await worker.close()
