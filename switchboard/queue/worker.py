"""The queue worker every consumer runs on (the processor now, delivery workers next).

A handler decides; the worker does the queue mechanics::

    class Handler(Protocol):
        def key(self, message: QueueMessage) -> str | None: ...      # ordering key (None: no ordering)
        async def handle(self, batch: Sequence[QueueMessage]) -> Sequence[Verdict]: ...

The worker owns, so that no handler repeats them:

* **Batches.** Up to ``max_batch`` consumed messages go to the handler at once, and up to ``concurrency``
  batches run at the same time: one dispatcher starts a batch whenever one of those slots is free and messages
  wait (idle slots cost nothing: a delivery worker has 64, and only the dispatcher wakes when a message
  arrives). With ``linger``, a batch smaller than ``max_batch`` waits until its oldest message has been here
  that long (a full batch, or ``stop()``, ends the wait): fewer, larger batches.
  Messages with the same ordering key never run concurrently: a later one waits in the worker until the
  earlier one is settled (two receipts of one event, say).
* **Ack after commit.** A message is acked only after the handler returned its verdict (which the handler
  returns only once the outcome is committed) and after any copy the verdict asks for is confirmed by the
  broker. Acks go out in delivery order, many per frame (``switchboard.queue.acks``).
* **Retry and dead letters.** ``Retry`` parks a copy in the stream's delay queue (the backoff level of the
  attempt, jittered between half and all of it, or the handler's own delay), ``DeadLetter`` republishes it to
  the dead-letter queue with ``x-attempt``/``x-last-error``; both with publisher confirms, then ack. A crash
  between the copy and the ack leaves two copies: handlers must be idempotent (they are: they read what was
  committed). If the copy cannot be published, the message is returned to the queue instead.
* **Redeliveries wait.** With ``redelivery_delay``, a message the broker redelivers (its consumer died or
  lost its channel) is handed to the handler only that long after it arrived: the dead consumer may have had
  writes for it in flight, and the handler must read what they did, not race them.
* **A lost channel drops what it delivered.** When a consuming channel closes (the connection dropped, or
  missed heartbeats while the process was stopped), the broker takes its unacked messages back and hands
  them to the queue's next consumer. Those still waiting here are never started (a benchmark's three
  processors resumed after SIGSTOP ran a stale copy and its redelivery at the same moment on two
  processors), and the closed channel's ack tracker, with every message it still holds, is dropped when
  the next channel opens. A batch already started when the channel closed runs on: a handler asks
  ``QueueMessage.held`` before it commits (the processor leaves such receipts out), and ``Redeliveries
  wait`` covers a commit already in flight.
* **Store back-off.** A handler raising ``Unavailable`` (the store is down) gets the same batch again after a
  back-off, for as long as the worker still holds its messages; if the channel closes meanwhile, the
  messages are abandoned (the broker hands them to another consumer) and never acked.
* **Partitions.** A stream may be several single-active-consumer queues (``Topology.partitions``): the
  worker consumes each on a channel of its own, so the broker keeps one active consumer per partition and
  fails it over to a waiting one, with the unacked messages, when its process dies. With
  ``WorkerSettings.member`` set (this process's index among its peers), it subscribes first to its share
  of the partitions and, ``standby_delay`` later, to the others as a standby; when all its peers are back
  after a failure it hands the partitions it took over back (``_rebalance``).
* **Drain.** ``stop()`` starts no new batch, lets running ones finish and acks them, then closes the channels:
  the messages it had not started go back to the broker unacked (see ``stop`` for why it does not cancel).
* **Hooks.** ``WorkerHooks`` see every settled message with its verdict, every batch and every store retry:
  the stats line and metrics plug in there, not into handlers.
* **Connection.** The worker consumes on pika's ``AsyncioConnection`` (``switchboard.queue.amqp``): a delivery
  is a plain callback on the event loop that queues a ``QueueMessage``, an ack a frame written at once, ~20 µs
  of CPU per message where aio-pika took ~75 (docs/benchmarks.md). When the connection is lost, every channel on
  it is closed (what they delivered is the broker's again), and a task declares the topology again,
  reconnects with back-off, joins the members queue and subscribes every queue it consumed before. Copies
  (retries, dead letters) are published on a second connection: during a resource alarm the broker stops
  reading from a connection that publishes, and on the consuming one that held back every ack with it (the
  acks are what drain the queues). While the broker blocks that connection the message is held and its copy
  published once the alarm ends (acks go on meanwhile). Either connection lost, both are closed and reopened
  together.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections import deque
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import pika
from pika.adapters.asyncio_connection import AsyncioConnection

from switchboard.backoff import Backoff, jittered
from switchboard.errors import BrokerUnavailable, Unavailable
from switchboard.queue.acks import AckTracker
from switchboard.queue.amqp import (
    PIKA_ERRORS,
    Channel,
    ConfirmingChannel,
    close_and_wait,
    close_connection,
    declare,
    open_connection,
    reconnect,
)
from switchboard.queue.connection import not_sent, with_backoff
from switchboard.queue.message import DEAD_AGAIN_HEADER, Ack, DeadLetter, QueueMessage, Retry, Verdict
from switchboard.queue.topology import Topology

log = logging.getLogger(__name__)

STORE_BACKOFF = Backoff(0.2, 5.0)
FORWARD_CONFIRM_TIMEOUT = 5.0
# A forward that failed while the channel is up is returned to the queue after this pause (the broker is
# likely failing; an immediate redelivery would spin).
FORWARD_FAILURE_PAUSE = 1.0
# How often a copy held during a resource alarm looks whether the broker unblocked publishing.
BLOCKED_POLL_SECONDS = 0.5
MAX_ERROR_HEADER = 1000
# A message that made the handler raise goes back to its queue this long after, where nothing else takes it
# (WorkerSettings.crash_attempts 0).
CRASH_RETURN_PAUSE = 5.0
# The verdicts' outcome for a message that made the handler raise, and the header that counts those times.
CRASHED = "crashed"
CRASH_HEADER = "x-crash-attempt"


class Handler(Protocol):
    def key(self, message: QueueMessage) -> str | None: ...

    async def handle(self, batch: Sequence[QueueMessage]) -> Sequence[Verdict]: ...


class WorkerHooks:
    """Observers of the worker; override what you need."""

    def settled(self, message: QueueMessage, verdict: Verdict) -> None:
        """``message`` was acked after ``verdict`` (and its copy, if any, confirmed)."""

    def batch_done(self, size: int, seconds: float) -> None:
        """The handler returned verdicts for a batch of ``size`` after ``seconds``."""

    def store_retry(self, error: Unavailable) -> None:
        """The handler raised ``error``; the batch is tried again after a back-off."""

    def forward_failed(self, message: QueueMessage, error: BrokerUnavailable) -> None:
        """The retry or dead-letter copy could not be published; the message was returned to the queue."""

    def forwarded(self, message: QueueMessage, verdict: Verdict) -> None:
        """The copy a Retry or DeadLetter asked for is confirmed; ``message`` is not acked yet."""


@dataclass(frozen=True)
class WorkerSettings:
    # Unacked messages per work queue (each partition has its own window).
    prefetch: int = 256
    max_batch: int = 32
    # Batches handled at the same time.
    concurrency: int = 8
    # This consumer's index among its peers, for the partition preference; None: no preference.
    member: int | None = None
    standby_delay: float = 2.0
    rebalance_interval: float = 5.0
    # Seconds of silence after which the broker drops the connection (and fails its partitions over).
    heartbeat: int = 10
    # A redelivered message waits this long before the handler sees it: long enough for the writes a dead
    # consumer had in flight for it to land or time out, so that the handler reads what they did.
    redelivery_delay: float = 0.0
    # Seconds a batch smaller than ``max_batch`` waits for company, counted from the arrival of the oldest
    # message waiting; 0: a batch starts with whatever is there.
    linger: float = 0.0
    # A batch whose handling raises (a bug or a value nothing will take; not an outage) is handled again one
    # message at a time, in order, so that the others go on; a message that raises on its own goes back
    # through the delay queues (Retry, counted in its ``x-crash-attempt`` header, its ``x-attempt`` left to
    # the handler) until it raised this many times, then to the dead letters (``crashed``).
    # 0: neither: such a message returns to its queue ``CRASH_RETURN_PAUSE`` later (nack, requeue), for a
    # worker of a stream's dead letters, whose retries and dead letters would go back where they came from.
    crash_attempts: int = 5


def crash_count(message: QueueMessage) -> int:
    """How many times the message made the handler raise before (its ``x-crash-attempt`` header)."""
    value = message.headers.get(CRASH_HEADER, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("worker task failed", exc_info=task.exception())


@dataclass(slots=True, eq=False)
class _Delivery:
    """The driver's side of a ``QueueMessage``: where it came from and how to ack it (``QueueMessage.raw``)."""

    channel: Channel
    tracker: AckTracker
    tag: int
    properties: pika.BasicProperties

    @property
    def held(self) -> bool:
        """Its channel is open: this consumer can still ack it (see ``QueueMessage.held``)."""
        return self.channel.is_open


# The longest a partition handed over that keeps coming back is kept before it is handed over again (seconds).
HAND_OVER_HOLD = 300.0


class _Subscription:
    """One work queue consumed on a channel of its own."""

    def __init__(self, queue: str) -> None:
        self.queue = queue
        self.wanted = False  # subscribed (again after a reconnect) until released by stop
        self.channel: Channel | None = None
        self.tracker: AckTracker | None = None  # the acks of the current channel
        self.leaving = False  # handing the queue over: take no new message from it
        self.delivered = 0  # messages received since the last rebalance check
        self.handed_over = -math.inf  # when this consumer last handed the queue over (monotonic)
        self.hand_overs = 0  # hand-overs since it was last quiet or the members changed (``_rebalance``)
        self.hand_over_members = 0  # how many members the stream had at the last hand-over
        self.running = 0  # its messages in batches the handler is working on
        self.idle = asyncio.Event()  # set while running == 0
        self.idle.set()
        self.lock = asyncio.Lock()  # one subscribe or release at a time


class QueueWorker:
    def __init__(
        self,
        url: str,
        topology: Topology,
        handler: Handler,
        settings: WorkerSettings,
        *,
        purpose: str,
        hooks: Sequence[WorkerHooks] = (),
        rng: random.Random | None = None,
        queues: Sequence[str] | None = None,
    ) -> None:
        """``queues``: consume these queues of the topology instead of its work queues (the dead-letter
        queue, for the recorder that writes dead letters to the store)."""
        self.url = url
        self.topology = topology
        self.handler = handler
        self.settings = settings
        self.purpose = purpose
        self.hooks = list(hooks)
        self.rng = rng or random.Random()
        self.stopping = asyncio.Event()
        self._stop: asyncio.Event | None = None  # the service's: set, it ends a wait for the broker
        self._closing = False
        self._live: AsyncioConnection | None = None  # consuming
        self._live_forwarding: AsyncioConnection | None = None  # publishing the copies, opened with _live
        self._forwarding: ConfirmingChannel | None = None  # the channel copies are published on
        self._forwarding_blocked = False  # the broker blocked _live_forwarding (a resource alarm)
        self._unblocked = asyncio.Event()  # set while not _forwarding_blocked
        self._unblocked.set()
        self._reconnecting: asyncio.Task[None] | None = None
        self._subs = {name: _Subscription(name) for name in (queues or topology.work_queues)}
        # Consuming a partitioned stream's partitions: join its members, prefer a share, hand over.
        self._partitions = topology.partitioned and list(self._subs) == topology.work_queues
        self._pending: deque[QueueMessage] = deque()
        self._wakeup = asyncio.Event()
        self._full = asyncio.Event()  # set when a batch's worth waits (or on stop): the linger ends early
        self._active_keys: set[str] = set()
        self._running = 0  # messages in batches the handler is working on
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: list[asyncio.Task[None]] = []
        self._batches: set[asyncio.Task[None]] = set()  # running batches, for stop() to cancel
        self._held: set[asyncio.Task[None]] = set()  # messages held through a resource alarm (_after_alarm)
        self._slots_taken = 0  # batches started and not finished (at most ``concurrency``)

    # -- lifecycle --------------------------------------------------------------------------------------
    async def start(self, stop: asyncio.Event | None = None) -> None:
        """Declares the topology and connects, waiting (with back-off) until the broker answers or ``stop`` is
        set (``BrokerUnavailable``); then consumes this worker's share of the queues."""
        self._stop = stop
        await declare(self.url, self.topology, purpose=self.purpose, stop=stop)
        opened = await with_backoff(
            self._connect, purpose=self.purpose, stopped=self._stopped, retry_on=(TimeoutError, BrokerUnavailable)
        )
        if opened is None:
            raise BrokerUnavailable("stopped while waiting for RabbitMQ")
        log.info("connected to RabbitMQ", extra={"purpose": self.purpose, "attempt": opened[1]})
        members = await self._members() if self._partitions else 1
        if members > 1 and self.settings.member is None:
            log.warning(
                "no member index beside other consumers of a partitioned stream: this one takes whatever "
                "partition it can and never hands one back (start each with --member N, its index)",
                extra={"stream": self.topology.name, "members": members},
            )
        self._tasks = [self._background(self._dispatch())]
        preferred = self.preferred(members)
        for sub in self._subs.values():
            if sub.queue in preferred:
                try:
                    await self._subscribe(sub)
                except BrokerUnavailable as exc:  # the connection went meanwhile: the reconnect subscribes it
                    log.warning("could not subscribe", extra={"queue": sub.queue, "error": exc.message})
        if len(preferred) < len(self._subs):
            self._tasks.append(self._background(self._subscribe_standby(preferred)))
        if self.settings.member is not None and self._partitions:
            self._tasks.append(self._background(self._rebalance_forever()))
        log.info(
            "consuming",
            extra={
                "queues": sorted(preferred),
                "standby_for": sorted(set(self._subs) - preferred),
                "prefetch": self.settings.prefetch,
                "batch": self.settings.max_batch,
            },
        )

    async def _connect(self) -> None:
        """One attempt: a connection, the channel that forwards copies (confirm mode), membership of the stream,
        and every queue subscribed before (after a reconnect). Raises ``BrokerUnavailable`` or ``TimeoutError``."""
        connection = await open_connection(
            self.url, purpose=self.purpose, on_closed=self._on_closed, heartbeat=self.settings.heartbeat
        )
        forwarding: AsyncioConnection | None = None
        try:
            forwarding = await open_connection(
                self.url,
                purpose=f"{self.purpose}-forward",
                on_closed=self._on_closed,
                heartbeat=self.settings.heartbeat,
                on_blocked=self._set_forwarding_blocked,
            )
            self._set_forwarding_blocked(False)
            self._forwarding = await ConfirmingChannel.open(
                forwarding, lambda reason: self._channel_lost(connection, "forwarding", reason)
            )
            if self._partitions:
                await self._join(connection)
            # Until every queue wanted is consumed on it, the connection is not live: should this fail, it is
            # closed, and no queue stays consumed on a connection the worker no longer watches. The list is
            # taken again after each round: a standby subscription may have been wanted meanwhile.
            while lacking := [s for s in self._subs.values() if s.wanted and not (s.channel and s.channel.is_open)]:
                for sub in lacking:
                    await self._subscribe(sub, connection)
        except BaseException:
            await close_and_wait(connection)
            if forwarding is not None:
                await close_and_wait(forwarding)
            raise
        self._live, self._live_forwarding = connection, forwarding

    def _set_forwarding_blocked(self, blocked: bool) -> None:
        if blocked != self._forwarding_blocked:
            what = "the broker blocks forwarding (a resource alarm)" if blocked else "the broker unblocked forwarding"
            log.warning(what, extra={"purpose": self.purpose})
        self._forwarding_blocked = blocked
        if blocked:
            self._unblocked.clear()
        else:
            self._unblocked.set()

    def _on_closed(self, connection: AsyncioConnection, reason: BaseException) -> None:
        """A connection closed. Only the live pair matters (an attempt that failed is retried by whoever made
        it): the other of the two is closed too, their channels with them (their unacked messages are the
        broker's again) and, unless the worker is closing or stopping, a task reconnects and subscribes again."""
        if connection is self._live_forwarding:
            self._live_forwarding = None
            close_connection(self._live)  # its own close starts the reconnect
            return
        if connection is not self._live:
            return
        self._live = None
        forwarding, self._live_forwarding = self._live_forwarding, None
        close_connection(forwarding)
        if self._closing or self.stopping.is_set():
            return
        log.warning("lost the connection to RabbitMQ", extra={"purpose": self.purpose, "error": repr(reason)})
        self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())
        self._reconnecting.add_done_callback(_log_failure)

    def _channel_lost(self, connection: AsyncioConnection, what: str, reason: BaseException) -> None:
        """The broker closed one of the worker's channels on a connection that lives on (a 404 on a forward to
        an exchange deleted under it, a precondition failure), cancelled a consumer (its queue deleted), or a
        queue could not be subscribed on it: the connection is closed too, so that the reconnect declares the
        topology again and opens every channel afresh, with its back-off, as after a lost connection. Not
        called for the channels the worker closes itself."""
        if self._closing or connection.is_closed or connection.is_closing:
            return
        log.warning(
            "lost a channel or a consumer; reconnecting",
            extra={"purpose": self.purpose, "channel": what, "error": repr(reason)},
        )
        close_connection(connection)

    async def _reconnect(self) -> None:
        """Declares the topology again and reconnects, with back-off, until that succeeds or the worker
        closes."""
        await reconnect(
            self.url, self.topology, purpose=self.purpose, reopen=self._connect, stop=self._stop, stopped=self._stopped
        )

    def _stopped(self) -> bool:
        return self._closing or self.stopping.is_set() or (self._stop is not None and self._stop.is_set())

    def _background(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(work)
        task.add_done_callback(_log_failure)
        return task

    async def _join(self, connection: AsyncioConnection) -> None:
        """Consumes the stream's members queue (presence only: nothing is ever published there; should a
        message arrive, it is dropped unacked-free with ``auto_ack``)."""
        channel = await Channel.open(connection, lambda reason: self._channel_lost(connection, "members", reason))
        await channel.call(channel.channel.queue_declare, self.topology.members_queue, passive=True)
        await channel.call(channel.channel.basic_consume, self.topology.members_queue, lambda *_: None, auto_ack=True)

    async def _members(self) -> int:
        """How many consumers are members of the stream now, this one included."""
        ((_, members),) = (await self._declared([self.topology.members_queue])).values()
        return max(members, 1)

    def preferred(self, members: int) -> set[str]:
        """The work queues this consumer subscribes to first: every ``members``-th partition from its own
        index (all of them without an index)."""
        member = self.settings.member
        if member is None or members <= 1:
            return set(self._subs)
        return {q for i, q in enumerate(self._subs) if i % members == member % members}

    async def _subscribe(self, sub: _Subscription, connection: AsyncioConnection | None = None) -> None:
        """Consumes ``sub``'s queue on a new channel of ``connection`` (the live one by default), with a new ack
        tracker: what the previous channel delivered and did not ack is the broker's again. Raises
        ``BrokerUnavailable`` if it cannot; the queue is wanted, so the reconnect subscribes it (on the live
        connection, a failure closes it, so that the reconnect, with its back-off, does)."""
        sub.wanted = True
        async with sub.lock:
            if connection is None:
                live = self._live
                if live is None:
                    raise BrokerUnavailable("message broker is not connected")
                try:
                    await self._open_subscription(sub, live)
                except BrokerUnavailable as exc:
                    self._channel_lost(live, sub.queue, exc)
                    raise
            else:
                await self._open_subscription(sub, connection)

    async def _open_subscription(self, sub: _Subscription, connection: AsyncioConnection) -> None:
        """``_subscribe``'s work, under ``sub.lock``."""
        if sub.channel is not None and sub.channel.is_open:
            return
        channel = await Channel.open(connection)
        channel.on_close = lambda reason: (
            self._channel_lost(connection, sub.queue, reason) if sub.channel is channel else None
        )
        # The broker cancels the consumer when the queue is deleted under it; the channel stays open, idle.
        channel.channel.add_on_cancel_callback(
            lambda _frame: (
                self._channel_lost(connection, sub.queue, BrokerUnavailable("the broker cancelled the consumer"))
                if sub.channel is channel
                else None
            )
        )
        await channel.call(channel.channel.basic_qos, prefetch_count=self.settings.prefetch)
        tracker = AckTracker(channel.channel, max_waiting=self.settings.prefetch // 4)
        sub.channel, sub.tracker, sub.leaving = channel, tracker, False
        tag = f"{self.purpose}.{sub.queue}.{self.rng.getrandbits(32):08x}"
        await channel.call(
            channel.channel.basic_consume,
            sub.queue,
            self._consumer(sub, channel, tracker),
            consumer_tag=tag,
        )

    async def _subscribe_standby(self, preferred: set[str]) -> None:
        await asyncio.sleep(self.settings.standby_delay)
        for sub in self._subs.values():
            if sub.queue not in preferred and sub.channel is None and not self.stopping.is_set():
                try:
                    await self._subscribe(sub)
                except BrokerUnavailable as exc:  # wanted now: the reconnect subscribes it
                    log.warning("could not subscribe as a standby", extra={"queue": sub.queue, "error": exc.message})

    @property
    def in_flight(self) -> int:
        """Messages held: started by the handler or waiting to be."""
        return self._running + len(self._pending) + len(self._held)

    @property
    def running(self) -> int:
        """Messages in batches the handler is working on."""
        return self._running

    async def stop(self, drain_within: float = 20.0) -> bool:
        """Stops starting batches, waits until the running ones are committed and acked, then closes the
        consuming channels: messages held but never started go back to the head of their queue, in order, for
        another consumer. True if every running batch finished in time.

        Consumption is not cancelled first on purpose: on a single-active-consumer queue a cancel makes the
        next consumer active at once, while this one still holds messages of the same keys.
        """
        self.stopping.set()
        self._wakeup.set()
        self._full.set()
        try:
            await asyncio.wait_for(self._idle.wait(), drain_within)
            drained = True
        except TimeoutError:
            drained = False
        tasks = [*self._tasks, *self._batches, *self._held]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for sub in self._subs.values():
            sub.wanted = False
            await self._release(sub)
        self._pending.clear()
        return drained

    async def _release(self, sub: _Subscription) -> None:
        """Acks what was settled on the queue's channel, then closes it: its unstarted messages return."""
        async with sub.lock:
            channel, sub.channel = sub.channel, None
            tracker, sub.tracker = sub.tracker, None
            if channel is None:
                return
            sub.leaving = True  # from now on its deliveries are not taken (see _consumer)
            try:
                if tracker is not None and channel.is_open:
                    tracker.flush()
            except PIKA_ERRORS as exc:  # already gone: the broker returns its messages anyway
                log.info("acking on a closing channel failed", extra={"queue": sub.queue, "error": repr(exc)})
            await channel.close()
            self._pending = deque(m for m in self._pending if m.raw is None or m.raw.channel is not channel)

    async def close(self) -> None:
        self._closing = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        for connection in (self._live, self._live_forwarding):
            if connection is not None:
                await close_and_wait(connection)

    async def depths(self) -> dict[str, int]:
        """Messages ready in each queue of the topology (for the stats line and metrics)."""
        return {name: ready for name, (ready, _) in (await self._declared()).items()}

    async def _declared(self, names: Sequence[str] | None = None) -> dict[str, tuple[int, int]]:
        """(ready messages, consumers) of each queue, from a passive declare; ``BrokerUnavailable`` while the
        broker is not connected."""
        if self._live is None:
            raise BrokerUnavailable("message broker is not connected")
        channel = await Channel.open(self._live)
        try:
            out: dict[str, tuple[int, int]] = {}
            for name in names or self.topology.queues():
                method = (await channel.call(channel.channel.queue_declare, name, passive=True)).method
                out[name] = (int(method.message_count or 0), int(method.consumer_count or 0))
            return out
        finally:
            await channel.close()

    # -- rebalancing ------------------------------------------------------------------------------------
    async def _rebalance_forever(self) -> None:
        while not self.stopping.is_set():
            await asyncio.sleep(self.settings.rebalance_interval)
            try:
                await self._rebalance()
            except BrokerUnavailable as exc:
                log.info("rebalance check failed", extra={"error": repr(exc)})

    async def _rebalance(self) -> None:
        """Hands back one partition this consumer is active on but another member prefers (members counted on
        the stream's members queue). One that came back after a hand-over waits twice as long as before for
        the next (from two rebalance intervals up to ``HAND_OVER_HOLD``; afresh once it has not been handed
        over for twice that, or as soon as the number of members changed: a member joined or left): being
        back means no member that prefers it was waiting (member indices with a gap, say 0 and 2 of three with
        1 down, prefer the same share). Handed over every few seconds, under load, a partition returned its
        prefetched messages each time, and a return counts against the queue's delivery limit."""
        busy = [sub for sub in self._subs.values() if sub.delivered and sub.channel is not None]
        for sub in self._subs.values():
            sub.delivered = 0
        if not busy:
            return
        members = await self._members()
        mine = self.preferred(members)
        now = time.monotonic()
        for sub in busy:
            if sub.queue in mine or self.stopping.is_set():
                continue
            if now - sub.handed_over > 2 * HAND_OVER_HOLD or members != sub.hand_over_members:
                sub.hand_overs = 0
            wait = min(HAND_OVER_HOLD, self.settings.rebalance_interval * 2**sub.hand_overs) if sub.hand_overs else 0
            if now - sub.handed_over < wait:
                continue
            sub.hand_overs += 1
            sub.handed_over, sub.hand_over_members = now, members
            await self._hand_over(sub)
            return

    async def _hand_over(self, sub: _Subscription) -> None:
        """Lets the next waiting consumer take ``sub``'s queue: finish what was started from it, ack, close the
        channel (unstarted messages return to the head of the queue), then wait in line again."""
        log.info("handing a partition over", extra={"queue": sub.queue})
        sub.leaving = True
        await sub.idle.wait()
        await self._release(sub)
        await self._subscribe(sub)

    # -- consuming --------------------------------------------------------------------------------------
    @property
    def unacked(self) -> int:
        """Deliveries received on open channels and not acked yet (started, waiting, or settled and waiting
        for an earlier one)."""
        return sum(
            len(sub.tracker)
            for sub in self._subs.values()
            if sub.tracker is not None and sub.channel is not None and sub.channel.is_open
        )

    def _consumer(self, sub: _Subscription, channel: Channel, tracker: AckTracker) -> Any:
        """pika's delivery callback for ``sub``'s queue on ``channel``: wraps each delivery in a
        ``QueueMessage`` and queues it for the runners (on the event loop, from the socket's read callback)."""
        loop = asyncio.get_running_loop()
        max_batch = self.settings.max_batch
        redelivery_delay = self.settings.redelivery_delay

        def on_message(_channel: Any, method: Any, properties: pika.BasicProperties, body: bytes) -> None:
            if sub.leaving or sub.channel is not channel:
                # Delivered to a subscription being closed (a hand-over): the broker gets it back unacked with
                # the channel and gives it to the partition's next consumer. Starting it here would run it twice.
                return
            tag = method.delivery_tag
            tracker.delivered(tag)
            sub.delivered += 1
            now = time.monotonic()
            message = QueueMessage(
                body=body,
                message_id=properties.message_id or "",
                headers=properties.headers or {},
                redelivered=bool(method.redelivered),
                queue=sub.queue,
                type=properties.type or "",
                raw=_Delivery(channel, tracker, tag, properties),
                arrived=now,
            )
            if message.redelivered and redelivery_delay > 0:
                message.not_before = now + redelivery_delay
                loop.call_later(redelivery_delay, self._wakeup.set)
            self._pending.append(message)
            self._wakeup.set()
            if len(self._pending) >= max_batch:
                self._full.set()

        return on_message

    def _take(self) -> list[QueueMessage]:
        """The next batch: pending messages in arrival order whose key is not being handled, whose queue is not
        being handed over and whose redelivery delay is over; the others stay (and so do later messages of
        their keys). Messages whose channel has closed are dropped: they are the broker's again."""
        batch: list[QueueMessage] = []
        keys: set[str] = set()
        held: set[str] = set()
        kept: deque[QueueMessage] = deque()
        now = time.monotonic()
        dropped = 0
        while self._pending and len(batch) < self.settings.max_batch:
            message = self._pending.popleft()
            if not message.held:
                # Its channel closed before it was started (connection lost, heartbeats missed): the broker
                # has it back and gives it to the partition's next consumer. Started here, it would run twice.
                dropped += 1
                continue
            key = self.handler.key(message)
            sub = self._subs.get(message.queue)
            if (
                (key is not None and (key in self._active_keys or key in keys or key in held))
                or (sub is not None and sub.leaving)
                or message.not_before > now
            ):
                kept.append(message)
                if key is not None:
                    held.add(key)
                continue
            if key is not None:
                keys.add(key)
            batch.append(message)
        self._pending.extendleft(reversed(kept))
        self._active_keys |= keys
        if dropped:
            log.info("dropped messages whose channel closed before they started", extra={"dropped": dropped})
        return batch

    async def _linger(self) -> None:
        """Waits until the oldest pending message is ``linger`` old, a batch's worth is pending, or the worker
        stops (returns at once when nothing or a full batch is pending)."""
        pending = self._pending
        if not pending or len(pending) >= self.settings.max_batch or self.stopping.is_set():
            return
        wait = pending[0].arrived + self.settings.linger - time.monotonic()
        if wait <= 0:
            return
        self._full.clear()
        timer = asyncio.get_running_loop().call_later(wait, self._full.set)
        try:
            await self._full.wait()
        finally:
            timer.cancel()

    async def _dispatch(self) -> None:
        """Starts a batch whenever a slot is free and messages wait (woken by arrivals and by finished batches)."""
        loop = asyncio.get_running_loop()
        while not self.stopping.is_set():
            if self._slots_taken >= self.settings.concurrency:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self.settings.linger > 0:
                await self._linger()
                if self.stopping.is_set():
                    break
            batch = self._take()
            if not batch:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            self._started(batch, +1)
            self._slots_taken += 1
            task = loop.create_task(self._run(batch))
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

    async def _run(self, batch: list[QueueMessage]) -> None:
        try:
            await self._process(batch)
        except Exception:  # a bug must not kill the worker; the messages are redelivered once the channel closes
            log.exception("batch failed; its messages are left for redelivery", extra={"size": len(batch)})
        finally:
            self._slots_taken -= 1
            self._started(batch, -1)
            for message in batch:
                key = self.handler.key(message)
                if key is not None:
                    self._active_keys.discard(key)
            self._wakeup.set()

    def _started(self, batch: Sequence[QueueMessage], sign: int) -> None:
        self._running += sign * len(batch)
        for m in batch:
            sub = self._subs.get(m.queue)
            if sub is not None:
                sub.running += sign
                if sub.running == 0:
                    sub.idle.set()
                else:
                    sub.idle.clear()
        if self._running == 0:
            self._idle.set()
        else:
            self._idle.clear()

    async def _process(self, batch: Sequence[QueueMessage]) -> None:
        """Handles ``batch`` until the handler returns its verdicts, then forwards and acks. After a store
        outage's pause the batch is tried again with the messages still held only: one channel closed (a
        batch mixes partitions, each on a channel of its own) leaves the others to be settled here, not
        held unacked, blocking their channel's acks, until that channel closes too."""
        started = time.monotonic()
        for delay in STORE_BACKOFF.delays():
            try:
                verdicts = await self._handle(batch)
                break
            except Unavailable as exc:
                # Never ack before the outcome is committed: keep the messages, back off, try again.
                for hook in self.hooks:
                    hook.store_retry(exc)
                log.warning(
                    "store unavailable, retrying the batch",
                    extra={"size": len(batch), "error": exc.message, "retry_in": delay},
                )
                await asyncio.sleep(delay)
                batch = [m for m in batch if m.held]  # the others are the broker's again
                if not batch:
                    return
            except Exception as exc:
                if not any(m.held for m in batch):
                    raise
                if len(batch) > 1:  # one of them may be what it cannot handle: each alone, the others go on
                    log.exception("batch failed; handling its messages one at a time", extra={"size": len(batch)})
                    await self._one_at_a_time(batch)
                    return
                if self.settings.crash_attempts <= 0:
                    self._return_later(batch[0], exc)
                    return
                verdicts = [self._crashed(batch[0], exc)]
                break
        assert len(verdicts) == len(batch), "one verdict per message"
        for hook in self.hooks:
            hook.batch_done(len(batch), time.monotonic() - started)
        pairs = list(zip(batch, verdicts, strict=True))
        # The acks first: they wait for no copy's confirm.
        self._settle([(m, v) for m, v in pairs if isinstance(v, Ack)])
        copies = [(m, v) for m, v in pairs if not isinstance(v, Ack)]
        if copies:
            forwarded = await asyncio.gather(*(self._forward(m, v) for m, v in copies))
            self._settle([pair for pair, ok in zip(copies, forwarded, strict=True) if ok])  # None: held

    async def _handle(self, batch: Sequence[QueueMessage]) -> Sequence[Verdict]:
        """The handler's verdicts. A ``CancelledError`` the handler raises while this task is not being
        cancelled (leaked from code it calls) is its failure, handled as any exception: let through, it ended
        the batch's task with its messages held unacked until the channel closed, and nothing logged."""
        try:
            return await self.handler.handle(batch)
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            raise RuntimeError("the handler raised CancelledError without being cancelled") from exc

    def _settle(self, done: Sequence[tuple[QueueMessage, Verdict]]) -> None:
        """Acks messages whose outcome is committed and whose copy, if any, is confirmed; tells the hooks."""
        self._ack([m for m, _ in done])
        for message, verdict in done:
            for hook in self.hooks:
                hook.settled(message, verdict)

    async def _one_at_a_time(self, batch: Sequence[QueueMessage]) -> None:
        """Each message of a batch that raised, alone and in arrival order (what one settles, the next reads);
        the first failure is raised once every one of them is over: the batch's keys stay held until then."""
        failed: Exception | None = None
        for m in batch:
            if not m.held:  # its channel closed meanwhile: the broker hands it to the next consumer
                continue
            try:
                await self._process([m])
            except Exception as exc:
                failed = failed or exc
        if failed is not None:
            raise failed

    def _return_later(self, message: QueueMessage, exc: Exception) -> None:
        """A message that made the handler raise, with no retries or dead letters to send it to
        (``crash_attempts`` 0): returned to its queue ``CRASH_RETURN_PAUSE`` later. Held unacked until its
        channel closed, a few such messages filled the prefetch window and stopped the worker without a word."""
        log.error(
            "message failed the handler; returned to its queue later",
            exc_info=exc,
            extra={"message_id": message.message_id, "retry_in": CRASH_RETURN_PAUSE},
        )
        asyncio.get_running_loop().call_later(CRASH_RETURN_PAUSE, self._return, message)

    @staticmethod
    def _return(message: QueueMessage) -> None:
        """Gives ``message`` back to the broker (nack, requeue), unless its channel closed: then it has it."""
        delivery: _Delivery = message.raw
        if not delivery.held:
            return
        try:
            delivery.channel.channel.basic_nack(delivery.tag, requeue=True)
            delivery.tracker.returned(delivery.tag)
        except PIKA_ERRORS as exc:  # the channel closed: the broker has every unacked delivery of it back
            log.info("nack failed", extra={"message_id": message.message_id, "error": repr(exc)})

    def _crashed(self, message: QueueMessage, exc: Exception) -> Verdict:
        """The verdict for a message whose handling raised on its own (``WorkerSettings.crash_attempts``): its
        ``x-attempt`` stays the handler's (the processor's attempts), the crashes are counted apart."""
        crashes = crash_count(message) + 1
        error = f"the handler failed: {type(exc).__name__}: {exc}"[:MAX_ERROR_HEADER]
        last = crashes >= self.settings.crash_attempts
        log.error(
            "message failed the handler" + ("; dead-lettered" if last else "; retried later"),
            exc_info=exc,
            extra={"message_id": message.message_id, "crashes": crashes},
        )
        if last:
            return DeadLetter(message.attempt, error, outcome=CRASHED)
        delay = self.topology.level_for_attempt(crashes) if self.topology.retry_levels_ms else None
        return Retry(message.attempt, error, delay_ms=delay, outcome=CRASHED)

    def _ack(self, messages: Sequence[QueueMessage]) -> None:
        by_tracker: dict[AckTracker, list[int]] = {}
        for m in messages:
            delivery: _Delivery = m.raw
            if not delivery.held:  # its channel is gone: the broker redelivers it; handlers make that harmless
                continue
            by_tracker.setdefault(delivery.tracker, []).append(delivery.tag)
        for tracker, tags in by_tracker.items():
            try:
                tracker.settle(tags)
            except PIKA_ERRORS as exc:  # channel lost: the broker redelivers; handlers make that harmless
                log.warning("ack failed", extra={"messages": len(tags), "error": repr(exc)})

    # -- forwarding -------------------------------------------------------------------------------------
    async def _forward(self, message: QueueMessage, verdict: Verdict) -> bool | None:
        """Publishes the copy a Retry or DeadLetter asks for; True once confirmed; False if it could not
        (returned to the queue), or if the message is no longer held: its channel closed, and the broker hands
        it out again, so a copy now would make two (a delivery sent twice more, an operation run again).

        None: the broker blocks the forwarding connection (a resource alarm). The message is handed to a
        task of its own that publishes its copy once the alarm ends, then acks it (``_held``); its batch ends
        meanwhile, so the worker goes on with other messages and their acks, which are what drain the queues.
        Returned at once instead, it came straight back, failed again, and each return counted toward its
        queue's delivery limit until the broker dead-lettered it, its event or delivery left RETRYING; waited
        for in its batch, it held the batch's slot, and a processor (one batch at a time) stopped."""
        if isinstance(verdict, Ack):
            return True
        if not message.held:
            return False
        exchange, routing_key, copy = self._copy_for(message, verdict)
        try:
            await self._publish(exchange, routing_key, copy)
        except BrokerUnavailable as exc:
            if self._forwarding_blocked and message.held:
                task = self._background(self._after_alarm(message, verdict, exchange, routing_key, copy))
                self._held.add(task)
                task.add_done_callback(self._held.discard)
                return None
            await self._forward_failed(message, exc)
            return False
        for hook in self.hooks:
            hook.forwarded(message, verdict)
        return True

    async def _after_alarm(
        self,
        message: QueueMessage,
        verdict: Verdict,
        exchange: str,
        routing_key: str,
        copy: tuple[bytes, pika.BasicProperties],
    ) -> None:
        """Holds ``message`` while the broker blocks publishing, then publishes its copy and acks it; returns it
        to its queue if publishing fails otherwise (a lost connection: held no longer, nothing to do). A stop
        cancels the wait: the message goes back with its channel."""
        log.info("holding a message until the broker unblocks publishing", extra={"message_id": message.message_id})
        while True:
            while (
                self._forwarding_blocked and message.held and self._forwarding is not None and self._forwarding.is_open
            ):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._unblocked.wait(), BLOCKED_POLL_SECONDS)
            if not message.held:
                return
            try:
                await self._publish(exchange, routing_key, copy)
            except BrokerUnavailable as exc:
                if self._forwarding_blocked and message.held:
                    continue
                await self._forward_failed(message, exc)
                return
            for hook in self.hooks:
                hook.forwarded(message, verdict)
            self._settle([(message, verdict)])
            return

    async def _forward_failed(self, message: QueueMessage, exc: BrokerUnavailable) -> None:
        """The outcome is committed and the copy could not be published: the message returns to its queue after
        a pause (a redelivery resumes from the outcome once the broker is back)."""
        for hook in self.hooks:
            hook.forward_failed(message, exc)
        log.warning(
            "could not forward, returning the message",
            extra={"message_id": message.message_id, "error": exc.message},
        )
        if message.held:
            await asyncio.sleep(FORWARD_FAILURE_PAUSE)
        self._return(message)

    def _copy_for(self, message: QueueMessage, verdict: Verdict) -> tuple[str, str, tuple[bytes, pika.BasicProperties]]:
        """Where the copy a Retry or DeadLetter asks for goes (exchange, routing key), and the copy."""
        if isinstance(verdict, Retry):
            if verdict.delay_ms is None:
                level = self.topology.level_for_attempt(verdict.backoff_attempt or verdict.attempt)
                delay_ms = max(1, round(jittered(level, self.rng)))
            else:
                level = self.topology.level_for_delay(verdict.delay_ms)
                delay_ms = max(1, min(verdict.delay_ms, level))
            headers: dict[str, Any] = {
                "x-attempt": verdict.attempt,
                "x-retry-delay-ms": delay_ms,
                "x-last-error": verdict.error[:MAX_ERROR_HEADER],
            }
            if verdict.outcome == CRASHED:
                headers[CRASH_HEADER] = crash_count(message) + 1
            return self.topology.retry_exchange, str(level), self._copy(message, headers, expiration_ms=delay_ms)
        assert isinstance(verdict, DeadLetter)
        headers = {
            "x-attempt": verdict.attempt,
            "x-last-error": verdict.error[:MAX_ERROR_HEADER],
            "x-dead-reason": verdict.outcome,
            "x-dead-at": time.time_ns() // 1000,
        }
        if verdict.again:
            headers[DEAD_AGAIN_HEADER] = 1
        if verdict.outcome == CRASHED:
            headers[CRASH_HEADER] = crash_count(message) + 1
        return self.topology.dead_exchange, self.topology.routing_key, self._copy(message, headers)

    async def _publish(self, exchange: str, routing_key: str, copy: tuple[bytes, pika.BasicProperties]) -> None:
        forward = self._forwarding
        if forward is None or not forward.is_open:
            raise not_sent(exchange, "message broker is not connected")
        if self._forwarding_blocked:
            raise not_sent(exchange, "the message broker blocks publishers (a memory or disk alarm)")
        body, properties = copy
        await forward.publish_confirmed(exchange, routing_key, body, properties, FORWARD_CONFIRM_TIMEOUT)

    @staticmethod
    def _copy(
        message: QueueMessage, extra: dict[str, Any], expiration_ms: int | None = None
    ) -> tuple[bytes, pika.BasicProperties]:
        """A persistent copy with the original's properties; the broker's dead-letter history dropped."""
        original: pika.BasicProperties = message.raw.properties
        headers = {k: v for k, v in message.headers.items() if not k.startswith(("x-death", "x-first-death-"))}
        headers.update(extra)
        properties = pika.BasicProperties(
            delivery_mode=2,  # persistent
            message_id=original.message_id,
            headers=headers,
            content_type=original.content_type,
            type=original.type,
            timestamp=original.timestamp,
            expiration=None if expiration_ms is None else str(expiration_ms),
        )
        return message.body, properties
