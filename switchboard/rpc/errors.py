"""The one place that maps Switchboard's error tree to gRPC statuses.

Servicers stay thin: they decode, call domain code and encode. Domain code raises ``switchboard.errors``;
``ErrorInterceptor`` turns it into a status with a ``google.rpc.Status`` carrying an ``ErrorInfo`` (reason,
domain, metadata) in ``grpc-status-details-bin``, which Envoy's transcoder turns into the JSON error body
callers see. Anything else is logged and answered INTERNAL, without its text.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from switchboard import errors
from switchboard.errors import ERROR_DOMAIN

log = logging.getLogger(__name__)

_CODES: list[tuple[type[errors.SwitchboardError], grpc.StatusCode]] = [
    (errors.SignatureError, grpc.StatusCode.UNAUTHENTICATED),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
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
    """Maps ``SwitchboardError`` to a gRPC status with details; anything else becomes INTERNAL, logged. Unary
    calls and server streams alike (a stream's error ends it with the status)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        if handler.unary_unary is not None:
            unary = handler.unary_unary

            async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    return await unary(request, context)
                except Exception as exc:
                    await _abort(context, method, exc)

            return grpc.unary_unary_rpc_method_handler(
                guarded,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            stream = handler.unary_stream

            async def guarded_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                try:
                    async for item in stream(request, context):
                        yield item
                except Exception as exc:
                    await _abort(context, method, exc)

            return grpc.unary_stream_rpc_method_handler(
                guarded_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


async def _abort(context: grpc.aio.ServicerContext, method: str, exc: Exception) -> None:
    if isinstance(exc, asyncio.CancelledError | grpc.aio.AbortError):
        raise exc
    if isinstance(exc, errors.SwitchboardError):
        code = status_code_for(exc)
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL):
            log.warning("rpc failed", extra={"method": method, "reason": exc.reason, "error": exc.message})
        details = status_details(code, exc.message, exc.reason, exc.metadata)
        await context.abort(code, exc.message, trailing_metadata=(("grpc-status-details-bin", details),))
    log.exception("unhandled error", extra={"method": method}, exc_info=exc)
    details = status_details(grpc.StatusCode.INTERNAL, "internal error", "INTERNAL", {})
    await context.abort(
        grpc.StatusCode.INTERNAL, "internal error", trailing_metadata=(("grpc-status-details-bin", details),)
    )
