"""Connecting to RabbitMQ, waiting (with back-off and a log line per attempt) until it answers, and the one
publish-with-confirm every publisher uses."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable

import aio_pika
import aiormq
from aio_pika.abc import AbstractExchange, AbstractRobustConnection

from switchboard.backoff import Backoff
from switchboard.errors import BrokerUnavailable
from switchboard.observability.metrics import BROKER_PUBLISH_FAILURES, confirm_timer

log = logging.getLogger(__name__)

CONNECT_BACKOFF = Backoff(0.5, 5.0)
# What aio-pika/aiormq raise when the connection or channel fails; they never leave this package.
DRIVER_ERRORS = (aiormq.exceptions.AMQPError, aio_pika.exceptions.AMQPError, OSError, RuntimeError)


async def connect(
    url: str, *, purpose: str, stop: asyncio.Event | None = None, heartbeat: int | None = None
) -> AbstractRobustConnection:
    """A robust (self-reconnecting) connection, retried until the broker answers or ``stop`` is set.
    ``heartbeat`` (seconds) bounds how long the broker takes to notice this process frozen or cut off."""
    for attempt, delay in enumerate(CONNECT_BACKOFF.delays(), start=1):
        try:
            conn: AbstractRobustConnection = await aio_pika.connect_robust(
                url, client_properties={"connection_name": purpose}, timeout=5, heartbeat=heartbeat
            )
            log.info("connected to RabbitMQ", extra={"purpose": purpose, "attempt": attempt})
            return conn
        except (TimeoutError, OSError, aiormq.exceptions.AMQPError) as exc:
            log.warning(
                "waiting for RabbitMQ",
                extra={
                    "purpose": purpose,
                    "attempt": attempt,
                    "error": f"{type(exc).__name__}: {exc}",
                    "retry_in": delay,
                },
            )
            if stop is not None and stop.is_set():
                raise BrokerUnavailable("stopped while waiting for RabbitMQ") from None
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


async def publish_confirmed(
    exchange: AbstractExchange, routing_key: str, message: aio_pika.Message, confirm_timeout: float
) -> None:
    """Publishes ``message`` (mandatory) and returns once the broker confirmed it; ``BrokerUnavailable`` if it
    did not within ``confirm_timeout``, refused it, or the connection failed. The time to the confirm goes to
    ``switchboard_broker_confirm_seconds``, failures to ``switchboard_broker_publish_failures_total``."""
    await confirmed(exchange.name, _acked(exchange.publish(message, routing_key, mandatory=True)), confirm_timeout)


async def _acked(publishing: Awaitable[object]) -> None:
    """Awaits an aio-pika publish on a channel with publisher confirms: returns on a ``Basic.Ack``, raises
    ``BrokerUnavailable`` if the broker refused or returned the message or the connection failed."""
    try:
        confirmation = await publishing
    except TimeoutError:  # an OSError too: ``confirmed`` reports it as the timeout it is
        raise
    except DRIVER_ERRORS as exc:
        raise BrokerUnavailable(f"broker refused or lost the message: {type(exc).__name__}") from None
    if not isinstance(confirmation, aiormq.spec.Basic.Ack):
        raise BrokerUnavailable(f"broker did not accept the message: {type(confirmation).__name__}")


async def confirmed(exchange: str, confirming: Awaitable[None], confirm_timeout: float) -> None:
    """Awaits ``confirming``, which returns once the broker acked a message published to ``exchange`` and raises
    ``BrokerUnavailable`` if it refused or lost it, as ``publish_confirmed`` describes: ``BrokerUnavailable``
    too if that takes longer than ``confirm_timeout``. Every publisher's confirm goes through here: the
    failures are counted and the time to the confirm observed once, for aio-pika's and pika's alike."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(confirm_timeout):
            await confirming
    except TimeoutError:
        BROKER_PUBLISH_FAILURES.labels(exchange).inc()
        raise BrokerUnavailable(f"broker did not confirm within {confirm_timeout:g} s") from None
    except BrokerUnavailable:
        BROKER_PUBLISH_FAILURES.labels(exchange).inc()
        raise
    confirm_timer(exchange).observe(time.perf_counter() - started)
