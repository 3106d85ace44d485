"""Processor entry point: ``python -m processor_service --config FILE``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from processor_service.operations import Registry
from processor_service.processor import Processor
from processor_service.worker import Worker
from switchboard import runtime
from switchboard.config import PlatformConfig, load_config
from switchboard.errors import ConfigError, SwitchboardError
from switchboard.grpc_server import install_stop_signals
from switchboard.logs import setup_logging
from switchboard.queue import Consumer, Topology
from switchboard.store import CassandraStore

log = logging.getLogger(__name__)


async def run(cfg: PlatformConfig, *, stats_interval: float) -> None:
    registry = Registry.from_config(cfg.processor.operations)
    stop = asyncio.Event()
    install_stop_signals(stop)
    loop = asyncio.get_running_loop()
    store = await loop.run_in_executor(None, lambda: CassandraStore.connect(cfg.cassandra))
    await loop.run_in_executor(None, store.ensure_schema)
    await loop.run_in_executor(None, store.prepare)
    worker = Worker(Processor(store, registry))
    consumer = Consumer(cfg.rabbitmq.amqp_url, Topology(cfg.rabbitmq.queue_prefix), prefetch=cfg.processor.prefetch)
    await consumer.start(worker.on_message, stop)
    reporter = asyncio.create_task(worker.report_forever(stats_interval))
    log.info("processor ready", extra={"operations": [op.name for op in registry.operations]})
    await stop.wait()
    log.info("processor stopping: no new messages, finishing in-flight ones")
    worker.stopping.set()
    await consumer.stop_consuming()
    drained = await worker.drain(within=20.0)
    log.info("processor stopped", extra={"drained": drained, "left_unacked": worker.in_flight})
    reporter.cancel()
    await consumer.close()
    store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="processor_service")
    parser.add_argument("--config", default=None, help="configuration file (default: switchboard.toml)")
    parser.add_argument("--stats-interval", type=float, default=60.0, help="seconds between stats log lines")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"processor: refusing to start: {exc}", file=sys.stderr)
        return 2
    setup_logging("processor", cfg.log_level)
    try:
        runtime.run(run(cfg, stats_interval=args.stats_interval))
    except ConfigError as exc:
        log.error("refusing to start", extra={"error": exc.message})
        return 2
    except SwitchboardError as exc:
        log.error("stopped", extra={"error": exc.message, "reason": exc.reason})
        return 1
    return 0
