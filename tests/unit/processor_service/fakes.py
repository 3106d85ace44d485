"""In-memory stand-ins for the processor's store Protocols (``processor_service.processor``), for tests of
its decisions; the integration and end-to-end tests run the real Cassandra."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from switchboard.model.events import (
    Effect,
    EventStatus,
    InboundEvent,
    Outcome,
    ProcessingState,
    StoredEvent,
)


@dataclass
class MemoryEvents:
    claims: dict[str, str] = field(default_factory=dict)  # key -> receipt id holding the claim
    stored: dict[str, StoredEvent] = field(default_factory=dict)  # key -> the last committed pass
    results: dict[str, list[object]] = field(default_factory=dict)  # key -> every result ever committed
    effects: list[Effect] = field(default_factory=list)
    marks: dict[tuple[str, str], int] = field(default_factory=dict)
    index: dict[str, EventStatus] = field(default_factory=dict)
    duplicates: dict[str, list[str]] = field(default_factory=dict)

    async def claim(self, source: str, event_id: str, receipt_id: str, now_us: int) -> tuple[bool, str]:
        key = f"{source}/{event_id}"
        if key in self.claims:
            return False, self.claims[key]
        self.claims[key] = receipt_id
        return True, receipt_id

    async def processing_state(self, source: str, event_id: str) -> ProcessingState:
        key = f"{source}/{event_id}"
        last = self.stored.get(key)
        done = frozenset(
            r.operation  # type: ignore[attr-defined]
            for r in self.results.get(key, [])
            if r.outcome in (Outcome.OK, Outcome.SKIPPED)  # type: ignore[attr-defined]
        )
        return ProcessingState(last.status if last else None, last.attempts if last else 0, done)

    async def commit(self, stored: StoredEvent, effects: Sequence[Effect] = (), *, mark_entity: bool = False) -> None:
        e = stored.event
        self.effects.extend(effects)
        if mark_entity:
            current = self.marks.get((e.source, e.entity_id), 0)
            self.marks[(e.source, e.entity_id)] = max(current, e.entity_version)
        self.stored[e.key] = stored
        self.results.setdefault(e.key, []).extend(stored.results)
        self.index[e.key] = stored.status

    async def write_index(self, e: InboundEvent, status: EventStatus) -> None:
        self.index[e.key] = status

    async def save_duplicate(self, e: InboundEvent) -> None:
        self.duplicates.setdefault(e.key, []).append(e.receipt_id)

    async def version(self, source: str, entity_id: str) -> int | None:
        return self.marks.get((source, entity_id))

    def ok_runs(self, key: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.results.get(key, []):
            if r.outcome is Outcome.OK:  # type: ignore[attr-defined]
                out[r.operation] = out.get(r.operation, 0) + 1  # type: ignore[attr-defined]
        return out
