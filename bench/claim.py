"""What the idempotency claim costs: the lightweight transaction (``INSERT ... IF NOT EXISTS``) against the
plain read and the plain write it replaces, on a Cassandra node this script starts on free ports.

    make bench-claim                          # 4,000 operations per phase, 32 in flight
    make bench-claim BENCH_ARGS="--ops 20000 --concurrency 64"
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from switchboard.config import CassandraConfig
from switchboard.model.events import EventStatus, InboundEvent, now_us
from switchboard.store import EntityStore, EventStore, StoreSession
from switchboard_devstack.cassandra import CassandraNode
from switchboard_devstack.ports import free_port


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * p))]


async def phase(name: str, keys: list[str], op: Callable[[str], Awaitable[object]], concurrency: int) -> None:
    latencies: list[float] = []
    gate = asyncio.Semaphore(concurrency)

    async def one(key: str) -> None:
        async with gate:
            t = time.perf_counter()
            await op(key)
            latencies.append((time.perf_counter() - t) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(one(k) for k in keys))
    elapsed = time.perf_counter() - started
    print(
        f"{name:<34} {len(keys) / elapsed:>8.0f} ops/s   p50 {pct(latencies, 0.5):6.2f} ms"
        f"   p99 {pct(latencies, 0.99):6.2f} ms"
    )


async def run(store: EventStore, ops: int, concurrency: int) -> None:
    keys = [f"evt_{secrets.token_hex(8)}" for _ in range(ops)]
    await phase(
        "warm-up (claim, discarded)",
        [k + "_w" for k in keys[:500]],
        lambda k: store.claim("b", k, "r1", now_us()),
        concurrency,
    )
    await phase("claim, first receipt (LWT applied)", keys, lambda k: store.claim("b", k, "r1", now_us()), concurrency)
    await phase("claim, duplicate (LWT not applied)", keys, lambda k: store.claim("b", k, "r2", now_us()), concurrency)
    await phase("plain read of the event row", keys, lambda k: store.processing_state("b", k), concurrency)

    def event(k: str) -> InboundEvent:
        return InboundEvent("b", k, "invoice.paid", "stripe", now_us(), b"{}", "application/json", {}, "r1")

    await phase(
        "plain write (index row)", keys, lambda k: store.write_index(event(k), EventStatus.PROCESSED), concurrency
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="switchboard-claim-") as tmp:
        cfg = CassandraConfig(port=free_port(), storage_port=free_port(), keyspace="claimbench", heap="768m")
        with CassandraNode(Path(tmp), cfg.port, cfg.storage_port, heap=cfg.heap).start() as node:
            node.wait_ready(240)
            session = StoreSession.connect(cfg, create_schema=True)
            try:
                print(f"Cassandra {node.base_dir}: {args.ops} operations per phase, {args.concurrency} in flight")
                asyncio.run(run(EventStore(session, EntityStore(session)), args.ops, args.concurrency))
            finally:
                session.close()


if __name__ == "__main__":
    main()
