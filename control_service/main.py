"""Control service entry point: ``python -m control_service --config FILE``: Subscriptions, Replay and
DeadLetters over gRPC, and the recorders that write both streams' dead letters to the store."""

from __future__ import annotations

import argparse
import asyncio
import logging

from webhooks.v1 import dead_letters_pb2_grpc, replay_pb2_grpc, subscriptions_pb2_grpc

from control_service.dead_letters import DeadLetterManager, DeadLetterRecorder
from control_service.operations_servicer import DeadLettersServicer, ReplayServicer
from control_service.replay import Limits, ReplayManager
from control_service.servicer import SubscriptionsServicer
from control_service.subscriptions import Rules, SubscriptionManager
from switchboard.config import PlatformConfig
from switchboard.config.ports import platform_ports
from switchboard.delivery.sender import Sender
from switchboard.model.events import InboundEvent
from switchboard.model.operations import DeadLetterKind
from switchboard.model.subscriptions import DeliveryTask
from switchboard.observability.hooks import DeadLetterMetrics, metrics_endpoint
from switchboard.queue import QueueWorker, WorkerSettings
from switchboard.rpc.server import GrpcServer, Service
from switchboard.runtime.service import serve, service_main
from switchboard.store import DeliveryStore, EntityStore, EventStore, OperationsStore, SubscriptionStore, open_store
from switchboard.streams import (
    DeliveryPublisher,
    EventPublisher,
    changes_exchange,
    deliveries_topology,
    events_topology,
)
from switchboard.subscription_cache import ChangeNotices

log = logging.getLogger(__name__)
# A dead-letter recorder's batch is one Cassandra write: a stop waits this long for the running one.
RECORDER_DRAIN_SECONDS = 10.0


def rules(cfg: PlatformConfig) -> Rules:
    d = cfg.delivery
    return Rules(
        sources=[s.name for s in cfg.sources],
        event_types={s.name: s.event_types for s in cfg.sources},
        allow_http_hosts=d.allow_http_hosts,
        allow_networks=d.allow_networks,
        reserved_ports=platform_ports(cfg),
        default_timeout_ms=round(d.timeout_seconds * 1000),
        secret_overlap_us=round(d.secret_overlap_seconds * 1_000_000),
    )


class Republisher:
    """Both streams' publishers, for replays and redrives."""

    def __init__(self, cfg: PlatformConfig) -> None:
        self.events = EventPublisher(cfg, purpose="control-events", confirm_timeout=5.0)
        self.deliveries = DeliveryPublisher(cfg, purpose="control-deliveries")

    async def start(self, stop: asyncio.Event) -> None:
        await self.events.start(stop)
        await self.deliveries.start(stop)

    async def close(self) -> None:
        await self.events.close()
        await self.deliveries.close()

    async def publish_event(self, event: InboundEvent) -> None:
        await self.events.publish_event(event)

    async def publish_task(self, task: DeliveryTask) -> None:
        await self.deliveries.publish_task(task)


async def run(cfg: PlatformConfig, _args: argparse.Namespace) -> None:
    box = cfg.delivery.secret_box()
    async with serve() as life:
        await life.enter(metrics_endpoint(cfg.metrics, "control"))
        store = await life.enter(open_store(cfg.cassandra, create_schema=True, stop=life.stopping))
        notices = ChangeNotices(cfg.rabbitmq.amqp_url, changes_exchange(cfg), purpose="control-notices")
        await notices.start(life.stopping)
        life.on_close(notices.close)
        d = cfg.delivery
        prober = Sender(
            allow_http_hosts=d.allow_http_hosts,
            allow_networks=d.allow_networks,
            reserved_ports=platform_ports(cfg),
            ca_file=d.ca_file,
        )
        await prober.start()
        life.on_close(prober.close)
        subscriptions = SubscriptionStore(store, box)
        deliveries = DeliveryStore(store)
        operations = OperationsStore(store)
        events = EventStore(store, EntityStore(store))
        manager = SubscriptionManager(rules(cfg), subscriptions, deliveries, notices, prober=prober)
        publisher = Republisher(cfg)
        await publisher.start(life.stopping)
        life.on_close(publisher.close)
        recorders: list[QueueWorker] = []
        for kind, topology in (
            (DeadLetterKind.PROCESSING, events_topology(cfg)),
            (DeadLetterKind.DELIVERY, deliveries_topology(cfg)),
        ):
            recorder = QueueWorker(
                cfg.rabbitmq.amqp_url,
                topology,
                DeadLetterRecorder(operations, kind),
                WorkerSettings(prefetch=64, max_batch=16, concurrency=1, crash_attempts=0),
                purpose=f"control-dead-letters-{kind.value}",
                queues=[topology.dead_queue],
                hooks=[DeadLetterMetrics(topology.stream)],
            )
            await recorder.start(life.stopping)
            life.on_close(recorder.close)
            recorders.append(recorder)
        c = cfg.control
        limits = Limits(
            max_range_us=round(c.replay_max_range_hours * 3.6e9),
            max_events=c.replay_max_events,
            rate_per_second=c.replay_rate_per_second,
            stale_after_us=round(c.replay_stale_after_seconds * 1e6),
            store_ttl_seconds=cfg.cassandra.ttl_seconds,
        )
        replays = ReplayManager(events, deliveries, subscriptions, operations, publisher, limits)
        life.on_close(replays.close)  # before the publisher and the store close: jobs record their interruption
        retention_us = cfg.cassandra.ttl_seconds * 1_000_000
        dead_letters = DeadLetterManager(operations, events, publisher, retention_us=retention_us)
        life.on_close(dead_letters.close)  # before the publisher and the store close: redrives under way end
        services = [
            Service(
                "webhooks.v1.Subscriptions",
                subscriptions_pb2_grpc.add_SubscriptionsServicer_to_server,
                SubscriptionsServicer(manager),
            ),
            Service("webhooks.v1.Replay", replay_pb2_grpc.add_ReplayServicer_to_server, ReplayServicer(replays)),
            Service(
                "webhooks.v1.DeadLetters",
                dead_letters_pb2_grpc.add_DeadLettersServicer_to_server,
                DeadLettersServicer(dead_letters),
            ),
        ]
        await life.enter(GrpcServer(c.host, c.port, services))
        log.info("control ready")
        await life.until_stopped()
        log.info("control stopping")
        # Each acks what it recorded; what it had not started goes back to its queue.
        await asyncio.gather(*(recorder.stop(RECORDER_DRAIN_SECONDS) for recorder in recorders))


def main(argv: list[str] | None = None) -> int:
    return service_main("control", run, argv)
