"""Processor entry point: ``python -m processor_service --config FILE``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from processor_service.operations import Registry
from processor_service.processor import Processor
from processor_service.worker import Worker
from switchboard.config import PlatformConfig
from switchboard.grpc_server import install_stop_signals
from switchboard.queue import Consumer, Topology
from switchboard.service import service_main
from switchboard.store import CassandraStore

log = logging.getLogger(__name__)


async def run(cfg: PlatformConfig, *, stats_interval: float) -> None:
    sys.path[:0] = [str(d) for d in cfg.processor.python_path]
    registry = Registry.from_config(cfg.processor.operations)
    stop = asyncio.Event()
    install_stop_signals(stop)
    loop = asyncio.get_running_loop()
    store = await loop.run_in_executor(None, lambda: CassandraStore.connect(cfg.cassandra))
    await loop.run_in_executor(None, store.ensure_schema)
    await loop.run_in_executor(None, store.prepare)
    retry = cfg.processor.retry
    topology = Topology(cfg.rabbitmq.queue_prefix, retry.levels_ms())
    consumer = Consumer(cfg.rabbitmq.amqp_url, topology, prefetch=cfg.processor.prefetch)
    worker = Worker(Processor(store, registry, max_attempts=retry.max_attempts), consumer.forwarder, retry)
    await consumer.start(worker.on_message, stop)
    reporter = asyncio.create_task(worker.report_forever(consumer.depths, stats_interval))
    log.info("processor ready", extra={"operations": [op.name for op in registry.operations]})
    await stop.wait()
    log.info("processor stopping: no new messages, finishing in-flight ones", extra={"in_flight": worker.in_flight})
    worker.stopping.set()
    await consumer.stop_consuming()
    drained = await worker.drain(within=20.0)
    log.info("processor stopped", extra={"drained": drained, "left_unacked": worker.in_flight})
    reporter.cancel()
    await consumer.close()
    store.close()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stats-interval", type=float, default=60.0, help="seconds between stats log lines")


def main(argv: list[str] | None = None) -> int:
    return service_main(
        "processor", lambda cfg, args: run(cfg, stats_interval=args.stats_interval), argv, add_arguments=add_arguments
    )
