"""gRPC server bootstrap shared by every service: one error interceptor, health checking, server
reflection and a graceful stop on SIGTERM/SIGINT.

Servicers stay thin: they decode, call domain code and encode. Domain code raises the
``switchboard.errors`` tree; ``ErrorInterceptor`` is the single place that maps it to gRPC statuses, with a
``google.rpc.Status`` carrying an ``ErrorInfo`` (reason, metadata) in ``grpc-status-details-bin`` so that
Envoy's transcoder turns it into the JSON error body providers see.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from switchboard import errors

log = logging.getLogger(__name__)

ERROR_DOMAIN = "switchboard"

_CODES: list[tuple[type[errors.SwitchboardError], grpc.StatusCode]] = [
    (errors.SignatureError, grpc.StatusCode.UNAUTHENTICATED),
    (errors.InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.ConfigError, grpc.StatusCode.FAILED_PRECONDITION),
]


def status_code_for(exc: errors.SwitchboardError) -> grpc.StatusCode:
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


def status_details(code: grpc.StatusCode, message: str, reason: str, metadata: dict[str, str]) -> bytes:
    info = error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata)
    packed = any_pb2.Any()
    packed.Pack(info)
    status = status_pb2.Status(code=code.value[0], message=message, details=[packed])
    return bytes(status.SerializeToString())


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps ``SwitchboardError`` to a gRPC status with details; anything else becomes INTERNAL, logged."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary
        method = handler_call_details.method

        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await inner(request, context)
            except errors.SwitchboardError as exc:
                code = status_code_for(exc)
                if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL):
                    log.warning("rpc failed", extra={"method": method, "reason": exc.reason, "error": exc.message})
                details = status_details(code, exc.message, exc.reason, exc.metadata)
                await context.abort(code, exc.message, trailing_metadata=(("grpc-status-details-bin", details),))
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception:
                log.exception("unhandled error", extra={"method": method})
                details = status_details(grpc.StatusCode.INTERNAL, "internal error", "INTERNAL", {})
                await context.abort(
                    grpc.StatusCode.INTERNAL,
                    "internal error",
                    trailing_metadata=(("grpc-status-details-bin", details),),
                )

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


@dataclass(frozen=True)
class Service:
    """One servicer to mount: ``add`` is the generated ``add_XServicer_to_server``."""

    name: str  # full name, e.g. "webhooks.v1.Query"
    add: Callable[[Any, grpc.aio.Server], None]
    servicer: Any


class GrpcServer:
    def __init__(self, host: str, port: int, services: Iterable[Service], *, grace_seconds: float = 5.0) -> None:
        self.services = list(services)
        self.grace = grace_seconds
        self.server = grpc.aio.server(
            interceptors=[ErrorInterceptor()],
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", 16 * 1024 * 1024),
                ("grpc.max_concurrent_streams", 1000),
            ],
        )
        self.health = health.aio.HealthServicer()
        for svc in self.services:
            svc.add(svc.servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = [s.name for s in self.services]
        reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server)
        self.address = f"{host}:{port}"
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


def install_stop_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
