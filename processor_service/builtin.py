"""Built-in operations."""

from __future__ import annotations

import logging

from processor_service.operations import OperationContext
from switchboard.model.events import InboundEvent

log = logging.getLogger(__name__)


async def log_event(event: InboundEvent) -> None:
    """Logs one structured line per event at DEBUG (never the body: it may hold personal data). At INFO the
    line is not written (a line per event costs more CPU than the rest of processing); the operation's
    result is recorded either way."""
    if not log.isEnabledFor(logging.DEBUG):
        return
    log.debug(
        "event",
        extra={
            "source": event.source,
            "event_id": event.event_id,
            "event_type": event.event_type,
            "bytes": len(event.body),
            "traceparent": event.traceparent,
        },
    )


async def record_entity(event: InboundEvent, ctx: OperationContext) -> None:
    """Keeps the latest state of the provider entity the event is about (invoice, payment intent, order, …)
    in the ``entities`` table: the body of the event with the highest entity version wins, whatever the
    arrival order. Skipped for events that name no entity. Read it back with ``Query.GetEntity``."""
    ctx.save_entity_state(event)
