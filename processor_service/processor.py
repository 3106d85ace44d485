"""Processor domain: claim, guard, run the operations that are not done yet, commit, decide what's next.

At-least-once delivery from the queue becomes "applied once, recorded forever":

* **Idempotency.** The first receipt of a (source, event_id) to win the store's claim (a lightweight
  transaction) is the one applied; any other receipt is recorded as a duplicate, whichever processor sees it.
  A redelivery of the winning receipt (a processor died before its ack) reads what was committed and only
  runs the operations that have no OK or SKIPPED result yet.
* **Out-of-order guard.** An event whose entity already holds a higher version is recorded as STALE and its
  operations are not run. Equal versions are applied.
* **Attempts.** A pass whose operation failed is RETRYING (the worker schedules it through a delay queue)
  until ``max_attempts``, then FAILED (the worker dead-letters it). The attempt count lives in the store, so
  it survives redeliveries and restarts.

The caller acks only after ``handle`` returned: every outcome is committed before that. The caller also
never runs two receipts of one key at the same time in this process (the queue worker orders by key).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from processor_service.operations import Registry
from switchboard.model.events import (
    Effect,
    EventStatus,
    InboundEvent,
    OperationResult,
    Outcome,
    ProcessingState,
    StoredEvent,
    now_us,
)

TERMINAL = frozenset({EventStatus.PROCESSED, EventStatus.STALE, EventStatus.FAILED})
FRESH = ProcessingState(None, 0, frozenset())


class EventStore(Protocol):
    async def claim(self, source: str, event_id: str, receipt_id: str, now_us: int) -> tuple[bool, str]: ...
    async def processing_state(self, source: str, event_id: str) -> ProcessingState: ...
    async def commit(
        self, stored: StoredEvent, effects: Sequence[Effect] = (), *, mark_entity: bool = False
    ) -> None: ...
    async def write_index(self, e: InboundEvent, status: EventStatus) -> None: ...
    async def save_duplicate(self, e: InboundEvent) -> None: ...


class EntityVersions(Protocol):
    async def version(self, source: str, entity_id: str) -> int | None: ...


class Disposition(enum.Enum):
    PROCESSED = "processed"  # every operation OK or skipped: ack
    STALE = "stale"  # older than its entity's applied version: ack
    RETRY = "retry"  # an operation failed, attempts left: schedule a retry, then ack
    FAILED = "failed"  # an operation failed on the last attempt: dead-letter, then ack
    DUPLICATE = "duplicate"  # another receipt of this key holds the claim: ack
    DONE = "done"  # this receipt was already committed in a final state (a redelivery): ack


@dataclass(frozen=True)
class Handled:
    disposition: Disposition
    attempt: int = 0
    last_error: str = ""
    applied: int = 0  # operations that ran and succeeded in this pass


class Processor:
    def __init__(self, store: EventStore, entities: EntityVersions, registry: Registry, *, max_attempts: int) -> None:
        self.store = store
        self.entities = entities
        self.registry = registry
        self.max_attempts = max_attempts

    async def handle(self, event: InboundEvent) -> Handled:
        state = FRESH
        if event.replay:
            # A replay is applied again on purpose: no claim, and every operation runs.
            previous = await self.store.processing_state(event.source, event.event_id)
            state = ProcessingState(None, previous.attempts, frozenset())
        else:
            won, holder = await self.store.claim(event.source, event.event_id, event.receipt_id, now_us())
            if holder != event.receipt_id:
                await self.store.save_duplicate(event)
                return Handled(Disposition.DUPLICATE)
            if not won:
                state = await self.store.processing_state(event.source, event.event_id)
        if state.status in TERMINAL:
            await self.store.write_index(event, state.status)  # repairs an index row lost to a crash
            return Handled(Disposition.DONE, state.attempts)
        return await self._apply(event, state)

    async def _apply(self, event: InboundEvent, state: ProcessingState) -> Handled:
        attempt = state.attempts + 1
        ops = [op for op in self.registry.matching(event) if op.name not in state.done]
        guarded = bool(event.entity_id and event.entity_version > 0)
        if guarded:
            current = await self.entities.version(event.source, event.entity_id)
            if current is not None and current > event.entity_version:
                reason = (
                    f"stale: entity {event.entity_id} is at version {current}, "
                    f"this event carries {event.entity_version}"
                )
                finished = now_us()
                skipped = [OperationResult(op.name, Outcome.SKIPPED, attempt, 0, finished, reason) for op in ops]
                stored = StoredEvent(event, EventStatus.STALE, skipped, finished, attempt, reason)
                await self.store.commit(stored)
                return Handled(Disposition.STALE, attempt, reason)

        results: list[OperationResult] = []
        effects: list[Effect] = []
        for op in ops:
            result, staged = await op.run(event, attempt)
            results.append(result)
            effects.extend(staged)
        failed = [r for r in results if r.outcome is Outcome.FAILED]
        last_error = "; ".join(f"{r.operation}: {r.error}" for r in failed)[:2000]
        if not failed:
            status, disposition = EventStatus.PROCESSED, Disposition.PROCESSED
        elif attempt < self.max_attempts:
            status, disposition = EventStatus.RETRYING, Disposition.RETRY
        else:
            status, disposition = EventStatus.FAILED, Disposition.FAILED
        stored = StoredEvent(event, status, results, now_us(), attempt, last_error)
        await self.store.commit(stored, effects, mark_entity=guarded)
        applied = sum(1 for r in results if r.outcome is Outcome.OK)
        return Handled(disposition, attempt, last_error, applied)
