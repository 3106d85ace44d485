"""In-memory stand-ins for the processor's store Protocols (``processor_service.processor``), for tests of
its decisions; the integration and end-to-end tests run the real Cassandra."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from switchboard.model.events import (
    Commit,
    Effect,
    EventStatus,
    InboundEvent,
    OperationResult,
    Outcome,
    Prior,
    Runs,
    StoredEvent,
)


@dataclass
class MemoryEvents:
    stored: dict[str, StoredEvent] = field(default_factory=dict)  # key -> the last committed pass
    results: dict[str, list[OperationResult]] = field(default_factory=dict)  # key -> every result committed
    receipts: dict[str, list[tuple[OperationResult, str]]] = field(default_factory=dict)  # each with its receipt
    effects: list[Effect] = field(default_factory=list)
    marks: dict[tuple[str, str], int] = field(default_factory=dict)
    marked: list[str] = field(default_factory=list)  # the keys of the commits that wrote a version mark
    index: dict[str, EventStatus] = field(default_factory=dict)
    duplicates: dict[str, list[str]] = field(default_factory=dict)
    reads: int = 0
    reading: int = 0  # reads in flight
    most_reading: int = 0  # the most reads ever in flight at once

    async def _read(self) -> None:
        """Stands for a round trip: yields to the loop with the read counted as in flight."""
        self.reading += 1
        self.most_reading = max(self.most_reading, self.reading)
        await asyncio.sleep(0)
        self.reading -= 1

    async def priors(self, events: Sequence[InboundEvent]) -> dict[str, Prior]:
        self.reads += 1
        await self._read()
        return {
            e.key: Prior(s.event.receipt_id, s.status, s.attempts, s.last_error)
            for e in events
            if (s := self.stored.get(e.key)) is not None
        }

    async def runs_of(self, source: str, event_id: str, receipt_id: str) -> Runs:
        mine = [r for r, receipt in self.receipts.get(f"{source}/{event_id}", []) if receipt == receipt_id]
        return Runs(
            done=frozenset(r.operation for r in mine if r.outcome in (Outcome.OK, Outcome.SKIPPED)),
            attempts=frozenset(r.attempt for r in mine),
        )

    async def commit(
        self,
        commits: Sequence[Commit],
        *,
        duplicates: Sequence[InboundEvent] = (),
        reindex: Sequence[tuple[InboundEvent, EventStatus]] = (),
    ) -> None:
        for c in commits:
            e = c.stored.event
            self.effects.extend(c.effects)
            if c.mark_entity:
                self.marked.append(e.key)
                current = self.marks.get((e.source, e.entity_id), 0)
                self.marks[(e.source, e.entity_id)] = max(current, e.entity_version)
            self.stored[e.key] = c.stored
            self.results.setdefault(e.key, []).extend(c.stored.results)
            self.receipts.setdefault(e.key, []).extend((r, e.receipt_id) for r in c.stored.results)
            self.index[e.key] = c.stored.status
        for e in duplicates:
            self.duplicates.setdefault(e.key, []).append(e.receipt_id)
        for e, status in reindex:
            self.index[e.key] = status

    async def versions(self, keys: Collection[tuple[str, str]]) -> dict[tuple[str, str], int]:
        await self._read()
        return {k: self.marks[k] for k in keys if k in self.marks}

    def ok_runs(self, key: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.results.get(key, []):
            if r.outcome is Outcome.OK:
                out[r.operation] = out.get(r.operation, 0) + 1
        return out
