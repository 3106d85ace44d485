"""The processor as a queue handler: decode each message, let the ``Processor`` decide and commit, and
answer the worker with a verdict (ack, retry, dead-letter). No queue mechanics here: acking, forwarding,
ordering by key and store back-off are the worker's (``switchboard.queue.worker``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

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
}


class EventPipeline:
    def __init__(self, processor: Processor) -> None:
        self.processor = processor

    def key(self, message: QueueMessage) -> str:
        """Receipts of one event (same ``source/event_id`` message id) never run at the same time here."""
        return message.message_id

    async def handle(self, batch: Sequence[QueueMessage]) -> list[Verdict]:
        results = await asyncio.gather(*(self._one(m) for m in batch), return_exceptions=True)
        # Every pass has finished (none is left running) before a store error makes the worker retry them.
        verdicts: list[Verdict] = []
        for r in results:
            if isinstance(r, BaseException):
                raise r
            verdicts.append(r)
        return verdicts

    async def _one(self, message: QueueMessage) -> Verdict:
        try:
            event = decode_inbound(message.body)
        except InvalidRequest as exc:
            # Not ours to fix by retrying: park it in the dead-letter queue for a human.
            log.error(
                "undecodable message dead-lettered", extra={"message_id": message.message_id, "error": exc.message}
            )
            return DeadLetter(0, exc.message, outcome="undecodable")
        handled = await self.processor.handle(event)
        return verdict(event, handled)


def verdict(event: InboundEvent, handled: Handled) -> Verdict:
    """What the worker does with the message after ``handled`` was committed."""
    match handled.disposition:
        case Disposition.RETRY:
            log.info(
                "operation failed, retry scheduled",
                extra={"event": event.key, "attempt": handled.attempt, "error": handled.last_error[:300]},
            )
            return Retry(handled.attempt, handled.last_error)
        case Disposition.FAILED:
            log.error(
                "event failed after its last attempt, dead-lettered",
                extra={"event": event.key, "attempts": handled.attempt, "error": handled.last_error[:300]},
            )
            return DeadLetter(handled.attempt, handled.last_error, outcome="failed")
        case Disposition.PROCESSED | Disposition.STALE:
            return Ack(_OUTCOME[handled.disposition], (now_us() - event.received_us) / 1000)
        case _:
            return Ack(_OUTCOME[handled.disposition])
