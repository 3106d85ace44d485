"""Full-path benchmark: signed 5 KB Stripe-style events over HTTPS → Envoy → ingest → RabbitMQ →
processor → Cassandra, on a stack this script starts on free ports (data in a temp dir).

Phases: a steady open-loop rate, a 5x spike, the steady rate again; then a closed-loop saturation run to
find the maximum accepted rate. Afterwards every accepted event is looked up in Cassandra: lost (accepted
but not stored) and duplicated (listed more than once) must both be 0.

    make bench                      # defaults below
    make bench BENCH_ARGS="--rate 500 --steady 30 --spike-seconds 10 --saturate 20 --processors 2"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import secrets
import signal
import ssl
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from switchboard.config import PlatformConfig
from switchboard.signatures import sign
from switchboard.store import EntityStore, EventStore, StoreSession
from switchboard_devstack.stack import Stack
from tests.stack_fixture import STRIPE_SECRET, write_test_config


@dataclass
class Phase:
    name: str
    sent: int = 0
    ok: int = 0
    errors: Counter[int | str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * p))]


def make_event(size: int) -> tuple[str, bytes]:
    event_id = "evt_" + secrets.token_hex(12)
    pad = max(0, size - 300)
    body = json.dumps(
        {
            "id": event_id,
            "object": "event",
            "type": "invoice.paid",
            "created": int(time.time()),
            "data": {"object": {"id": "in_" + secrets.token_hex(6), "object": "invoice", "memo": "x" * pad}},
        },
        separators=(",", ":"),
    ).encode()
    return event_id, body


async def post_one(client: httpx.AsyncClient, phase: Phase, accepted: list[str], size: int) -> None:
    event_id, body = make_event(size)
    headers = {"content-type": "application/json", **sign("stripe", STRIPE_SECRET, body, now=time.time())}
    phase.sent += 1
    started = time.perf_counter()
    try:
        resp = await client.post("/webhook/shop", content=body, headers=headers)
    except httpx.HTTPError as exc:
        phase.errors[type(exc).__name__] += 1
        return
    phase.latencies_ms.append((time.perf_counter() - started) * 1000)
    if resp.status_code == 200:
        phase.ok += 1
        accepted.append(event_id)
    else:
        phase.errors[resp.status_code] += 1


async def open_loop(
    client: httpx.AsyncClient, phase: Phase, rate: float, seconds: float, accepted: list[str], size: int
) -> None:
    """Starts requests on a fixed schedule regardless of how fast answers come (no coordinated omission)."""
    tasks: set[asyncio.Task[None]] = set()
    start = time.perf_counter()
    n = int(rate * seconds)
    for i in range(n):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        t = asyncio.create_task(post_one(client, phase, accepted, size))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks)
    phase.seconds = time.perf_counter() - start


async def closed_loop(
    client: httpx.AsyncClient, phase: Phase, concurrency: int, seconds: float, accepted: list[str], size: int
) -> None:
    deadline = time.perf_counter() + seconds
    start = time.perf_counter()

    async def worker() -> None:
        while time.perf_counter() < deadline:
            await post_one(client, phase, accepted, size)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    phase.seconds = time.perf_counter() - start


async def drive(cfg: PlatformConfig, args: argparse.Namespace) -> tuple[list[Phase], list[str]]:
    accepted: list[str] = []
    phases: list[Phase] = []
    limits = httpx.Limits(max_connections=args.connections, max_keepalive_connections=args.connections)
    async with httpx.AsyncClient(
        base_url=f"https://127.0.0.1:{cfg.edge.https_port}",
        verify=ssl.create_default_context(cafile=cfg.tls_dir / "ca.pem"),
        limits=limits,
        timeout=30,
    ) as client:
        await open_loop(client, Phase("warm-up"), 50, 2, accepted, args.size)
        for name, rate, seconds in (
            ("steady", args.rate, args.steady),
            ("spike x5", args.rate * 5, args.spike_seconds),
            ("steady again", args.rate, args.steady),
        ):
            phase = Phase(f"{name} @ {rate:g}/s")
            await open_loop(client, phase, rate, seconds, accepted, args.size)
            phases.append(phase)
        if args.saturate > 0:
            phase = Phase(f"saturation ({args.connections} in flight)")
            await closed_loop(client, phase, args.connections, args.saturate, accepted, args.size)
            phases.append(phase)
    return phases, accepted


async def verify(cfg: PlatformConfig, accepted: list[str], drain_seconds: float) -> dict[str, object]:
    """Looks every accepted event up in Cassandra; waits up to drain_seconds for the queue to drain."""
    loop = asyncio.get_running_loop()
    session = await loop.run_in_executor(None, lambda: StoreSession.connect(cfg.cassandra))
    store = EventStore(session, EntityStore(session))
    ks = cfg.cassandra.keyspace
    cql = f"SELECT received_at, processed_at FROM {ks}.events WHERE source = ? AND event_id = ?"  # noqa: S608
    stmt = session.session.prepare(cql)
    e2e: dict[str, float] = {}
    deadline = time.monotonic() + drain_seconds
    pending = list(accepted)
    sem = asyncio.Semaphore(64)

    async def look(event_id: str) -> None:
        async with sem:
            rows = await session.execute(stmt, ("shop", event_id))
        if rows and rows[0].processed_at is not None:
            e2e[event_id] = (rows[0].processed_at - rows[0].received_at).total_seconds() * 1000

    while pending and time.monotonic() < deadline:
        await asyncio.gather(*(look(i) for i in pending))
        pending = [i for i in pending if i not in e2e]
        if pending:
            await asyncio.sleep(1)
    # Duplicates: any accepted event listed more than once in the source's index.
    listed: Counter[str] = Counter()
    cursor = None
    start_us = int((time.time() - 3600) * 1e6)
    end_us = int((time.time() + 60) * 1e6)
    while True:
        page, cursor = await store.list("shop", start_us, end_us, 1000, cursor)
        listed.update(e.event_id for e in page)
        if cursor is None:
            break
    session.close()
    acc = set(accepted)
    return {
        "stored": len(e2e),
        "lost": len(pending),
        "duplicated": sum(1 for i, c in listed.items() if i in acc and c > 1),
        "e2e_ms": list(e2e.values()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=300.0, help="steady rate, events/s (spike is 5x)")
    parser.add_argument("--steady", type=float, default=15.0, help="seconds of each steady phase")
    parser.add_argument("--spike-seconds", type=float, default=10.0)
    parser.add_argument("--saturate", type=float, default=15.0, help="seconds of closed-loop saturation (0: skip)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--size", type=int, default=5000, help="event size in bytes")
    parser.add_argument("--processors", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, data)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    def interrupted(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)  # so that `finally` stops the stack this script started
    root = Path(tempfile.mkdtemp(prefix="switchboard-bench-"))
    cfg = write_test_config(root, processors=args.processors, bucket_seconds=3600)
    stack = Stack(cfg)
    print(f"starting the stack in {root} ...", flush=True)
    stack.up(timeout=240)
    try:
        phases, accepted = asyncio.run(drive(cfg, args))
        result = asyncio.run(verify(cfg, accepted, drain_seconds=120))
    finally:
        stack.down()
    print(f"\n{'phase':34} {'sent':>7} {'200':>7} {'other':>18} {'acc/s':>8} {'http p50':>9} {'http p99':>9}")
    for ph in phases:
        other = ",".join(f"{k}:{v}" for k, v in ph.errors.items()) or "-"
        print(
            f"{ph.name:34} {ph.sent:7d} {ph.ok:7d} {other:>18} {ph.ok / ph.seconds:8.0f} "
            f"{pct(ph.latencies_ms, 0.5):8.1f}ms {pct(ph.latencies_ms, 0.99):8.1f}ms"
        )
    e2e: list[float] = result["e2e_ms"]  # type: ignore[assignment]
    print(
        f"\nend-to-end (arrival -> row written), all phases: p50 {pct(e2e, 0.5):.1f} ms, p99 {pct(e2e, 0.99):.1f} ms"
        f"\naccepted {len(accepted)}, stored {result['stored']}, lost {result['lost']},"
        f" duplicated {result['duplicated']}"
    )
    if args.keep:
        print(f"data and logs kept in {root}")
    else:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    return 0 if result["lost"] == 0 and result["duplicated"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
