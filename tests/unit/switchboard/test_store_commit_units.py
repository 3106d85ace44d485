"""How ``EventStore.commit`` cuts its second phase into units (``switchboard.store.batches``): an event's row,
its results and its index row travel together, unless together they are larger than a batch may be."""

from __future__ import annotations

import asyncio
import os
from types import SimpleNamespace
from typing import Any

import pytest

from switchboard.model.events import Commit, EventStatus, OperationResult, Outcome, StoredEvent
from switchboard.store import events as events_module
from switchboard.store.events import EventStore
from tests.unit.factories import event

Q = SimpleNamespace(
    insert_event=SimpleNamespace(consistency_level=1),
    insert_result="insert_result",
    insert_index="insert_index",
    insert_duplicate="insert_duplicate",
)


def phases(monkeypatch: pytest.MonkeyPatch, body: bytes) -> list[list[list[Any]]]:
    written: list[list[list[Any]]] = []

    async def write_all(store: Any, units: Any, level: Any, max_units: Any = None) -> None:
        written.append([[statement for statement, _ in unit] for unit in units])

    monkeypatch.setattr(events_module, "write_all", write_all)
    session = SimpleNamespace(
        statements=SimpleNamespace(events=Q),
        cfg=SimpleNamespace(ttl_seconds=3600, bucket_seconds=3600, compress_payloads=False, batch_units=32),
    )
    store = EventStore(session, SimpleNamespace(writes=lambda *a: []))  # type: ignore[arg-type]
    e = event(body=body, entity_id="")
    results = [OperationResult("log", Outcome.OK, 1, 5, 1)]
    asyncio.run(store.commit([Commit(StoredEvent(e, EventStatus.PROCESSED, results, 2, 1))]))
    return written


def test_an_event_goes_with_its_index_row(monkeypatch: pytest.MonkeyPatch) -> None:
    _, second = phases(monkeypatch, b"{}")
    assert second == [[Q.insert_event, "insert_result", "insert_index"]]


def test_an_event_larger_than_a_batch_goes_without_its_index_row(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cassandra 3+ measures only batches of several partitions against batch_size_fail_threshold: with its
    index row (another partition) a 60 KB event was a batch it refuses for good; alone it is one partition."""
    _, second = phases(monkeypatch, os.urandom(60_000))
    assert second == [[Q.insert_event, "insert_result"], ["insert_index"]]
