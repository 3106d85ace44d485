"""The queue worker every consumer runs on (the processor now, delivery workers next).

A handler decides; the worker does the queue mechanics::

    class Handler(Protocol):
        def key(self, message: QueueMessage) -> str | None: ...      # ordering key (None: no ordering)
        async def handle(self, batch: Sequence[QueueMessage]) -> Sequence[Verdict]: ...

The worker owns, so that no handler repeats them:

* **Batches.** Up to ``max_batch`` consumed messages go to the handler at once, and up to ``concurrency``
  batches run at the same time. Messages with the same ordering key never run concurrently: a later one
  waits in the worker until the earlier one is settled (two receipts of one event, say).
* **Ack after commit.** A message is acked only after the handler returned its verdict (which the handler
  returns only once the outcome is committed) and after any copy the verdict asks for is confirmed by the
  broker. Acks go out in delivery order, many per frame (``switchboard.queue.acks``).
* **Retry and dead letters.** ``Retry`` parks a copy in the stream's delay queue (the backoff level of the
  attempt, jittered between half and all of it, or the handler's own delay), ``DeadLetter`` republishes it to
  the dead-letter queue with ``x-attempt``/``x-last-error``; both with publisher confirms, then ack. A crash
  between the copy and the ack leaves two copies: handlers must be idempotent (they are: they read what was
  committed). If the copy cannot be published, the message is returned to the queue instead.
* **Store back-off.** A handler raising ``Unavailable`` (the store is down) gets the same batch again after a
  back-off, for as long as the worker still holds its messages; if the channel closes meanwhile, the
  messages are abandoned (the broker hands them to another consumer) and never acked.
* **Drain.** ``stop()`` cancels consumption, lets running batches finish, and leaves the messages it had not
  started to the broker (unacked, they are redelivered).
* **Hooks.** ``WorkerHooks`` see every settled message with its verdict, every batch and every store retry:
  the stats line and metrics plug in there, not into handlers.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue, AbstractRobustConnection

from switchboard.backoff import Backoff, jittered
from switchboard.errors import BrokerUnavailable, Unavailable
from switchboard.queue.acks import AckTracker
from switchboard.queue.connection import DRIVER_ERRORS, connect, publish_confirmed
from switchboard.queue.message import Ack, DeadLetter, QueueMessage, Retry, Verdict
from switchboard.queue.topology import Topology

log = logging.getLogger(__name__)

STORE_BACKOFF = Backoff(0.2, 5.0)
FORWARD_CONFIRM_TIMEOUT = 5.0
# A forward that failed while the channel is up is returned to the queue after this pause (the broker is
# likely failing; an immediate redelivery would spin).
FORWARD_FAILURE_PAUSE = 1.0
MAX_ERROR_HEADER = 1000


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


@dataclass(frozen=True)
class WorkerSettings:
    prefetch: int = 256
    max_batch: int = 32
    concurrency: int = 8


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
    ) -> None:
        self.url = url
        self.topology = topology
        self.handler = handler
        self.settings = settings
        self.purpose = purpose
        self.hooks = list(hooks)
        self.rng = rng or random.Random()
        self.stopping = asyncio.Event()
        self._conn: AbstractRobustConnection | None = None
        self._forward_channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._tag: str | None = None
        self._pending: deque[QueueMessage] = deque()
        self._wakeup = asyncio.Event()
        self._active_keys: set[str] = set()
        self._running = 0  # messages in batches the handler is working on
        self._idle = asyncio.Event()
        self._idle.set()
        self._trackers: dict[int, AckTracker] = {}
        self._runners: list[asyncio.Task[None]] = []

    # -- lifecycle --------------------------------------------------------------------------------------
    async def start(self, stop: asyncio.Event | None = None) -> None:
        self._conn = await connect(self.url, purpose=self.purpose, stop=stop)
        channel = await self._conn.channel()
        await channel.set_qos(prefetch_count=self.settings.prefetch)
        self._queue = await self.topology.declare(channel)
        self._forward_channel = await self._conn.channel(publisher_confirms=True)
        self._runners = [asyncio.create_task(self._run()) for _ in range(self.settings.concurrency)]
        self._tag = await self._queue.consume(self._on_message, no_ack=False)
        log.info(
            "consuming",
            extra={
                "queue": self.topology.work_queue,
                "prefetch": self.settings.prefetch,
                "batch": self.settings.max_batch,
            },
        )

    @property
    def in_flight(self) -> int:
        """Messages held: started by the handler or waiting to be."""
        return self._running + len(self._pending)

    async def stop(self, drain_within: float = 20.0) -> bool:
        """Stops consuming, waits for running batches; True if they all finished in time."""
        self.stopping.set()
        if self._queue is not None and self._tag is not None:
            try:
                await self._queue.cancel(self._tag)
            except DRIVER_ERRORS as exc:  # the channel may already be gone; unacked messages return anyway
                log.info("cancel failed", extra={"error": repr(exc)})
            self._tag = None
        self._pending.clear()  # never started: left unacked, the broker redelivers them
        self._wakeup.set()
        try:
            await asyncio.wait_for(self._idle.wait(), drain_within)
            drained = True
        except TimeoutError:
            drained = False
        for task in self._runners:
            task.cancel()
        await asyncio.gather(*self._runners, return_exceptions=True)
        return drained

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()

    async def depths(self) -> dict[str, int]:
        """Messages ready in each queue of the topology (for the stats line and metrics)."""
        if self._conn is None:
            return {}
        channel = await self._conn.channel()
        try:
            out: dict[str, int] = {}
            for name in self.topology.queues():
                q = await channel.declare_queue(name, passive=True)
                out[name] = int(q.declaration_result.message_count or 0)
            return out
        finally:
            await channel.close()

    # -- consuming --------------------------------------------------------------------------------------
    async def _on_message(self, raw: AbstractIncomingMessage) -> None:
        tracker = self._trackers.setdefault(id(raw.channel), AckTracker(max_waiting=self.settings.prefetch // 4))
        tracker.delivered(raw.delivery_tag or 0, raw)
        message = QueueMessage(
            body=raw.body,
            message_id=raw.message_id or "",
            headers=dict(raw.headers or {}),
            redelivered=bool(raw.redelivered),
            queue=raw.routing_key or "",
            raw=raw,
        )
        self._pending.append(message)
        self._wakeup.set()

    def _take(self) -> list[QueueMessage]:
        """The next batch: pending messages in arrival order whose key is not being handled; the others stay."""
        batch: list[QueueMessage] = []
        keys: set[str] = set()
        kept: deque[QueueMessage] = deque()
        while self._pending and len(batch) < self.settings.max_batch:
            message = self._pending.popleft()
            key = self.handler.key(message)
            if key is not None and (key in self._active_keys or key in keys):
                kept.append(message)
                continue
            if key is not None:
                keys.add(key)
            batch.append(message)
        self._pending.extendleft(reversed(kept))
        self._active_keys |= keys
        return batch

    async def _run(self) -> None:
        while not self.stopping.is_set():
            batch = self._take()
            if not batch:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            self._running += len(batch)
            self._idle.clear()
            try:
                await self._process(batch)
            except Exception:  # a bug in a handler must not kill the runner; the messages are redelivered
                log.exception("batch failed; its messages are left for redelivery", extra={"size": len(batch)})
            finally:
                self._running -= len(batch)
                for message in batch:
                    key = self.handler.key(message)
                    if key is not None:
                        self._active_keys.discard(key)
                if self._running == 0:
                    self._idle.set()
                self._wakeup.set()

    def _abandoned(self, batch: Sequence[QueueMessage]) -> bool:
        """True once the messages can no longer be acked here: the broker hands them to another consumer."""
        return any(m.raw.channel.is_closed for m in batch)

    async def _process(self, batch: Sequence[QueueMessage]) -> None:
        started = time.monotonic()
        for delay in STORE_BACKOFF.delays():
            try:
                verdicts = await self.handler.handle(batch)
                break
            except Unavailable as exc:
                # Never ack before the outcome is committed: keep the messages, back off, try again.
                for hook in self.hooks:
                    hook.store_retry(exc)
                log.warning(
                    "store unavailable, retrying the batch",
                    extra={"size": len(batch), "error": exc.message, "retry_in": delay},
                )
                if self._abandoned(batch):
                    return
                await asyncio.sleep(delay)
                if self._abandoned(batch):
                    return
        assert len(verdicts) == len(batch), "one verdict per message"
        for hook in self.hooks:
            hook.batch_done(len(batch), time.monotonic() - started)
        forwarded = await asyncio.gather(*(self._forward(m, v) for m, v in zip(batch, verdicts, strict=True)))
        done = [(m, v) for (m, v), ok in zip(zip(batch, verdicts, strict=True), forwarded, strict=True) if ok]
        await self._ack([m for m, _ in done])
        for message, verdict in done:
            for hook in self.hooks:
                hook.settled(message, verdict)

    async def _ack(self, messages: Sequence[QueueMessage]) -> None:
        by_channel: dict[int, list[int]] = {}
        for m in messages:
            by_channel.setdefault(id(m.raw.channel), []).append(m.raw.delivery_tag or 0)
        for channel_id, tags in by_channel.items():
            tracker = self._trackers.get(channel_id)
            if tracker is None:
                continue
            try:
                await tracker.settle(tags)
            except DRIVER_ERRORS as exc:  # channel lost: the broker redelivers; handlers make that harmless
                log.warning("ack failed", extra={"messages": len(tags), "error": repr(exc)})
                self._trackers.pop(channel_id, None)

    # -- forwarding -------------------------------------------------------------------------------------
    async def _forward(self, message: QueueMessage, verdict: Verdict) -> bool:
        """Publishes the copy a Retry or DeadLetter asks for; False if it could not (returned to the queue)."""
        if isinstance(verdict, Ack):
            return True
        try:
            if isinstance(verdict, Retry):
                if verdict.delay_ms is None:
                    level = self.topology.level_for_attempt(verdict.attempt)
                    delay_ms = max(1, round(jittered(level, self.rng)))
                else:
                    level = self.topology.level_for_delay(verdict.delay_ms)
                    delay_ms = max(1, min(verdict.delay_ms, level))
                headers = {
                    "x-attempt": verdict.attempt,
                    "x-retry-delay-ms": delay_ms,
                    "x-last-error": verdict.error[:MAX_ERROR_HEADER],
                }
                copy = self._copy(message, headers, expiration=delay_ms / 1000)
                await self._publish(self.topology.retry_exchange, str(level), copy)
            else:
                assert isinstance(verdict, DeadLetter)
                headers = {"x-attempt": verdict.attempt, "x-last-error": verdict.error[:MAX_ERROR_HEADER]}
                await self._publish(
                    self.topology.dead_exchange, self.topology.routing_key, self._copy(message, headers)
                )
            return True
        except BrokerUnavailable as exc:
            # The outcome is committed; a redelivery resumes from it once the broker is back.
            for hook in self.hooks:
                hook.forward_failed(message, exc)
            log.warning(
                "could not forward, returning the message",
                extra={"message_id": message.message_id, "error": exc.message},
            )
            raw = message.raw
            if not raw.channel.is_closed:
                await asyncio.sleep(FORWARD_FAILURE_PAUSE)
                tracker = self._trackers.get(id(raw.channel))
                if tracker is not None:
                    tracker.forget(raw.delivery_tag or 0)
                try:
                    await raw.nack(requeue=True)
                except DRIVER_ERRORS as nack_exc:
                    log.info("nack failed", extra={"message_id": message.message_id, "error": repr(nack_exc)})
            return False

    async def _publish(self, exchange: str, routing_key: str, message: aio_pika.Message) -> None:
        channel = self._forward_channel
        if channel is None or channel.is_closed:
            raise BrokerUnavailable("message broker is not connected")
        x = await channel.get_exchange(exchange, ensure=False)
        await publish_confirmed(x, routing_key, message, FORWARD_CONFIRM_TIMEOUT)

    @staticmethod
    def _copy(message: QueueMessage, extra: dict[str, Any], **kw: Any) -> aio_pika.Message:
        """A persistent copy with the original's properties; the broker's dead-letter history dropped."""
        raw = message.raw
        headers = {k: v for k, v in message.headers.items() if not k.startswith(("x-death", "x-first-death-"))}
        headers.update(extra)
        return aio_pika.Message(
            message.body,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=raw.message_id,
            headers=headers,
            content_type=raw.content_type,
            type=raw.type,
            timestamp=raw.timestamp,
            **kw,
        )
