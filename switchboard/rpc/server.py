"""The gRPC server every service runs: its servicers behind the one error interceptor
(``switchboard.rpc.errors``) and the metrics interceptor (``switchboard.observability.rpc``), health checking
and server reflection (so grpcurl and ``buf curl`` work)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from switchboard import errors
from switchboard.addresses import host_port
from switchboard.config.edge import GRPC_MAX_MESSAGE_BYTES, GRPC_MAX_METADATA_BYTES
from switchboard.observability.rpc import MetricsInterceptor
from switchboard.rpc.errors import ErrorInterceptor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Service:
    """One servicer to mount: ``add`` is the generated ``add_XServicer_to_server``."""

    name: str  # full name, e.g. "webhooks.v1.Query"
    add: Callable[[Any, grpc.aio.Server], None]
    servicer: Any


# What every service's server takes: a message up to GRPC_MAX_MESSAGE_BYTES, metadata (the request headers
# Envoy passes on) up to GRPC_MAX_METADATA_BYTES, 1000 calls at once per connection.
SERVER_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE_BYTES),
    ("grpc.max_metadata_size", GRPC_MAX_METADATA_BYTES),
    ("grpc.absolute_max_metadata_size", GRPC_MAX_METADATA_BYTES),
    ("grpc.max_concurrent_streams", 1000),
]


class GrpcServer:
    def __init__(self, host: str, port: int, services: Iterable[Service], *, grace_seconds: float = 5.0) -> None:
        self.services = list(services)
        self.grace = grace_seconds
        metrics = MetricsInterceptor()
        metrics.expect(s.name for s in self.services)
        self.server = grpc.aio.server(
            # The metrics interceptor is outermost: it sees the status the error interceptor chose.
            interceptors=[metrics, ErrorInterceptor()],
            options=[("grpc.so_reuseport", 0), *SERVER_OPTIONS],
        )
        self.health = health.aio.HealthServicer()
        for svc in self.services:
            svc.add(svc.servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = [s.name for s in self.services]
        reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server)
        self.address = host_port(host, port)
        bound = self.server.add_insecure_port(self.address)
        if bound == 0:
            raise errors.ConfigError(f"cannot listen on {self.address} (port in use?)")

    async def start(self) -> None:
        await self.server.start()
        for svc in self.services:
            await self.health.set(svc.name, health_pb2.HealthCheckResponse.SERVING)
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        log.info("grpc listening", extra={"address": self.address, "services": [s.name for s in self.services]})

    async def stop(self) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.grace)

    async def __aenter__(self) -> GrpcServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
