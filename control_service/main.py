"""Control service entry point: ``python -m control_service --config FILE``."""

from __future__ import annotations

import argparse
import logging

from webhooks.v1 import subscriptions_pb2_grpc

from control_service.servicer import SubscriptionsServicer
from control_service.subscriptions import Rules, SubscriptionManager
from switchboard.config import PlatformConfig
from switchboard.delivery.sender import Sender
from switchboard.rpc.server import GrpcServer, Service
from switchboard.runtime.service import serve, service_main
from switchboard.store import DeliveryStore, SubscriptionStore, open_store
from switchboard.streams import changes_exchange
from switchboard.subscription_cache import ChangeNotices

log = logging.getLogger(__name__)


def rules(cfg: PlatformConfig) -> Rules:
    d = cfg.delivery
    return Rules(
        sources=[s.name for s in cfg.sources],
        event_types={s.name: s.event_types for s in cfg.sources},
        allow_http_hosts=d.allow_http_hosts,
        allow_networks=d.allow_networks,
        default_timeout_ms=round(d.timeout_seconds * 1000),
        secret_overlap_us=round(d.secret_overlap_seconds * 1_000_000),
    )


async def run(cfg: PlatformConfig, _args: argparse.Namespace) -> None:
    box = cfg.delivery.secret_box()
    async with serve() as life:
        store = await life.enter(open_store(cfg.cassandra, create_schema=True))
        notices = ChangeNotices(cfg.rabbitmq.amqp_url, changes_exchange(cfg), purpose="control-notices")
        await notices.start(life.stopping)
        life.on_close(notices.close)
        d = cfg.delivery
        prober = Sender(allow_http_hosts=d.allow_http_hosts, allow_networks=d.allow_networks, ca_file=d.ca_file)
        await prober.start()
        life.on_close(prober.close)
        manager = SubscriptionManager(
            rules(cfg), SubscriptionStore(store, box), DeliveryStore(store), notices, prober=prober
        )
        servicer = SubscriptionsServicer(manager)
        add = subscriptions_pb2_grpc.add_SubscriptionsServicer_to_server
        await life.enter(
            GrpcServer(cfg.control.host, cfg.control.port, [Service("webhooks.v1.Subscriptions", add, servicer)])
        )
        log.info("control ready")
        await life.until_stopped()
        log.info("control stopping")


def main(argv: list[str] | None = None) -> int:
    return service_main("control", run, argv)
