"""Processor entry point: ``python -m processor_service --config FILE``."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys

from processor_service import failpoints, fanout
from processor_service.operations import Registry, SkipOperation
from processor_service.pipeline import EventPipeline
from processor_service.processor import Processor
from switchboard.config import PlatformConfig
from switchboard.observability import hooks as metrics
from switchboard.observability.metrics import E2E_LATENCY, PROCESSOR_EVENTS
from switchboard.observability.tracing import setup_tracing
from switchboard.queue import QueueWorker, StatsHook, WorkerSettings
from switchboard.runtime.service import member_argument, serve, service_main
from switchboard.store import EntityStore, EventStore, SubscriptionStore, open_store
from switchboard.streams import DeliveryPublisher, changes_exchange, events_topology
from switchboard.subscription_cache import SubscriptionCache

log = logging.getLogger(__name__)

DRAIN_SECONDS = 20.0


async def run(cfg: PlatformConfig, args: argparse.Namespace) -> None:
    sys.path[:0] = [str(d) for d in cfg.processor.python_path]
    fan_out = any(op.call == fanout.CALL for op in cfg.processor.operations)
    box = cfg.delivery.secret_box() if fan_out else None
    async with serve() as life:
        tracer, flush_spans = setup_tracing("switchboard-processor", cfg.tracing)
        life.push(flush_spans)  # last: after the worker drained
        await life.enter(metrics.metrics_endpoint(cfg.metrics, "processor", args.member or 0))
        store = await life.enter(open_store(cfg.cassandra, create_schema=True, stop=life.stopping))
        bound = {}
        if box is not None:
            cache = SubscriptionCache(
                SubscriptionStore(store, box), cfg.rabbitmq.amqp_url, changes_exchange(cfg), purpose="processor-cache"
            )
            await cache.start(life.stopping)
            life.on_close(cache.close)
            publisher = DeliveryPublisher(cfg, purpose="processor-fanout")
            await publisher.start(life.stopping)
            life.on_close(publisher.close)
            bound[fanout.CALL] = fanout.FanOut(cache, publisher)
        registry = Registry.from_config(cfg.processor.operations, bound)
        registry.operations = [
            dataclasses.replace(op, fn=metrics.timed_operation(op.name, op.fn, SkipOperation))
            for op in registry.operations
        ]
        entities = EntityStore(store)
        processor = Processor(
            EventStore(store, entities),
            entities,
            registry,
            max_attempts=cfg.processor.retry.max_attempts,
            tracer=tracer,
        )
        stats = StatsHook()
        meter = metrics.WorkerMetrics("processor", PROCESSOR_EVENTS, E2E_LATENCY, metrics.PROCESSOR_OUTCOMES)
        worker = QueueWorker(
            cfg.rabbitmq.amqp_url,
            events_topology(cfg),
            EventPipeline(processor),
            WorkerSettings(
                prefetch=cfg.processor.prefetch,
                max_batch=cfg.processor.batch,
                concurrency=cfg.processor.concurrency,
                member=args.member,
                redelivery_delay=cfg.processor.redelivery_delay_seconds,
                heartbeat=cfg.processor.heartbeat_seconds,
                linger=cfg.processor.batch_linger_ms / 1000,
            ),
            purpose="processor-consumer",
            hooks=[stats, meter, *failpoints.armed()],
        )
        await worker.start(life.stopping)
        life.on_close(worker.close)
        reporter = asyncio.create_task(stats.report_forever(worker, "processor", cfg.processor.stats_interval_seconds))
        life.push(reporter.cancel)
        meter.watch(worker)
        depths = asyncio.create_task(metrics.poll_depths(worker))
        life.push(depths.cancel)
        log.info("processor ready", extra={"operations": [op.name for op in registry.operations]})
        await life.until_stopped()
        log.info("processor stopping: no new messages, finishing in-flight ones", extra={"in_flight": worker.in_flight})
        drained = await worker.stop(DRAIN_SECONDS)
        log.info("processor stopped", extra={"drained": drained, "left_unacked": worker.running})


def main(argv: list[str] | None = None) -> int:
    return service_main("processor", run, argv, add_arguments=member_argument)
