"""bench/pipeline.py's reads back from Cassandra, without a stack: every page of a result."""

from __future__ import annotations

import asyncio
import collections
from typing import Any

from bench import pipeline as P

Row = collections.namedtuple("Row", "event_id rec operation outcome receipt_id finished_at")


class Pages:
    """The driver's ResultSet: iterating it fetches the next pages."""

    def __init__(self, pages: list[list[Any]]) -> None:
        self.pages = pages

    def __iter__(self) -> Any:
        for page in self.pages:
            yield from page


def test_the_bench_reads_every_page_of_a_result() -> None:
    pages = [[Row(f"e{p}", f"r:{i}", "log", "ok", "r", None) for i in range(5000)] for p in range(3)]

    class Session:
        def execute(self, stmt: Any, params: Any, timeout: float | None = None) -> Pages:
            return Pages(pages)

    class Store:
        session = Session()

        async def execute(self, stmt: Any, params: Any) -> list[Any]:  # the services' path: the first page
            return list(pages[0])

    b = P.Bench.__new__(P.Bench)
    b.store = Store()  # type: ignore[assignment]
    rows = asyncio.run(b._batched("SELECT", ["e0", "e1", "e2"], batch=50))
    assert len(rows) == 15_000
