"""bench/pipeline.py's verification and report, without a stack: statuses, every page of a read, the two
end-to-end figures, the drain's basis."""

from __future__ import annotations

import argparse
import asyncio
import collections
from typing import Any

from bench import pipeline as P
from bench.cpu import Usage

Row = collections.namedtuple("Row", "event_id rec operation outcome receipt_id finished_at")


def bench_with_phase(ph: P.Phase) -> P.Bench:
    b = P.Bench.__new__(P.Bench)
    b.phases = [ph]
    return b


def test_events_retrying_failed_or_stale_are_counted_and_fail_the_run() -> None:
    ph = P.Phase("steady", "open 800/s", "open", 800, 60, 128, 5)
    ph.ok_ids = ["e1", "e2", "e3", "e4", "e5"]
    b = bench_with_phase(ph)
    b._q_records = None
    stored = {
        "e1": (0.0, 0.1, "processed"),
        "e2": (0.0, 0.2, "failed"),  # every pass writes processed_at: FAILED and RETRYING rows have one
        "e3": (0.0, 0.3, "retrying"),
        "e4": (0.0, 0.4, "stale"),
    }

    async def read_events(ids: list[str]) -> dict[str, Any]:
        return {i: stored[i] for i in ids if i in stored}

    async def batched(stmt: Any, ids: list[str], batch: int = 100) -> list[Any]:
        return [Row("e1", "r:log:0001:aa", "log", "ok", "r1", None)]

    b.read_events = read_events  # type: ignore[method-assign]
    b._batched = batched  # type: ignore[method-assign]
    v = asyncio.run(b.verify())
    assert v["statuses"] == {"processed": 1, "failed": 1, "retrying": 1, "stale": 1, "missing": 1}
    assert v["lost"] == 1 and v["unfinished"] == 2 and v["stale"] == 1
    assert sorted(v["unfinished_ids"]) == ["e2", "e3"]
    assert P.failures(v) == ["1 lost", "2 unfinished", "1 stale"]
    # received_at → processed_at only of the finished rows (processed, stale)
    assert sorted(ph.e2e_before_commit_ms) == [100.0, 400.0]
    v.update(lost=0, unfinished=0, stale=0)
    assert P.failures(v) == []


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


def test_the_headline_e2e_is_the_committed_histogram_and_paused_phases_have_none_in_the_json() -> None:
    ph = P.Phase("steady", "open 800/s", "open", 800, 60, 128, 3)
    ph.ok_ids = ph.sent_ids = ["a", "b", "c"]
    ph.wrk = {"answered": 3, "latency_ms": {"p50": 5.0, "p99": 9.0}}
    ph.stages = {
        "e2e": {
            "count": 3.0, "mean_ms": 140.0, "p50_ms": 120.0, "p99_ms": 290.0,
            "p50_bucket_ms": [100.0, 150.0], "p99_bucket_ms": [200.0, 300.0],
        }
    }  # fmt: skip
    ph.e2e_before_commit_ms = [20.0, 30.0, 40.0]
    b = bench_with_phase(ph)
    d = b.phase_json(ph)
    assert d["e2e_committed_ms"]["p99_ms"] == 290.0
    assert d["e2e_before_commit_ms"]["p99"] == 40.0 and d["e2e_before_commit_ms"]["n"] == 3
    assert "e2e_ms" not in d
    cells = b.row(ph).split("│")[0].split()
    assert cells[-3:-1] == ["120", "290"]  # e2e committed p50/p99, not the rows' 30/40
    line = P.e2e_line(ph)
    assert "committed" in line and "(200, 300] ms" in line and "before the commit" in line

    for kind, name in (("closed", "ingest"), ("drain", "drain")):
        paused = P.Phase(name, "x", kind)
        paused.e2e_before_commit_ms, paused.stages = [5000.0], dict(ph.stages)
        d = b.phase_json(paused)
        assert d["e2e"] == "paused"  # as the table prints
        assert not {"e2e_ms", "e2e_committed_ms", "e2e_before_commit_ms"} & set(d)
        assert paused.e2e("p99_ms") is None


def test_the_drain_counts_cpu_per_backlog_event_as_its_events_per_second() -> None:
    ingest = P.Phase("ingest", "closed 32 conn", "closed", 0, 20, 32, 1000)
    ingest.ok_ids = [f"e{i}" for i in range(100)] + [f"e{i}" for i in range(10)]  # 10 re-sends accepted

    class Meter:
        def sample(self) -> Any:
            class S:
                def minus(self, before: Any) -> Usage:
                    return Usage(10.0, {"processor": 1.0}, 2.0)

            return S()

    b = P.Bench.__new__(P.Bench)
    b.meter = Meter()  # type: ignore[assignment]
    b.after_ingest = {}
    b.args = argparse.Namespace()
    b.resume_processors = lambda: None  # type: ignore[method-assign]

    async def settle(phase: P.Phase | None, ids: list[str], before: Any = None, scraped: Any = None) -> None:
        assert phase is not None
        phase.cpu = before.minus(None)
        phase.last_processed = phase.start_wall + 1.0

    b.settle = settle  # type: ignore[method-assign]
    drain = asyncio.run(b.drain_phase(ingest))
    assert drain.backlog_receipts == 110 and len(drain.backlog_ids) == 100
    assert drain.cpu_requests == 100  # the basis of its events/s
    assert drain.rate_result == 100.0


def test_a_p99_past_the_last_bucket_is_valid_json_and_printed_as_inf() -> None:
    """Found in review: the last bucket's upper bound was float inf, which json.dumps writes as Infinity (not
    JSON); it is null now, and the e2e line prints it as inf."""
    import json

    from bench import stages

    window: Any = stages.parse(
        "# TYPE switchboard_processor_e2e_latency_seconds histogram\n"
        'switchboard_processor_e2e_latency_seconds_bucket{le="0.1"} 0\n'
        'switchboard_processor_e2e_latency_seconds_bucket{le="300.0"} 0\n'
        'switchboard_processor_e2e_latency_seconds_bucket{le="+Inf"} 10\n'
        "switchboard_processor_e2e_latency_seconds_count 10\n"
        "switchboard_processor_e2e_latency_seconds_sum 5000\n"
    )
    summary = stages.summary(window)
    e2e = summary["e2e"]
    assert e2e["p99_bucket_ms"] == [300_000.0, None]
    json.loads(json.dumps(summary, allow_nan=False))  # raises on Infinity
    ph = P.Phase("steady", "open 800/s", "open", 800, 60, 128, 3)
    ph.stages = summary
    assert "(300000, inf] ms" in P.e2e_line(ph)


def test_the_tail_line_says_in_which_seconds_the_slow_events_arrived() -> None:
    """An open phase's e2e, second by second of arrival: a stall gathers the tail in a few seconds, a saturated
    box spreads it. The JSON keeps every second's figures (``e2e_by_second``)."""
    ph = P.Phase("steady", "open 800/s", "open", 800, 60, 128, 6)
    ph.start_wall = 100.0
    ph.ok_ids = ["a", "b", "c", "d", "e", "f"]
    stored = {
        "a": (100.2, 100.21, "processed"),  # s 0: 10 ms
        "b": (100.5, 100.9, "processed"),  # s 0: 400 ms
        "c": (101.1, 101.13, "processed"),  # s 1: 30 ms
        "d": (102.0, 102.25, "processed"),  # s 2: 250 ms
        "e": (102.4, 102.7, "processed"),  # s 2: 300 ms
        "f": (102.5, 102.9, "retrying"),  # not finished: no e2e
    }
    b = bench_with_phase(ph)
    b._q_records = None

    async def read_events(ids: list[str]) -> dict[str, Any]:
        return {i: stored[i] for i in ids}

    async def batched(stmt: Any, ids: list[str], batch: int = 100) -> list[Any]:
        return []

    b.read_events = read_events  # type: ignore[method-assign]
    b._batched = batched  # type: ignore[method-assign]
    asyncio.run(b.verify())
    assert P.tail_line(ph) == (
        "tail steady: 3 events (60.0%) over 200 ms e2e before commit, received in 2 of 3 seconds;"
        " most in s 2 (2), 0 (1)"
    )
    by_second = b.phase_json(ph)["e2e_by_second"]
    assert [(r["s"], r["n"], round(r["max"])) for r in by_second] == [(0, 2, 400), (1, 1, 30), (2, 2, 300)]
