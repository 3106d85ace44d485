"""CPU per message of Python AMQP clients, publishing and consuming, for choosing the services' client:
``python -m bench.amqp_clients``.

A RabbitMQ node started by ``switchboard_devstack.RabbitNode`` (free ports, a temporary directory) and, per run,
a fresh quorum queue; each run's client is a process of its own, and its CPU (``time.process_time``, every
thread of it) over the measured messages divided by their number is the figure, next to the broker's CPU over
the client's whole run (from /proc, its process group). Messages are persistent, ``--size`` bytes (~5 KB: a
benchmark event) with a message id and three headers, as the ingest publisher sends them. Variants
(``--variants``, each run ``--rounds`` times, interleaved):

Publishing ``--messages``, ``--concurrency`` at a time, each call returning once the broker confirmed it
(publisher confirms, ``mandatory``), as ingest's concurrent requests do:

* ``publish-aiormq``: aio-pika's underlying aiormq channel, ``basic_publish`` awaiting its confirm: what
  ``switchboard.queue.Publisher`` does now.
* ``publish-pika``: pika's ``AsyncioConnection``; each call waits on a future that the channel's confirm
  callback resolves (``multiple`` acks resolve every earlier delivery tag).

Consuming a queue filled with ``--messages`` beforehand, with a prefetch of ``--prefetch`` and one
``basic.ack`` with ``multiple`` every ``--ack-every`` messages, reading each message's body, id, headers and
redelivered flag (what ``switchboard.queue.worker`` reads); measured from the first delivery to the last ack:

* ``consume-aio-pika``: ``Queue.consume`` with an async callback (``IncomingMessage``): what the workers ran
  before they moved to pika.
* ``consume-aiormq``: the underlying aiormq channel's ``basic_consume`` (no ``IncomingMessage`` per delivery).
* ``consume-pika``: pika's ``AsyncioConnection`` on an asyncio loop: what the workers run.
* ``consume-pika-select``: pika's ``SelectConnection`` and its own I/O loop, no asyncio.

The clients do nothing else with a message, so the figures are the client's cost alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiormq

from bench.cpu import CpuMeter
from switchboard_devstack.ports import free_port
from switchboard_devstack.rabbitmq import RabbitNode

VARIANTS = (
    "publish-aiormq",
    "publish-pika",
    "consume-aio-pika",
    "consume-aiormq",
    "consume-pika",
    "consume-pika-select",
)
HEADERS: dict[str, Any] = {"x-attempt": 0, "x-source": "bench", "x-event-type": "invoice.paid"}
CONTENT_TYPE = "application/x-protobuf"


def _body(size: int) -> bytes:
    return os.urandom(size // 2 + 1).hex().encode()[:size]


class Clock:
    """The CPU and wall clock between ``start()`` and ``finish()``, per message."""

    def __init__(self) -> None:
        self.started: tuple[float, float] | None = None
        self.ended: tuple[float, float] | None = None

    def start(self) -> None:
        self.started = (time.process_time(), time.perf_counter())

    def finish(self) -> None:
        self.ended = (time.process_time(), time.perf_counter())

    def result(self, messages: int) -> dict[str, float]:
        assert self.started is not None and self.ended is not None
        cpu = self.ended[0] - self.started[0]
        wall = self.ended[1] - self.started[1]
        return {"messages": messages, "cpu_us_per_message": cpu / messages * 1e6, "rate": messages / wall}


# -- publishers (run in a child process) -------------------------------------------------------------------------
async def _publish_aiormq(url: str, queue: str, messages: int, size: int, concurrency: int) -> dict[str, float]:
    connection = await aiormq.connect(url)
    channel = await connection.channel()
    await channel.confirm_delivery()
    body = _body(size)

    async def publish(i: int) -> None:
        properties = aiormq.spec.Basic.Properties(
            delivery_mode=2, message_id=f"bench/evt_{i:08d}", headers=dict(HEADERS), content_type=CONTENT_TYPE
        )
        confirmation = await channel.basic_publish(body, routing_key=queue, properties=properties, mandatory=True)
        if not isinstance(confirmation, aiormq.spec.Basic.Ack):
            raise SystemExit(f"not confirmed: {confirmation!r}")

    clock = await _concurrently(publish, messages, concurrency)
    await connection.close()
    return clock.result(messages)


async def _publish_pika(url: str, queue: str, messages: int, size: int, concurrency: int) -> dict[str, float]:
    import pika
    from pika.adapters.asyncio_connection import AsyncioConnection

    loop = asyncio.get_running_loop()
    ready: asyncio.Future[Any] = loop.create_future()
    waiting: dict[int, asyncio.Future[bool]] = {}  # delivery tag -> the call waiting for its confirm
    sent = 0

    def on_confirm(frame: Any) -> None:
        method = frame.method
        acked = isinstance(method, pika.spec.Basic.Ack)
        tags = [t for t in waiting if t <= method.delivery_tag] if method.multiple else [method.delivery_tag]
        for tag in tags:
            waiting.pop(tag).set_result(acked)

    def on_channel(channel: Any) -> None:
        channel.confirm_delivery(on_confirm, callback=lambda _frame: ready.set_result(channel))

    connection = AsyncioConnection(
        pika.URLParameters(url),
        on_open_callback=lambda conn: conn.channel(on_open_callback=on_channel),
        custom_ioloop=loop,
    )
    channel = await ready
    body = _body(size)

    async def publish(i: int) -> None:
        nonlocal sent
        properties = pika.BasicProperties(
            delivery_mode=2, message_id=f"bench/evt_{i:08d}", headers=dict(HEADERS), content_type=CONTENT_TYPE
        )
        channel.basic_publish("", queue, body, properties, mandatory=True)
        sent += 1
        confirm = waiting[sent] = loop.create_future()
        if not await confirm:
            raise SystemExit("not confirmed")

    clock = await _concurrently(publish, messages, concurrency)
    connection.close()
    return clock.result(messages)


async def _concurrently(call: Callable[[int], Awaitable[None]], messages: int, concurrency: int) -> Clock:
    """``call(i)`` for every i below ``messages``, ``concurrency`` at a time, timed."""
    clock = Clock()
    numbers = iter(range(messages))

    async def lane() -> None:
        for i in numbers:
            await call(i)

    clock.start()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    clock.finish()
    return clock


# -- consumers (run in a child process) --------------------------------------------------------------------------
class Tally(Clock):
    """Counts deliveries and says when to ack; the clock runs from the first delivery to the last ack."""

    def __init__(self, total: int, ack_every: int) -> None:
        super().__init__()
        self.total = total
        self.ack_every = ack_every
        self.count = 0
        self.bytes = 0

    def take(self, body: bytes, message_id: str | None, headers: Any, redelivered: bool | None) -> bool:
        """Records one delivery; True if it is time for a ``multiple`` ack up to this one."""
        if self.started is None:
            self.start()
        self.count += 1
        self.bytes += len(body) + len(message_id or "") + len(headers or ()) + bool(redelivered)
        return self.count % self.ack_every == 0 or self.count == self.total

    @property
    def done(self) -> bool:
        return self.count >= self.total


async def _consume_aio_pika(url: str, queue: str, tally: Tally, prefetch: int) -> None:
    import aio_pika
    from aio_pika.abc import AbstractIncomingMessage

    done = asyncio.Event()
    connection = await aio_pika.connect_robust(url)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=prefetch)
    q = await channel.declare_queue(queue, passive=True)

    async def on_message(message: AbstractIncomingMessage) -> None:
        if tally.take(message.body, message.message_id, message.headers, message.redelivered):
            await message.ack(multiple=True)
            if tally.done:
                tally.finish()
                done.set()

    await q.consume(on_message, no_ack=False)
    await done.wait()
    await connection.close()


async def _consume_aiormq(url: str, queue: str, tally: Tally, prefetch: int) -> None:
    done = asyncio.Event()
    connection = await aiormq.connect(url)
    channel = await connection.channel()
    await channel.basic_qos(prefetch_count=prefetch)

    async def on_message(message: aiormq.abc.DeliveredMessage) -> None:
        props = message.header.properties
        if tally.take(message.body, props.message_id, props.headers, message.redelivered):
            assert message.delivery_tag is not None
            await channel.basic_ack(message.delivery_tag, multiple=True)
            if tally.done:
                tally.finish()
                done.set()

    await channel.basic_consume(queue, on_message, no_ack=False)
    await done.wait()
    await connection.close()


def _pika_handlers(queue: str, tally: Tally, prefetch: int, stop: Callable[[Any], None]) -> Callable[[Any], None]:
    """The callbacks both pika variants share; returns the connection's on-open callback."""

    def on_open(connection: Any) -> None:
        connection.channel(on_open_callback=on_channel)

    def on_channel(channel: Any) -> None:
        channel.basic_qos(prefetch_count=prefetch, callback=lambda _: channel.basic_consume(queue, on_message))

    def on_message(channel: Any, method: Any, properties: Any, body: bytes) -> None:
        if tally.take(body, properties.message_id, properties.headers, method.redelivered):
            channel.basic_ack(method.delivery_tag, multiple=True)
            if tally.done:
                tally.finish()
                stop(channel.connection)

    return on_open


def _consume_pika_select(url: str, queue: str, tally: Tally, prefetch: int) -> None:
    import pika

    on_open = _pika_handlers(queue, tally, prefetch, lambda connection: connection.close())
    connection = pika.SelectConnection(
        pika.URLParameters(url),
        on_open_callback=on_open,
        on_close_callback=lambda conn, _reason: conn.ioloop.stop(),
    )
    connection.ioloop.start()


async def _consume_pika_asyncio(url: str, queue: str, tally: Tally, prefetch: int) -> None:
    import pika
    from pika.adapters.asyncio_connection import AsyncioConnection

    closed = asyncio.get_running_loop().create_future()
    on_open = _pika_handlers(queue, tally, prefetch, lambda connection: connection.close())
    AsyncioConnection(
        pika.URLParameters(url),
        on_open_callback=on_open,
        on_close_callback=lambda _conn, _reason: None if closed.done() else closed.set_result(None),
        custom_ioloop=asyncio.get_running_loop(),
    )
    await closed


def client(variant: str, url: str, queue: str, args: argparse.Namespace) -> dict[str, float]:
    """Runs one variant against ``queue`` (filled beforehand for the consumers); its figures."""
    n = args.messages
    if variant == "publish-aiormq":
        return asyncio.run(_publish_aiormq(url, queue, n, args.size, args.concurrency))
    if variant == "publish-pika":
        return asyncio.run(_publish_pika(url, queue, n, args.size, args.concurrency))
    tally = Tally(n, args.ack_every)
    if variant == "consume-aio-pika":
        asyncio.run(_consume_aio_pika(url, queue, tally, args.prefetch))
    elif variant == "consume-aiormq":
        asyncio.run(_consume_aiormq(url, queue, tally, args.prefetch))
    elif variant == "consume-pika":
        asyncio.run(_consume_pika_asyncio(url, queue, tally, args.prefetch))
    elif variant == "consume-pika-select":
        _consume_pika_select(url, queue, tally, args.prefetch)
    else:
        raise SystemExit(f"unknown variant {variant!r}")
    if not tally.done:
        raise SystemExit(f"{variant}: consumed {tally.count} of {n}")
    return tally.result(n)


# -- the parent: a node, a fresh queue per run, one client process per run ------------------------------------
async def prepare(url: str, queue: str, fill: int, size: int) -> None:
    """Declares ``queue`` (quorum) and publishes ``fill`` persistent messages into it, confirmed."""
    connection = await aiormq.connect(url)
    channel = await connection.channel()
    await channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
    await connection.close()
    if fill:
        await _publish_aiormq(url, queue, fill, size, 256)
        connection = await aiormq.connect(url)
        declared = await (await connection.channel()).queue_declare(queue, passive=True)
        await connection.close()
        if declared.message_count != fill:
            raise SystemExit(f"{queue}: {declared.message_count} messages ready, expected {fill}")


def run_one(node: RabbitNode, variant: str, queue: str, args: argparse.Namespace) -> dict[str, float]:
    asyncio.run(prepare(node.amqp_url, queue, args.messages if variant.startswith("consume") else 0, args.size))
    assert node.pid is not None
    broker = CpuMeter({"rabbitmq": [node.pid]})  # the node's process group: the script, beam.smp, epmd
    broker_before = broker.group_seconds("rabbitmq")
    options = {"--messages": args.messages, "--size": args.size, "--prefetch": args.prefetch}
    options |= {"--ack-every": args.ack_every, "--concurrency": args.concurrency}
    cmd = [sys.executable, "-m", "bench.amqp_clients", *(f"{k}={v}" for k, v in options.items())]
    cmd += ["--client", variant, node.amqp_url, queue]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    broker_used = broker.group_seconds("rabbitmq") - broker_before
    if out.returncode != 0:
        raise SystemExit(f"{variant} failed ({out.returncode}): {out.stderr.strip()[-2000:]}")
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    result["broker_us_per_message"] = broker_used / args.messages * 1e6
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=5_000, help="message body bytes (a benchmark event: ~5 KB)")
    parser.add_argument("--prefetch", type=int, default=256, help="the processors' default")
    parser.add_argument("--ack-every", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=32, help="publishes in flight (wrk's ingest ceiling: 32)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--client", nargs=3, metavar=("VARIANT", "URL", "QUEUE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:  # in the child process
        variant, url, queue = args.client
        print(json.dumps(client(variant, url, queue, args)))
        return 0
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants: {sorted(unknown)}")
    with tempfile.TemporaryDirectory(prefix="switchboard-consumer-bench-") as tmp:
        node = RabbitNode(Path(tmp) / "rabbitmq", free_port(), nodename=f"amqpbench{os.getpid()}")
        node.start()
        try:
            node.wait_ready(120)
            print(f"{'round':>5} {'variant':<20} {'msgs/s':>8} {'client µs/msg':>14} {'broker µs/msg':>14}")
            for r in range(1, args.rounds + 1):
                for variant in variants:
                    res = run_one(node, variant, f"bench.amqp.{variant}.{r}", args)
                    print(
                        f"{r:>5} {variant:<20} {res['rate']:>8.0f} {res['cpu_us_per_message']:>14.1f}"
                        f" {res['broker_us_per_message']:>14.1f}",
                        flush=True,
                    )
        finally:
            node.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
