"""Processor entry point: ``python -m processor_service --config FILE``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from processor_service.operations import Registry
from processor_service.pipeline import EventPipeline
from processor_service.processor import Processor
from switchboard.config import PlatformConfig
from switchboard.queue import QueueWorker, StatsHook, WorkerSettings
from switchboard.runtime.service import serve, service_main
from switchboard.store import EntityStore, EventStore, open_store
from switchboard.streams import events_topology

log = logging.getLogger(__name__)

DRAIN_SECONDS = 20.0


async def run(cfg: PlatformConfig, args: argparse.Namespace) -> None:
    sys.path[:0] = [str(d) for d in cfg.processor.python_path]
    registry = Registry.from_config(cfg.processor.operations)
    async with serve() as life:
        store = await life.enter(open_store(cfg.cassandra, create_schema=True))
        entities = EntityStore(store)
        processor = Processor(
            EventStore(store, entities), entities, registry, max_attempts=cfg.processor.retry.max_attempts
        )
        stats = StatsHook()
        worker = QueueWorker(
            cfg.rabbitmq.amqp_url,
            events_topology(cfg),
            EventPipeline(processor),
            WorkerSettings(prefetch=cfg.processor.prefetch),
            purpose="processor-consumer",
            hooks=[stats],
        )
        await worker.start(life.stopping)
        life.on_close(worker.close)
        reporter = asyncio.create_task(stats.report_forever(worker, "processor", args.stats_interval))
        life.push(reporter.cancel)
        log.info("processor ready", extra={"operations": [op.name for op in registry.operations]})
        await life.until_stopped()
        log.info("processor stopping: no new messages, finishing in-flight ones", extra={"in_flight": worker.in_flight})
        drained = await worker.stop(DRAIN_SECONDS)
        log.info("processor stopped", extra={"drained": drained, "left_unacked": worker.in_flight})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stats-interval", type=float, default=60.0, help="seconds between stats log lines")


def main(argv: list[str] | None = None) -> int:
    return service_main("processor", run, argv, add_arguments=add_arguments)
