"""Delivery worker entry point: ``python -m delivery_service --config FILE``."""

from __future__ import annotations

import argparse
import asyncio
import logging

from delivery_service import failpoints
from delivery_service.limiter import Limiter
from delivery_service.pipeline import FORGET_EVERY_S, Defaults, DeliveryPipeline
from switchboard.config import PlatformConfig
from switchboard.config.ports import platform_ports
from switchboard.delivery.breaker import Breakers, BreakerSettings
from switchboard.delivery.sender import Sender
from switchboard.delivery.signing import USER_AGENT
from switchboard.errors import BrokerUnavailable, SwitchboardError
from switchboard.model.events import now_us
from switchboard.model.subscriptions import SubscriptionStatus
from switchboard.observability import hooks as metrics
from switchboard.observability.metrics import (
    BUSY_HOSTS,
    DELIVERIES,
    DELIVERY_LATENCY,
    DELIVERY_SENDING,
    DELIVERY_WAITING,
    OPEN_CIRCUITS,
    SLOT_WAITS,
)
from switchboard.observability.tracing import setup_tracing
from switchboard.queue import QueueWorker, StatsHook, WorkerSettings
from switchboard.runtime.service import member_argument, serve, service_main
from switchboard.store import DeliveryStore, SubscriptionStore, open_store
from switchboard.streams import changes_exchange, deliveries_topology, retire_unpartitioned_deliveries
from switchboard.subscription_cache import ChangeNotices, SubscriptionCache

log = logging.getLogger(__name__)

DRAIN_SECONDS = 20.0


class AutoDisable:
    """A 410 Gone disables the subscription (with the reason) and announces the change."""

    def __init__(self, subscriptions: SubscriptionStore, cache: SubscriptionCache, notices: ChangeNotices) -> None:
        self.subscriptions = subscriptions
        self.cache = cache
        self.notices = notices

    async def disable(self, subscription_id: str, reason: str, callback_url: str) -> bool:
        """Only while the subscription still sends to ``callback_url``, the URL that answered: a late 410 of
        the old URL disabled a subscription its client had just moved to a new one. Whether it is disabled."""
        disabled = await self.subscriptions.set_status(
            subscription_id, SubscriptionStatus.AUTO_DISABLED, reason, now_us(), only_url=callback_url
        )
        try:  # disabled, or moved: the delivery's next try sends there
            await self.cache.refresh(subscription_id)
        except SwitchboardError as exc:  # the cache's reload catches up; the send is over, and must be recorded
            log.warning(
                "subscription not refreshed after a 410", extra={"subscription": subscription_id, "error": exc.message}
            )
        if not disabled:
            log.info(
                "a 410 of an endpoint the subscription no longer sends to", extra={"subscription": subscription_id}
            )
            return False
        await self.notices.changed(subscription_id)
        log.warning("subscription disabled by its endpoint", extra={"subscription": subscription_id, "reason": reason})
        return True


async def run(cfg: PlatformConfig, args: argparse.Namespace) -> None:
    d = cfg.delivery
    box = d.secret_box()
    async with serve() as life:
        tracer, flush_spans = setup_tracing("switchboard-delivery", cfg.tracing)
        life.push(flush_spans)  # last: after the worker drained
        await life.enter(metrics.metrics_endpoint(cfg.metrics, "delivery", args.member or 0))
        store = await life.enter(open_store(cfg.cassandra, create_schema=True, stop=life.stopping))
        subscriptions = SubscriptionStore(store, box)
        cache = SubscriptionCache(subscriptions, cfg.rabbitmq.amqp_url, changes_exchange(cfg), purpose="delivery-cache")
        await cache.start(life.stopping)
        life.on_close(cache.close)
        notices = ChangeNotices(cfg.rabbitmq.amqp_url, changes_exchange(cfg), purpose="delivery-notices")
        await notices.start(life.stopping)
        life.on_close(notices.close)
        sender = Sender(
            allow_http_hosts=d.allow_http_hosts,
            allow_networks=d.allow_networks,
            reserved_ports=platform_ports(cfg),
            ca_file=d.ca_file,
            user_agent=d.user_agent or USER_AGENT,
            max_per_host=d.host_in_flight,  # the pipeline takes no more per host: none waits for a connection
            # Nor for the pool's total: the worker sends at most concurrency times batch at once (a fixed 512 made
            # sends past it wait for a connection, against their connect timeout, and time out).
            max_connections=max(512, d.concurrency * d.batch),
        )
        await sender.start()
        life.on_close(sender.close)
        breakers = Breakers(
            BreakerSettings(d.breaker_failures, d.breaker_cooldown_seconds, d.breaker_max_cooldown_seconds)
        )
        OPEN_CIRCUITS.set_function(breakers.open_count)
        pipeline = DeliveryPipeline(
            cache,
            DeliveryStore(store),
            failpoints.armed(AutoDisable(subscriptions, cache, notices)),
            sender,
            Limiter(),
            Defaults(
                timeout_ms=round(d.timeout_seconds * 1000),
                rate_limit_per_second=d.rate_limit_per_second,
                subscription_in_flight=d.subscription_in_flight,
                host_in_flight=d.host_in_flight,
                slot_wait_ms=d.slot_wait_ms,
                max_retry_after_s=d.max_retry_after_seconds,
            ),
            tracer=tracer,
            breakers=breakers,
            on_wait=lambda taken: SLOT_WAITS.labels("taken" if taken else "deferred").inc(),
        )
        DELIVERY_SENDING.set_function(pipeline.in_flight.total)
        BUSY_HOSTS.set_function(pipeline.in_flight.busy_hosts)
        DELIVERY_WAITING.set_function(pipeline.slots.total)
        for outcome in ("taken", "deferred"):
            SLOT_WAITS.labels(outcome)  # shown at 0 before the first wait
        stats = StatsHook()
        meter = metrics.WorkerMetrics("delivery", DELIVERIES, DELIVERY_LATENCY, metrics.DELIVERY_OUTCOMES)
        worker = QueueWorker(
            cfg.rabbitmq.amqp_url,
            deliveries_topology(cfg),
            pipeline,
            WorkerSettings(prefetch=d.prefetch, max_batch=d.batch, concurrency=d.concurrency, member=args.member),
            purpose="delivery-consumer",
            hooks=[stats, meter],
        )
        await worker.start(life.stopping)
        life.on_close(worker.close)
        if args.member in (None, 0):  # one mover (switchboard.queue.retire)
            try:
                await retire_unpartitioned_deliveries(cfg, purpose="delivery-retire", stop=life.stopping)
            except BrokerUnavailable as exc:  # what is left there stays until the next start moves it
                log.warning("could not move the old deliveries queue", extra={"error": exc.message})
        reporter = asyncio.create_task(stats.report_forever(worker, "delivery", cfg.processor.stats_interval_seconds))
        life.push(reporter.cancel)
        meter.watch(worker)
        depths = asyncio.create_task(metrics.poll_depths(worker))
        life.push(depths.cancel)
        forgetter = asyncio.create_task(forget_forever(pipeline))
        life.push(forgetter.cancel)
        log.info("delivery ready", extra={"subscriptions": len(cache)})
        await life.until_stopped()
        log.info("delivery stopping", extra={"in_flight": worker.in_flight})
        drained = await worker.stop(DRAIN_SECONDS)
        log.info("delivery stopped", extra={"drained": drained, "left_unacked": worker.running})


async def forget_forever(pipeline: DeliveryPipeline) -> None:
    """``DeliveryPipeline.forget_gone`` every ``FORGET_EVERY_S``: the worker's memory stays bounded by the
    subscriptions that exist, however many come and go."""
    while True:
        await asyncio.sleep(FORGET_EVERY_S)
        try:
            forgotten = pipeline.forget_gone()
        except Exception:  # a bug here must not stop the worker
            log.exception("could not drop the state of subscriptions gone")
            continue
        if forgotten:
            log.info("dropped the state of subscriptions gone", extra={"subscriptions": forgotten})


def main(argv: list[str] | None = None) -> int:
    return service_main("delivery", run, argv, add_arguments=member_argument)
