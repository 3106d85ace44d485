"""Outbound delivery benchmark: signed ~5 KB Stripe-style events over HTTPS → Envoy → ingest → RabbitMQ →
processor (fan-out to the matching subscriptions) → the deliveries stream → delivery workers → a real HTTPS
receiver, on a stack this script starts on free ports (data in a temp dir), with the inbound load from ``wrk``
as in ``bench/pipeline.py`` and the receiver a second Envoy (``bench/receiver.py``) that answers 200 itself
and logs when each ``webhook-id`` arrived.

    make bench-delivery                                             # fan-out 0, 1, 3, 10 at 200 events/s, 30 s each
    make bench-delivery BENCH_ARGS="--fanout 1,3 --seconds 10"      # a quick look
    python -m bench.delivery --help

Rounds (``--fanout``, default ``0,1,3,10``; 0 is the baseline without subscriptions): before a round the
script creates subscriptions (``invoice.*`` of the source, one path each on the receiver) until that many
exist, then sends an open loop of ``--rate`` (200) events/s for ``--seconds`` (30) and waits until every
accepted event's deliveries arrived (it gives up when none arrived for ``--stall-seconds``). An event accepted
in a round must reach every subscription that existed during the round exactly once: its ``webhook-id`` is the
deterministic delivery id (``switchboard.delivery.ids``), so the script knows which id to expect on which
path.

With ``--slow N`` the first N subscriptions point at paths the receiver answers ``--slow-ms`` (5,000) late: a
slow endpoint beside fast ones. Each round then also prints accepted → delivered for the slow endpoints and
for the others (how much the slow ones hold the others back).

Per round: inbound accepted/s, HTTP p50/p99 (wrk, without its coordinated-omission correction) and e2e
p50/p99 (arrival at ingest → outcome committed: the processors' histogram; the rows' received_at →
processed_at, which ends before the commit, is in the JSON beside it); deliveries/s
(delivered / (last arrival - load start)); accepted → delivered latency (the event's ``received_at`` in
Cassandra → its arrival at the receiver) p50, p99 and max; the seconds from the end of the load until the last
delivery arrived; missing deliveries (expected, not arrived), duplicates (a ``webhook-id`` that arrived more
than once) and unexpected arrivals; CPU ms per accepted event per component and the platform's CPU ms per
delivery (from /proc, load start → every delivery arrived, or processing idle at fan-out 0; "platform" is
every component of the stack, without wrk, this script and the receiver). A sample of the round's deliveries
is looked up through the Subscriptions service (``ListDeliveries``): each must be DELIVERED with its attempts
recorded. Duplicates are watched for until the last round's deliveries have all arrived plus ``--dup-wait``
(by default the delivery timeout plus the first retry delay: how late a delivery sent again would come). A
warm-up (``--warmup`` s at ``--warmup-rate``) runs at fan-out 1 on a subscription of its own, deleted before
the rounds. Exit status 1 if a delivery is missing or duplicated or an accepted event was lost, applied twice,
left unfinished or STALE (as ``bench.pipeline``), 2 if the benchmark itself failed. Everything goes to
``var/bench/delivery-<date>-<git rev>.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import random
import shutil
import signal
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from webhooks.v1 import subscriptions_pb2 as pb
from webhooks.v1 import subscriptions_pb2_grpc

from bench import stages
from bench.cpu import CpuMeter, Usage
from bench.pipeline import (
    SOURCE,
    Bench,
    BenchError,
    Phase,
    QueueDepth,
    add_on_time,
    add_overrides,
    bench_stack_config,
    failures,
    git_rev,
    pct,
)
from bench.receiver import SLOW_PREFIX, ReceiverEnvoy
from switchboard.config import PlatformConfig, TracingConfig
from switchboard.delivery.ids import delivery_id
from switchboard.delivery.policy import DEFAULT_POLICY, JITTER
from switchboard_devstack.stack import Stack

REPO = Path(__file__).resolve().parent.parent
log = logging.getLogger("bench")
# The components of the platform (what a delivery costs the operator), as opposed to the load and the receiver.
PLATFORM = ("envoy", "ingest", "rabbitmq", "processor", "cassandra", "query", "control", "delivery")


@dataclass
class Round:
    fanout: int
    phase: Phase
    subscriptions: list[tuple[str, str]]  # (id, path)
    expected: dict[str, tuple[str, str]] = field(default_factory=dict)  # webhook-id -> (event id, path)
    arrived: Counter[str] = field(default_factory=Counter)  # webhook-id -> arrivals
    first_arrival: dict[str, float] = field(default_factory=dict)
    unexpected: int = 0
    non_200: int = 0
    last_arrival: float | None = None
    latency_ms: list[float] = field(default_factory=list)
    # With slow endpoints (``--slow``): the same latency for the deliveries to the slow ones and to the others.
    latency_slow_ms: list[float] = field(default_factory=list)
    latency_fast_ms: list[float] = field(default_factory=list)
    cpu: Usage | None = None
    # The delivery workers' settled tasks by outcome during the round (switchboard_delivery_deliveries_total):
    # "deferred" counts every deferral of a task (circuit open, in-flight limits), not once per delivery.
    outcomes: dict[str, float] = field(default_factory=dict)
    sample_checked: int = 0
    sample_bad: list[str] = field(default_factory=list)
    gave_up: str | None = None

    @property
    def delivered(self) -> int:
        return sum(1 for k in self.expected if k in self.arrived)

    @property
    def missing(self) -> int:
        return len(self.expected) - self.delivered

    @property
    def duplicates(self) -> int:
        return sum(n - 1 for k, n in self.arrived.items() if n > 1 and k in self.expected)

    @property
    def deliveries_per_s(self) -> float | None:
        if self.last_arrival is None or self.last_arrival <= self.phase.start_wall:
            return None
        return self.delivered / (self.last_arrival - self.phase.start_wall)

    @property
    def drained_after_s(self) -> float | None:
        return None if self.last_arrival is None else max(0.0, self.last_arrival - self.phase.end_wall)

    @property
    def accepted_events(self) -> int:
        return len(set(self.phase.ok_ids))

    def platform_ms_per_delivery(self) -> float | None:
        if not self.cpu or not self.delivered:
            return None
        return _platform_ms(self.cpu.per_event_ms(self.delivered))

    def as_json(self) -> dict[str, Any]:
        return {
            "fanout": self.fanout,
            "inbound": {
                "planned": self.phase.planned,
                "accepted": self.phase.ok,
                "accepted_events": self.accepted_events,
                "accepted_per_s": self.phase.ok / self.phase.load_seconds if self.phase.load_seconds else None,
                "http_p50_ms": self.phase.latency("p50"),
                "http_p99_ms": self.phase.latency("p99"),
                # arrival at ingest → outcome committed: the processors' histogram, to its buckets
                "e2e_committed_p50_ms": self.phase.e2e("p50_ms"),
                "e2e_committed_p99_ms": self.phase.e2e("p99_ms"),
                "e2e_committed_p99_bucket_ms": (self.phase.stages.get("e2e") or {}).get("p99_bucket_ms"),
                # received_at → processed_at of the rows: the operations done, before the commit
                "e2e_before_commit_p50_ms": pct(self.phase.e2e_before_commit_ms, 0.5),
                "e2e_before_commit_p99_ms": pct(self.phase.e2e_before_commit_ms, 0.99),
            },
            "expected": len(self.expected),
            "delivered": self.delivered,
            "missing": self.missing,
            "missing_ids": sorted(k for k in self.expected if k not in self.arrived)[:100],
            "duplicates": self.duplicates,
            "unexpected": self.unexpected,
            "non_200": self.non_200,
            "deliveries_per_s": self.deliveries_per_s,
            "drained_after_s": self.drained_after_s,
            "latency_ms": _summary(self.latency_ms),
            "latency_slow_endpoints_ms": _summary(self.latency_slow_ms),
            "latency_other_endpoints_ms": _summary(self.latency_fast_ms),
            "cpu": self.cpu.as_dict(self.accepted_events) if self.cpu else None,
            "cpu_ms_per_accepted_event_platform": _platform_ms(self.cpu.per_event_ms(self.accepted_events))
            if self.cpu
            else None,
            "cpu_ms_per_delivery_platform": self.platform_ms_per_delivery(),
            "outcomes": self.outcomes,
            "sample_checked": self.sample_checked,
            "sample_bad": self.sample_bad,
            "gave_up": self.gave_up,
        }


def slow_line(rnd: Round) -> str:
    """accepted → delivered (arrival at the receiver) for the slow endpoints and for the others."""

    def part(name: str, values: list[float]) -> str:
        if not values:
            return f"{name}: -"
        return f"{name} ({len(values)}): p50 {pct(values, 0.5):.0f} ms, p99 {pct(values, 0.99):.0f} ms"

    deferred = rnd.outcomes.get("deferred", 0)
    per = f" ({deferred / rnd.delivered:.2f} per delivery)" if rnd.delivered else ""
    return (
        f"{part('slow endpoints', rnd.latency_slow_ms)}; {part('others', rnd.latency_fast_ms)};"
        f" deferrals {deferred:.0f}{per}"
    )


def _summary(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0}
    return {
        "p50": pct(values, 0.5),
        "p90": pct(values, 0.9),
        "p99": pct(values, 0.99),
        "max": max(values),
        "mean": statistics.fmean(values),
        "n": len(values),
    }


def duplicate_wait(cfg: PlatformConfig, override: float | None = None) -> float:
    """Seconds to watch for duplicates after the last expected delivery: ``override`` if given, else the
    delivery timeout plus the first retry delay at its longest (the bench's subscriptions have the default
    retry policy) plus a second."""
    if override is not None:
        return override
    return cfg.delivery.timeout_seconds + DEFAULT_POLICY.retry_delays[0] * (1 + JITTER) + 1.0


def _platform_ms(per: dict[str, float | None]) -> float | None:
    values = [per.get(k) for k in PLATFORM]
    known = [v for v in values if v is not None]
    return sum(known) if known else None


class DeliveryBench(Bench):
    def __init__(
        self, stack: Stack, cfg: PlatformConfig, args: argparse.Namespace, root: Path, receiver: ReceiverEnvoy
    ) -> None:
        super().__init__(stack, cfg, args, root)
        self.receiver = receiver
        self.meter = CpuMeter.for_stack(stack)
        if receiver.pid is not None:
            self.meter.groups["receiver"] = [receiver.pid]
        self.subscriptions: list[tuple[str, str]] = []
        self.rounds: list[Round] = []
        self.seen: Counter[str] = Counter()  # every webhook-id that arrived, all rounds
        self.arrived_at: dict[str, float] = {}

    # -- subscriptions -------------------------------------------------------------------------------------
    def _stub(self) -> tuple[grpc.Channel, Any]:
        channel = grpc.insecure_channel(f"127.0.0.1:{self.cfg.control.port}")
        return channel, subscriptions_pb2_grpc.SubscriptionsStub(channel)

    def _create(self, stub: Any, path: str, description: str) -> tuple[str, str]:
        sub = pb.Subscription(
            callback_url=self.receiver.url(path), sources=[SOURCE], event_types=["invoice.*"], description=description
        )
        reply = stub.CreateSubscription(pb.CreateSubscriptionRequest(subscription=sub), timeout=10)
        return reply.subscription.id, path

    def ensure_subscriptions(self, n: int) -> None:
        channel, stub = self._stub()
        try:
            while len(self.subscriptions) < n:
                i = len(self.subscriptions)
                path = f"{SLOW_PREFIX}s{i}" if i < self.args.slow else f"/hooks/s{i}"
                self.subscriptions.append(self._create(stub, path, f"bench subscription {i}"))
        finally:
            channel.close()
        time.sleep(1.0)  # the processors' caches hear of a new subscription within milliseconds (change notices)

    def warmup_subscription(self) -> tuple[str, str]:
        """One subscription of its own for the warm-up (a fast endpoint), apart from the rounds' ones."""
        channel, stub = self._stub()
        try:
            sub = self._create(stub, "/hooks/warmup", "bench warm-up subscription")
        finally:
            channel.close()
        time.sleep(1.0)
        return sub

    def delete_subscription(self, subscription_id: str) -> None:
        channel, stub = self._stub()
        try:
            stub.DeleteSubscription(pb.DeleteSubscriptionRequest(id=subscription_id), timeout=10)
        finally:
            channel.close()
        time.sleep(1.0)  # as for a new one: the processors' caches drop it on the change notice

    def check_sample(self, rnd: Round, k: int) -> None:
        """Looks up ``k`` of the round's deliveries through the Subscriptions service: each must be DELIVERED
        with its attempts recorded."""
        picks = random.Random(rnd.fanout).sample(sorted(rnd.expected), min(k, len(rnd.expected)))
        by_path = {path: sid for sid, path in rnd.subscriptions}
        channel, stub = self._stub()
        try:
            for wid in picks:
                event_id, path = rnd.expected[wid]
                reply = stub.ListDeliveries(
                    pb.ListDeliveriesRequest(subscription_id=by_path[path], source=SOURCE, event_id=event_id),
                    timeout=10,
                )
                got = [d for d in reply.deliveries if d.id == wid]
                rnd.sample_checked += 1
                if not got or got[0].status != pb.DELIVERY_STATUS_DELIVERED or got[0].attempts < 1:
                    rnd.sample_bad.append(f"{wid}: {got[0] if got else 'not recorded'}")
        finally:
            channel.close()

    # -- arrivals ------------------------------------------------------------------------------------------
    def collect(self) -> int:
        n = 0
        for a in self.receiver.arrivals():
            n += 1
            self.seen[a.webhook_id] += 1
            self.arrived_at.setdefault(a.webhook_id, a.at)
            for rnd in self.rounds:
                if a.webhook_id in rnd.expected:
                    rnd.arrived[a.webhook_id] += 1
                    if a.webhook_id not in rnd.first_arrival:  # a late duplicate does not move the last delivery
                        rnd.first_arrival[a.webhook_id] = a.at
                        rnd.last_arrival = a.at if rnd.last_arrival is None else max(rnd.last_arrival, a.at)
                    if a.status != 200:
                        rnd.non_200 += 1
                    break
            else:
                if self.rounds:
                    self.rounds[-1].unexpected += 1
        return n

    async def wait_delivered(self, rnd: Round) -> None:
        last_progress = time.monotonic()
        while True:
            await asyncio.sleep(0.5)
            if self.collect():
                last_progress = time.monotonic()
            if rnd.missing == 0:
                await asyncio.sleep(1.0)  # the last round waits longer for late duplicates (duplicate_wait)
                self.collect()
                return
            for p in self.stack.delivery_procs:
                if not p.is_running():
                    raise BenchError(f"{p.name} exited (status {p.returncode}); see {p.log_path}")
            if time.monotonic() - last_progress > self.args.stall_seconds:
                rnd.gave_up = f"no delivery arrived for {self.args.stall_seconds:g} s; {rnd.missing} missing"
                log.warning("fan-out %d: %s", rnd.fanout, rnd.gave_up)
                return

    def settled(self) -> dict[str, float]:
        """The delivery workers' settled tasks so far, by outcome (their metrics endpoints)."""
        totals: dict[str, float] = {}
        for p in self.stack.delivery_procs:
            if p.is_running() and p.metrics_port:
                by = stages.counter_by(p.metrics_port, "switchboard_delivery_deliveries_total", "outcome")
                for outcome, n in by.items():
                    totals[outcome] = totals.get(outcome, 0.0) + n
        return totals

    # -- a round -------------------------------------------------------------------------------------------
    async def run_round(
        self, name: str, fanout: int, rate: float, seconds: float, subs: list[tuple[str, str]] | None = None
    ) -> Round:
        """Subscriptions up to ``fanout`` (or exactly ``subs``), an open loop of ``rate`` events/s for
        ``seconds``, then waits until every accepted event reached every subscription (or gives up), and
        measures."""
        if subs is None:
            await asyncio.to_thread(self.ensure_subscriptions, fanout)
            subs = list(self.subscriptions)
        settled = await asyncio.to_thread(self.settled)
        before = self.meter.sample()
        phase = await self.open_phase(name, rate, seconds)
        self.phases.append(phase)  # verify() reads back every accepted event of every phase
        rnd = Round(fanout, phase, subs)
        for eid in set(phase.ok_ids):
            for sid, path in subs:
                rnd.expected[delivery_id(SOURCE, eid, sid)] = (eid, path)
        self.rounds.append(rnd)
        for wid, n in self.seen.items():  # arrived before the round knew its ids
            if wid in rnd.expected:
                at = self.arrived_at[wid]
                rnd.arrived[wid], rnd.first_arrival[wid] = n, at
                rnd.last_arrival = at if rnd.last_arrival is None else max(rnd.last_arrival, at)
        await self.wait_delivered(rnd)
        rnd.cpu = self.meter.sample().minus(before)
        after = await asyncio.to_thread(self.settled)
        rnd.outcomes = {k: v - settled.get(k, 0) for k, v in after.items() if v - settled.get(k, 0)}
        received = await self.read_events(sorted(set(phase.ok_ids)))
        for wid, (eid, path) in rnd.expected.items():
            rec = received.get(eid, (None, None, None))[0]
            if rec is not None and wid in rnd.first_arrival:
                ms = (rnd.first_arrival[wid] - rec) * 1000
                rnd.latency_ms.append(ms)
                (rnd.latency_slow_ms if path.startswith(SLOW_PREFIX) else rnd.latency_fast_ms).append(ms)
        await asyncio.to_thread(self.check_sample, rnd, self.args.sample)
        return rnd

    async def run_rounds(self, fanouts: list[int]) -> None:
        await self.connect_store()
        try:
            self.depth = QueueDepth.discover(self.stack)
            if self.args.warmup > 0:
                # fan-out 1 on a subscription of its own, deleted after: the delivery path warms up whatever the
                # first round's fan-out (0 by default), and the rounds keep exactly their own subscriptions
                sub = await asyncio.to_thread(self.warmup_subscription)
                try:
                    warm = await self.run_round("warmup", 1, self.args.warmup_rate, self.args.warmup, subs=[sub])
                finally:
                    await asyncio.to_thread(self.delete_subscription, sub[0])
                self.rounds.remove(warm)
                print(
                    f"warm-up: {warm.phase.ok} events accepted, {warm.delivered} of {len(warm.expected)} delivered"
                    " (fan-out 1)",
                    flush=True,
                )
            for fanout in fanouts:
                self.print_round(await self.run_round(f"fan{fanout}", fanout, self.args.rate, self.args.seconds))
            # A duplicate is a delivery sent again: its first attempt timed out (delivery.timeout_seconds) although
            # the receiver got it, and the retry came the first retry delay later. The rounds before the last
            # had the next rounds for theirs to show; the last waits that long.
            wait = duplicate_wait(self.cfg, self.args.dup_wait)
            log.info("waiting %.1f s for late duplicates", wait)
            await asyncio.sleep(wait)
            self.collect()
            self.verification = await self.verify()
        finally:
            if self.depth is not None:
                await self.depth.close()
            if self.store is not None:
                await asyncio.to_thread(self.store.close)

    # -- report --------------------------------------------------------------------------------------------
    CPU_SHOWN = (("processor", "proc"), ("delivery", "deliv"), ("rabbitmq", "rabbit"), ("cassandra", "cass"),
                 ("envoy", "envoy"), ("ingest", "ingest"))  # fmt: skip

    def round_header(self) -> str:
        cpu = " ".join(f"{short:>6}" for _, short in self.CPU_SHOWN)
        return (
            f"{'fan-out':>7} {'in/s':>5} {'http99':>6} {'proc99':>6} {'deliv':>6} {'deliv/s':>7} {'p50':>6} {'p99':>6}"
            f" {'max':>6} {'→0 s':>5} {'miss':>4} {'dup':>4} │{cpu} {'platf':>6} │{'platf':>6}\n"
            f"{'':>7} {'':>5} {'ms':>6} {'ms':>6} {'':>6} {'':>7} {'accepted→delivered ms':>20} {'':>5} {'':>4}"
            f" {'':>4} │ CPU ms per accepted event{'':>22} │ per deliv"
        )

    def round_row(self, rnd: Round) -> str:
        """The round's line of the table; with ``--slow``, a second line with the slow and other endpoints'
        latency."""
        row = self._table_row(rnd)
        return f"{row}\n{'':>7} {slow_line(rnd)}" if self.args.slow else row

    def _table_row(self, rnd: Round) -> str:
        def ms(v: float | None) -> str:
            return "-" if v is None else (f"{v:.0f}" if v >= 100 else f"{v:.1f}")

        ph = rnd.phase
        inbound = ph.ok / ph.load_seconds if ph.load_seconds else None
        per = rnd.cpu.per_event_ms(rnd.accepted_events) if rnd.cpu else {}
        cpu = " ".join(f"{ms(per.get(k)):>6}" for k, _ in self.CPU_SHOWN)
        rate = rnd.deliveries_per_s
        drained = rnd.drained_after_s
        return (
            f"{rnd.fanout:>7} {ms(inbound):>5} {ms(ph.latency('p99')):>6} {ms(ph.e2e('p99_ms')):>6}"
            f" {rnd.delivered:>6}"
            f" {('-' if rate is None else f'{rate:.0f}'):>7} {ms(pct(rnd.latency_ms, 0.5)):>6}"
            f" {ms(pct(rnd.latency_ms, 0.99)):>6} {ms(max(rnd.latency_ms, default=None)):>6}"
            f" {('-' if drained is None else f'{drained:.1f}'):>5} {rnd.missing:>4} {rnd.duplicates:>4} │{cpu}"
            f" {ms(_platform_ms(per)):>6} │{ms(rnd.platform_ms_per_delivery()):>6}"
        )

    def print_round(self, rnd: Round) -> None:
        if not getattr(self, "_round_header_done", False):
            print("\n" + self.round_header(), flush=True)
            self._round_header_done = True
        print(self.round_row(rnd), flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--fanout", default="0,1,3,10", help="comma-separated subscriptions per event, one round each (0: none)"
    )
    p.add_argument("--rate", type=float, default=200.0, help="inbound events/s of each round (open loop)")
    p.add_argument("--seconds", type=float, default=30.0, help="seconds of inbound load per round")
    p.add_argument("--processors", type=int, default=1)
    p.add_argument("--delivery-workers", type=int, default=1)
    p.add_argument("--open-connections", type=int, default=128, help="wrk connections")
    p.add_argument(
        "--warmup", type=float, default=3.0,
        help="seconds of warm-up before the rounds, at fan-out 1 on a subscription of its own (deleted after)",
    )  # fmt: skip
    p.add_argument("--warmup-rate", type=float, default=100.0)
    p.add_argument("--tail", type=float, default=3.0, help="seconds wrk waits for answers after the last request")
    p.add_argument("--size", type=int, default=5000, help="approximate event size in bytes")
    p.add_argument("--sample", type=int, default=20, help="deliveries per round looked up via ListDeliveries")
    p.add_argument(
        "--trace-percent", type=float, default=TracingConfig().sample_percent,
        help="share of requests Envoy traces (the services follow; spans go to the stack's local receiver)",
    )  # fmt: skip
    p.add_argument("--slow", type=int, default=0, help="of the subscriptions, this many answer --slow-ms late")
    p.add_argument("--slow-ms", type=int, default=5000, help="how late the slow endpoints answer")
    p.add_argument("--wrk", default=None, help="the wrk binary (default: wrk on PATH)")
    p.add_argument("--drain-timeout", type=float, default=900.0, help="seconds to wait for inbound processing")
    p.add_argument("--stall-seconds", type=float, default=60.0, help="give up when no delivery arrives this long")
    p.add_argument(
        "--dup-wait", type=float, default=None,
        help="seconds to watch for late duplicates after the last round (default: the stack's delivery timeout"
        " + the first retry delay + 10%% jitter + 1 s, 16.5 s with the defaults)",
    )  # fmt: skip
    add_on_time(p)
    p.add_argument("--out", type=Path, default=None, help="JSON result (default var/bench/delivery-<date>-<rev>.json)")
    add_overrides(p)
    p.add_argument("--keep", action="store_true", help="keep the temp dir (stack data, logs)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    try:
        args.fanouts = [int(x) for x in args.fanout.split(",") if x.strip()]
    except ValueError:
        p.error(f"--fanout: {args.fanout!r} is not a list of integers")
    if not args.fanouts or any(f < 0 for f in args.fanouts) or args.fanouts != sorted(args.fanouts):
        p.error("--fanout: not negative, in increasing order (subscriptions are only added)")
    # what bench.pipeline.Bench reads and this benchmark does not vary
    args.dup_share, args.wrk_threads, args.connections = 0.0, 1, args.open_connections
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)
    logging.getLogger("cassandra").setLevel(logging.WARNING)
    if not (args.wrk or shutil.which("wrk")):
        print("wrk is not installed: run scripts/setup.sh (or apt-get install -y wrk)", file=sys.stderr)
        return 2

    def interrupted(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    rev = git_rev()
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or REPO / "var" / "bench" / f"delivery-{stamp}-{rev}.json"
    root, cfg = bench_stack_config(args)
    if args.delivery_workers > 1 and cfg.delivery.partitions == 0:
        print(
            "--delivery-workers above 1 needs --set delivery.partitions=N (else each worker keeps its own limits "
            "per subscription)",
            file=sys.stderr,
        )
        return 2
    stack = Stack(cfg)
    receiver = ReceiverEnvoy(root / "receiver", cfg.tls_dir, slow_ms=args.slow_ms if args.slow else 0)
    print(
        f"starting the stack in {root} ({args.processors} processor(s), {args.delivery_workers} delivery worker(s),"
        f" {args.trace_percent:g}% of requests traced)",
        flush=True,
    )
    bench: DeliveryBench | None = None
    failed: BaseException | None = None
    try:
        stack.up(timeout=240)
        stack.ensure_deliveries(args.delivery_workers)
        receiver.start().wait_ready(30)
        bench = DeliveryBench(stack, cfg, args, root, receiver)
        asyncio.run(bench.run_rounds(args.fanouts))
    except Exception as exc:
        failed = exc
        log.exception("benchmark failed")
    finally:
        if bench is not None and bench.wrk_proc is not None and bench.wrk_proc.returncode is None:
            with contextlib.suppress(Exception):
                bench.wrk_proc.kill()
        with contextlib.suppress(Exception):
            receiver.stop()
        stack.down()
    if bench is None or not bench.rounds:
        print(f"no result ({failed!r}); logs in {root}", file=sys.stderr)
        return 2

    print("\n" + bench.round_header())
    for rnd in bench.rounds:
        print(bench.round_row(rnd))
    print(
        "\nin/s: inbound events accepted per second; http99: wrk, without its coordinated-omission correction;"
        "\nproc99: arrival at ingest → outcome committed p99, the processors' histogram (to its buckets; the rows'"
        "\nreceived_at → processed_at, which ends before the commit, is in the JSON); deliv: deliveries"
        "\nthat arrived at the receiver; deliv/s: those / (last arrival - load start); accepted→delivered:"
        "\nreceived_at in Cassandra → arrival at the receiver; →0 s: end of the load → last arrival; miss:"
        "\nexpected and never arrived; dup: arrived more than once; platf: every component of the stack (not"
        "\nwrk, this script or the receiver)."
    )
    ver = bench.verification
    if ver:
        print(
            f"inbound verification: {ver['accepted_events']} accepted events, {ver['stored']} stored,"
            f" {ver['lost']} lost, by stored status {ver['statuses']}, {ver['unfinished']} unfinished,"
            f" {ver['stale']} stale, {ver['applied_twice']} applied twice"
        )
    for rnd in bench.rounds:
        bad = f", not DELIVERED: {rnd.sample_bad[:3]}" if rnd.sample_bad else ""
        print(
            f"fan-out {rnd.fanout}: {rnd.sample_checked} deliveries looked up via ListDeliveries{bad};"
            f" unexpected arrivals {rnd.unexpected}, non-200 {rnd.non_200}"
            + (f"; {rnd.gave_up}" if rnd.gave_up else "")
        )
    result = {
        "meta": {
            "date": dt.datetime.now().isoformat(timespec="seconds"),
            "git": rev,
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "cores": os.cpu_count(),
            "root": str(root),
            "error": repr(failed) if failed else None,
        },
        "rounds": [rnd.as_json() for rnd in bench.rounds],
        "inbound_verification": ver,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    print(f"result: {out}")
    if args.keep:
        print(f"data and logs kept in {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    if failed is not None or not ver:
        return 2
    broken = any(r.missing or r.duplicates or r.sample_bad for r in bench.rounds)
    return 1 if broken or failures(ver) else 0


if __name__ == "__main__":
    raise SystemExit(main())
