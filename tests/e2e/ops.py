"""Operations the end-to-end tests configure (loaded by the processor from ``processor.python_path``).

They decide by event type, so the other tests' events never reach them."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

from processor_service.operations import OperationContext
from switchboard.model.events import InboundEvent

log = logging.getLogger(__name__)

FLAKY_SUCCEEDS_ON = 3


async def flaky(event: InboundEvent, ctx: OperationContext) -> None:
    """Fails the first two attempts of a ``test.flaky`` event, then succeeds."""
    if ctx.attempt < FLAKY_SUCCEEDS_ON:
        raise ConnectionError(f"downstream refused attempt {ctx.attempt}")


async def poison(event: InboundEvent) -> None:
    """Always fails: its events exhaust their attempts and are dead-lettered."""
    raise ValueError("cannot apply this event")


async def pause(event: InboundEvent) -> None:
    """Takes 300 ms, so that a processor killed mid-stream holds messages in the middle of their operations.
    Logs its start, so a test can tell which processors started an event."""
    log.info("pause started", extra={"event_id": event.event_id})
    await asyncio.sleep(0.3)


async def fail_first(event: InboundEvent, ctx: OperationContext) -> None:
    """Fails attempt 1 of a ``test.crash_after_forward`` event; later attempts succeed slowly (500 ms), so that
    two copies of its receipt handled at the same time would overlap."""
    if ctx.attempt == 1:
        raise ConnectionError("downstream refused the first attempt")
    await asyncio.sleep(0.5)


async def gated(event: InboundEvent) -> None:
    """Fails until the file named by the event's ``data.object.gate`` exists (a test opens the gate)."""
    gate = json.loads(event.body)["data"]["object"]["gate"]
    if not await asyncio.to_thread(Path(gate).exists):
        raise PermissionError("the gate is closed")
