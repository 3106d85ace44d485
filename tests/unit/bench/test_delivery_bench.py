"""bench/delivery.py without a stack: the warm-up, the wait for late duplicates, the last delivery."""

from __future__ import annotations

import asyncio
import shutil
from collections import Counter
from typing import Any

import pytest

from bench import delivery as D
from bench.pipeline import Phase, QueueDepth, bench_stack_config
from bench.receiver import Arrival


def test_the_duplicate_wait_covers_the_delivery_timeout_and_the_first_retry() -> None:
    args = D.parse_args([])
    assert args.dup_wait is None
    root, cfg = bench_stack_config(args)
    shutil.rmtree(root)
    # 10 s timeout + 5 s first retry delay at its longest (+10% jitter) + 1 s
    assert D.duplicate_wait(cfg) == pytest.approx(cfg.delivery.timeout_seconds + 5.5 + 1.0) == 16.5
    assert D.duplicate_wait(cfg, 3.0) == 3.0
    root, cfg = bench_stack_config(D.parse_args(["--set", "delivery.timeout_seconds=30"]))
    shutil.rmtree(root)
    assert D.duplicate_wait(cfg) == pytest.approx(36.5)


def test_the_warm_up_delivers_at_fan_out_1_and_the_last_round_waits_for_late_duplicates(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[Any, ...]] = []
    b = D.DeliveryBench.__new__(D.DeliveryBench)
    b.args = D.parse_args(["--fanout", "0,3"])  # the first round without subscriptions, as by default
    root, b.cfg = bench_stack_config(b.args)
    shutil.rmtree(root)
    b.store, b.depth, b.rounds, b.subscriptions = None, None, [], []
    b.stack = None  # type: ignore[assignment]

    class Depth:
        async def close(self) -> None:
            pass

    async def connect_store() -> None:
        calls.append(("connect",))

    async def run_round(
        name: str, fanout: int, rate: float, seconds: float, subs: list[tuple[str, str]] | None = None
    ) -> D.Round:
        calls.append(("round", name, fanout, subs))
        rnd = D.Round(fanout, Phase(name, "open", "open"), subs or [])
        b.rounds.append(rnd)
        return rnd

    async def sleep(seconds: float) -> None:
        calls.append(("sleep", seconds))

    async def verify() -> dict[str, Any]:
        calls.append(("verify",))
        return {}

    monkeypatch.setattr(QueueDepth, "discover", classmethod(lambda cls, stack: Depth()))
    monkeypatch.setattr(asyncio, "sleep", sleep)
    b.connect_store = connect_store  # type: ignore[method-assign]
    b.run_round = run_round  # type: ignore[method-assign]
    b.warmup_subscription = lambda: ("sub_warm", "/hooks/warmup")  # type: ignore[method-assign]

    def delete_subscription(subscription_id: str) -> None:
        calls.append(("delete", subscription_id))

    def collect() -> int:
        calls.append(("collect",))
        return 0

    b.delete_subscription = delete_subscription  # type: ignore[method-assign]
    b.print_round = lambda rnd: None  # type: ignore[method-assign]
    b.collect = collect  # type: ignore[method-assign]
    b.verify = verify  # type: ignore[method-assign]
    asyncio.run(b.run_rounds(b.args.fanouts))
    assert calls == [
        ("connect",),
        ("round", "warmup", 1, [("sub_warm", "/hooks/warmup")]),  # fan-out 1, whatever the first round's
        ("delete", "sub_warm"),  # gone before fan-out 0
        ("round", "fan0", 0, None),
        ("round", "fan3", 3, None),
        ("sleep", 16.5),
        ("collect",),
        ("verify",),
    ]
    assert [r.fanout for r in b.rounds] == [0, 3]


def test_a_late_duplicate_counts_but_does_not_move_the_last_delivery() -> None:
    b = D.DeliveryBench.__new__(D.DeliveryBench)
    b.seen, b.arrived_at, b.rounds = Counter(), {}, []
    rnd = D.Round(1, Phase("fan1", "open", "open"), [("s", "/hooks/s0")])
    rnd.expected = {"w1": ("e1", "/hooks/s0"), "w2": ("e2", "/hooks/s0")}
    b.rounds.append(rnd)

    class Receiver:
        def arrivals(self) -> list[Arrival]:
            return [
                Arrival(1.0, "/hooks/s0", "w1", 200, 10),
                Arrival(2.0, "/hooks/s0", "w2", 200, 10),
                Arrival(20.0, "/hooks/s0", "w1", 200, 10),  # sent again after a timeout and the first retry delay
            ]

    b.receiver = Receiver()  # type: ignore[assignment]
    assert b.collect() == 3
    assert rnd.delivered == 2 and rnd.duplicates == 1
    assert rnd.last_arrival == 2.0
