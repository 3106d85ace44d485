"""Built-in operations."""

from __future__ import annotations

import logging

from switchboard.events import InboundEvent

log = logging.getLogger(__name__)


async def log_event(event: InboundEvent) -> None:
    """Logs one structured line per event (never the body: it may hold personal data)."""
    log.info(
        "event",
        extra={
            "source": event.source,
            "event_id": event.event_id,
            "event_type": event.event_type,
            "bytes": len(event.body),
            "traceparent": event.traceparent,
        },
    )
