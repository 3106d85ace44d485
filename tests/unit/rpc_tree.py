"""Every error of ``switchboard.errors`` with the gRPC status it must become (one table for the servicer
tests). A new error class without a row here fails those tests: mapping it is a decision, not a default."""

from __future__ import annotations

import grpc

from switchboard import errors
from switchboard.delivery.urls import ForbiddenDestination

EXPECTED: dict[type[errors.SwitchboardError], grpc.StatusCode] = {
    errors.SwitchboardError: grpc.StatusCode.INTERNAL,
    errors.ConfigError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    errors.PayloadTooLarge: grpc.StatusCode.INVALID_ARGUMENT,
    ForbiddenDestination: grpc.StatusCode.INVALID_ARGUMENT,
    errors.SignatureError: grpc.StatusCode.UNAUTHENTICATED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.UnknownSource: grpc.StatusCode.NOT_FOUND,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.BrokerUnavailable: grpc.StatusCode.UNAVAILABLE,
    errors.StoreUnavailable: grpc.StatusCode.UNAVAILABLE,
    errors.CorruptData: grpc.StatusCode.INTERNAL,
    errors.StackError: grpc.StatusCode.INTERNAL,
}


def tree() -> list[type[errors.SwitchboardError]]:
    out: list[type[errors.SwitchboardError]] = []
    todo: list[type[errors.SwitchboardError]] = [errors.SwitchboardError]
    while todo:
        cls = todo.pop()
        out.append(cls)
        todo.extend(cls.__subclasses__())
    return sorted(out, key=lambda c: c.__name__)
