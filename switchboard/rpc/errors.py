"""The one place that maps Switchboard's error tree to gRPC statuses.

Servicers stay thin: they decode, call domain code and encode. Domain code raises ``switchboard.errors``;
``ErrorInterceptor`` turns it into a status with a ``google.rpc.Status`` carrying an ``ErrorInfo`` (reason,
domain, metadata) in ``grpc-status-details-bin``, which Envoy's transcoder turns into the JSON error body
callers see. Anything else is logged and answered INTERNAL, without its text.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from switchboard import errors
from switchboard.errors import ERROR_DOMAIN

log = logging.getLogger(__name__)

# At most one "rpc failed" line per method and reason this often (seconds; ``FailureLog``).
FAILURE_LOG_EVERY = 10.0

# An error's text and metadata travel in trailers (the message twice: percent-encoded in grpc-message and in the
# base64 details), and gRPC refuses a call whose metadata passes 8 KB at random and 16 KB always: a message that
# quoted a caller's 4 KB id came back RESOURCE_EXHAUSTED, not its own status. UTF-8 bytes; at most ~4.5 KB of
# trailers in all.
MAX_MESSAGE_BYTES = 512
MAX_METADATA_KEY_BYTES = 64
MAX_METADATA_VALUE_BYTES = 128
MAX_METADATA_ENTRIES = 8

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


def clip(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` UTF-8 bytes: cut at a character boundary and ended with '...' if longer."""
    raw = text.encode("utf-8", "replace")
    if len(raw) <= limit:
        return text
    return raw[: limit - 3].decode("utf-8", "ignore") + "..."


def status_details(code: grpc.StatusCode, message: str, reason: str, metadata: dict[str, str]) -> bytes:
    info = error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata)
    packed = any_pb2.Any()
    packed.Pack(info)
    status = status_pb2.Status(code=code.value[0], message=message, details=[packed])
    return bytes(status.SerializeToString())


class FailureLog:
    """The "rpc failed" line of an outage (UNAVAILABLE, INTERNAL), at most one per method and reason every
    ``every`` seconds, the next one saying how many it left out: during a broker outage every webhook failed and
    logged a line (~1,500 a second on a box already degraded); the metrics count each failure."""

    def __init__(self, every: float = FAILURE_LOG_EVERY) -> None:
        self.every = every
        self._last: dict[tuple[str, str], tuple[float, int]] = {}  # -> (logged at, left out since)

    def failed(self, method: str, exc: errors.SwitchboardError) -> None:
        key, now = (method, exc.reason), time.monotonic()
        logged_at, left_out = self._last.get(key, (-math.inf, 0))
        if now - logged_at < self.every:
            self._last[key] = (logged_at, left_out + 1)
            return
        self._last[key] = (now, 0)
        extra = {"method": method, "reason": exc.reason, "error": exc.message, "left_out": left_out}
        log.warning("rpc failed", extra=extra)


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps ``SwitchboardError`` to a gRPC status with details; anything else becomes INTERNAL, logged. Unary
    calls and server streams alike (a stream's error ends it with the status)."""

    def __init__(self) -> None:
        self.failures = FailureLog()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        deserializer = _tolerant(handler.request_deserializer)
        if handler.unary_unary is not None:
            unary = handler.unary_unary

            async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    if request is UNDECODABLE:
                        raise _undecodable(method)
                    return await unary(request, context)
                except Exception as exc:
                    await _abort(context, method, exc, self.failures)

            return grpc.unary_unary_rpc_method_handler(
                guarded, request_deserializer=deserializer, response_serializer=handler.response_serializer
            )
        if handler.unary_stream is not None:
            stream = handler.unary_stream

            async def guarded_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                try:
                    if request is UNDECODABLE:
                        raise _undecodable(method)
                    async for item in stream(request, context):
                        yield item
                except Exception as exc:
                    await _abort(context, method, exc, self.failures)

            return grpc.unary_stream_rpc_method_handler(
                guarded_stream, request_deserializer=deserializer, response_serializer=handler.response_serializer
            )
        return handler


UNDECODABLE = object()
"""What ``_tolerant`` hands the handler for a request that does not decode: the guard answers it."""


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """The handler's request decoder, giving ``UNDECODABLE`` instead of raising. Left to gRPC, a request that is not
    the method's message (a string field that is not UTF-8, truncated bytes) was answered UNKNOWN with the
    parser's text."""
    if deserializer is None:
        return None

    def decode(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception:
            return UNDECODABLE

    return decode


def _undecodable(method: str) -> errors.InvalidRequest:
    return errors.InvalidRequest(
        f"the request is not a valid {method.rsplit('/', 1)[-1]} message (e.g. a string that is not UTF-8)",
        reason="REQUEST_UNDECODABLE",
    )


async def _abort(context: grpc.aio.ServicerContext, method: str, exc: Exception, failures: FailureLog) -> None:
    if isinstance(exc, asyncio.CancelledError | grpc.aio.AbortError):
        raise exc
    if isinstance(exc, errors.SwitchboardError):
        code = status_code_for(exc)
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL):
            failures.failed(method, exc)
        message = clip(exc.public, MAX_MESSAGE_BYTES)
        metadata = {
            clip(k, MAX_METADATA_KEY_BYTES): clip(v, MAX_METADATA_VALUE_BYTES)
            for k, v in list(exc.metadata.items())[:MAX_METADATA_ENTRIES]
        }
        details = status_details(code, message, exc.reason, metadata)
        await context.abort(code, message, trailing_metadata=(("grpc-status-details-bin", details),))
    log.exception("unhandled error", extra={"method": method}, exc_info=exc)
    details = status_details(grpc.StatusCode.INTERNAL, "internal error", "INTERNAL", {})
    await context.abort(
        grpc.StatusCode.INTERNAL, "internal error", trailing_metadata=(("grpc-status-details-bin", details),)
    )
