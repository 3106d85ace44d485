"""The processor as a queue handler: decode each message, let the ``Processor`` decide and commit, and
answer the worker with a verdict (ack, retry, dead-letter). No queue mechanics here: acking, forwarding,
ordering by key and store back-off are the worker's (``switchboard.queue.worker``)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from processor_service.processor import Disposition, Handled, Processor
from switchboard.errors import InvalidRequest
from switchboard.model.events import InboundEvent, now_us
from switchboard.queue import Ack, DeadLetter, QueueMessage, Retry, Verdict
from switchboard.wire import decode_inbound

log = logging.getLogger(__name__)

_OUTCOME = {
    Disposition.PROCESSED: "processed",
    Disposition.STALE: "stale",
    Disposition.DUPLICATE: "duplicate",
    Disposition.DONE: "redelivered",
    Disposition.ABANDONED: "abandoned",
}


class EventPipeline:
    def __init__(self, processor: Processor) -> None:
        self.processor = processor

    def key(self, message: QueueMessage) -> str:
        """Receipts of one event (same ``source/event_id`` message id) never run at the same time here."""
        return message.message_id

    async def handle(self, batch: Sequence[QueueMessage]) -> list[Verdict]:
        verdicts: list[Verdict | None] = [None] * len(batch)
        events: list[tuple[int, InboundEvent]] = []
        for i, message in enumerate(batch):
            try:
                events.append((i, decode_inbound(message.body)))
            except InvalidRequest as exc:
                # Not ours to fix by retrying: park it in the dead-letter queue for a human.
                log.error(
                    "undecodable message dead-lettered", extra={"message_id": message.message_id, "error": exc.message}
                )
                verdicts[i] = DeadLetter(0, exc.message, outcome="undecodable")
        while events:
            # One receipt per event at a time (the worker already orders by message id; a message whose id does
            # not match its body waits for the next round).
            keys: set[str] = set()
            now: list[tuple[int, InboundEvent]] = []
            later: list[tuple[int, InboundEvent]] = []
            for i, e in events:
                (later if e.key in keys else now).append((i, e))
                keys.add(e.key)
            handled = await self.processor.handle(
                [e for _, e in now],
                held=_held([batch[i] for i, _ in now]),
                sent_attempts=[batch[i].attempt for i, _ in now],
            )
            for (i, e), h in zip(now, handled, strict=True):
                verdicts[i] = verdict(e, h)
            events = later
        return [v for v in verdicts if v is not None]


def _held(messages: Sequence[QueueMessage]) -> Callable[[int], bool]:
    """Whether the i-th message is still this consumer's, asked by the processor right before its commit."""
    return lambda i: messages[i].held


def verdict(event: InboundEvent, handled: Handled) -> Verdict:
    """What the worker does with the message after ``handled`` was committed."""
    match handled.disposition:
        case Disposition.RETRY:
            log.info(
                "operation failed, retry scheduled",
                extra={"event": event.key, "attempt": handled.attempt, "error": handled.last_error[:300]},
            )
            return Retry(handled.attempt, handled.last_error, backoff_attempt=handled.backoff_attempt or None)
        case Disposition.BEHIND:
            log.info(
                "a copy behind its stored attempts, sent back to wait",
                extra={"event": event.key, "attempt": handled.attempt},
            )
            return Retry(handled.attempt, handled.last_error, outcome="behind")
        case Disposition.FAILED:
            log.error(
                "event failed after its last attempt, dead-lettered",
                extra={"event": event.key, "attempts": handled.attempt, "error": handled.last_error[:300]},
            )
            return DeadLetter(handled.attempt, handled.last_error, outcome="failed", again=handled.again)
        case Disposition.PROCESSED | Disposition.STALE:
            # The e2e latency times an event's first pass: a retry waited its backoff on purpose, and a replay
            # or a redrive keeps the event's arrival time (its age, days, filled the alert's p99).
            latency = (now_us() - event.received_us) / 1000 if handled.first else None
            return Ack(_OUTCOME[handled.disposition], latency)
        case _:
            return Ack(_OUTCOME[handled.disposition])
