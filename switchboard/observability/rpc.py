"""The gRPC server interceptor that counts and times every unary and server-streaming RPC
(``grpc_server_handled_total{grpc_service, grpc_method, grpc_code}``, ``grpc_server_handling_seconds``).

It sits outside the error interceptor (first in the server's list), so it sees the status that interceptor
chose: ``grpc_code`` is the gRPC status name (OK, INVALID_ARGUMENT, UNAUTHENTICATED, UNAVAILABLE, ...).
Streaming requests (server reflection) pass through unmeasured.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import grpc
from google.protobuf import descriptor_pool

from switchboard.observability import metrics as m


class _Method:
    """The bound children of one method: its latency histogram and a counter per status code seen."""

    __slots__ = ("codes", "labels", "seconds")

    def __init__(self, full_method: str) -> None:
        service, _, method = full_method.lstrip("/").rpartition("/")
        self.labels = (service or "unknown", method)
        self.seconds = m.RPC_SECONDS.labels(*self.labels)
        self.codes: dict[str, Any] = {"OK": m.RPC_HANDLED.labels(*self.labels, "OK")}

    def done(self, code: str, seconds: float) -> None:
        child = self.codes.get(code)
        if child is None:
            child = self.codes[code] = m.RPC_HANDLED.labels(*self.labels, code)
        child.inc()
        self.seconds.observe(seconds)


def _status(context: grpc.aio.ServicerContext, exc: BaseException | None) -> str:
    """The status the call ends with: the code set on the context (by ``abort`` or ``set_code``), else
    CANCELLED for a cancelled call, UNKNOWN for an escaped exception, OK."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    if isinstance(code, int):
        for status in grpc.StatusCode:
            if status.value[0] == code:
                return str(status.name)
    if exc is None:
        return "OK"
    return "CANCELLED" if isinstance(exc, asyncio.CancelledError) else "UNKNOWN"


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self) -> None:
        self._methods: dict[str, _Method] = {}

    def expect(self, services: Iterable[str]) -> None:
        """Binds the series of every method of ``services`` (full names, e.g. ``webhooks.v1.Ingest``) now, so
        that they exist at 0 before the first call: a rate over a series that appears with its first calls
        already counted would miss them."""
        pool = descriptor_pool.Default()
        for service in services:
            try:
                methods = pool.FindServiceByName(service).methods
            except KeyError:  # not in the default pool: bound on its first call instead
                continue
            for method in methods:
                name = f"/{service}/{method.name}"
                self._methods.setdefault(name, _Method(name))

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        name = handler_call_details.method
        method = self._methods.get(name)
        if method is None:
            method = self._methods[name] = _Method(name)
        if handler.unary_unary is not None:
            unary = handler.unary_unary

            async def timed(request: Any, context: grpc.aio.ServicerContext) -> Any:
                started = time.perf_counter()
                failure: BaseException | None = None
                try:
                    return await unary(request, context)
                except BaseException as exc:
                    failure = exc
                    raise
                finally:
                    method.done(_status(context, failure), time.perf_counter() - started)

            return grpc.unary_unary_rpc_method_handler(
                timed,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            stream = handler.unary_stream

            async def timed_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                started = time.perf_counter()
                failure: BaseException | None = None
                try:
                    async for item in stream(request, context):
                        yield item
                except BaseException as exc:
                    failure = exc
                    raise
                finally:
                    method.done(_status(context, failure), time.perf_counter() - started)

            return grpc.unary_stream_rpc_method_handler(
                timed_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler
