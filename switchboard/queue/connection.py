"""Connecting to RabbitMQ, waiting (with back-off and a log line per attempt) until it answers, and the one
publish-with-confirm every publisher uses."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aio_pika
import aiormq
from aio_pika.abc import AbstractExchange, AbstractRobustConnection

from switchboard.backoff import Backoff
from switchboard.errors import BrokerUnavailable
from switchboard.observability.metrics import BROKER_PUBLISH_FAILURES, confirm_timer

log = logging.getLogger(__name__)
T = TypeVar("T")

CONNECT_BACKOFF = Backoff(0.5, 5.0)
# What aio-pika/aiormq raise when the connection or channel fails; they never leave this package.
DRIVER_ERRORS = (aiormq.exceptions.AMQPError, aio_pika.exceptions.AMQPError, OSError, RuntimeError)


async def with_backoff(
    attempt: Callable[[], Awaitable[T]],
    *,
    purpose: str,
    stopped: Callable[[], bool],
    retry_on: tuple[type[BaseException], ...] = (Exception,),
) -> tuple[T, int] | None:
    """Runs ``attempt`` (open a connection and what goes on it) until it returns, waiting ``CONNECT_BACKOFF``
    between failures, each logged; returns what it returned and the number of attempts made, or None once
    ``stopped()`` is true after a failure or a wait. A failure that is not one of ``retry_on`` is raised. Every
    wait for the broker (aio-pika's ``connect``, the publisher's and the worker's pika connections, at start
    and on reconnect) goes through here."""
    for number, delay in enumerate(CONNECT_BACKOFF.delays(), start=1):
        try:
            return await attempt(), number
        except retry_on as exc:
            log.warning(
                "waiting for RabbitMQ",
                extra={
                    "purpose": purpose,
                    "attempt": number,
                    "error": f"{exc.__class__.__name__}: {exc}",
                    "retry_in": delay,
                },
            )
        if stopped():
            return None
        await asyncio.sleep(delay)
        if stopped():
            return None
    raise AssertionError("unreachable")  # pragma: no cover


async def connect(
    url: str, *, purpose: str, stop: asyncio.Event | None = None, heartbeat: int | None = None
) -> AbstractRobustConnection:
    """A robust (self-reconnecting) connection, retried until the broker answers or ``stop`` is set.
    ``heartbeat`` (seconds) bounds how long the broker takes to notice this process frozen or cut off."""
    opened = await with_backoff(
        lambda: aio_pika.connect_robust(
            url, client_properties={"connection_name": purpose}, timeout=5, heartbeat=heartbeat
        ),
        purpose=purpose,
        stopped=lambda: stop is not None and stop.is_set(),
        retry_on=(TimeoutError, OSError, aiormq.exceptions.AMQPError),
    )
    if opened is None:
        raise BrokerUnavailable("stopped while waiting for RabbitMQ")
    connection, attempts = opened
    log.info("connected to RabbitMQ", extra={"purpose": purpose, "attempt": attempts})
    return connection


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


def not_sent(exchange: str, why: str) -> BrokerUnavailable:
    """The error of a publish to ``exchange`` refused before anything was sent (no connection, or the broker
    blocks publishers), counted with the publishes not confirmed: during an outage nothing reaches
    ``confirmed``, and the failure counter stayed at 0 while ingest answered 503 to every request."""
    BROKER_PUBLISH_FAILURES.labels(exchange).inc()
    return BrokerUnavailable(why)


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
