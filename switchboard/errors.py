"""Switchboard's own error tree.

Adapters (RabbitMQ, Cassandra, HTTP) translate driver exceptions into these at their boundary; one gRPC
interceptor maps them to status codes (``switchboard.rpc.errors``), and the command line and the local stack
report them. Every error carries a stable ``reason`` (UPPER_SNAKE_CASE, sent to clients in
``google.rpc.ErrorInfo`` with ``domain = ERROR_DOMAIN``) and optional ``metadata`` that must never contain
secrets. ``message`` is what the logs say; ``public`` is what a caller is told, the message itself unless the
adapter gave a text without the driver's detail (a Cassandra timeout names the nodes' addresses: the log
keeps them, the caller gets the error's kind).

::

    SwitchboardError                  INTERNAL            gRPC INTERNAL
    ├── ConfigError                   INVALID_CONFIG      FAILED_PRECONDITION; services refuse to start (exit 2)
    ├── InvalidRequest                INVALID_REQUEST     INVALID_ARGUMENT (400)
    │   └── PayloadTooLarge           PAYLOAD_TOO_LARGE   INVALID_ARGUMENT (413 at the edge)
    ├── SignatureError                SIGNATURE_INVALID   UNAUTHENTICATED (401); reason names the check
    ├── Unauthenticated               UNAUTHENTICATED     UNAUTHENTICATED (401): no verified caller
    ├── PermissionDenied              PERMISSION_DENIED   PERMISSION_DENIED (403)
    ├── FailedPrecondition            FAILED_PRECONDITION FAILED_PRECONDITION (400): not in a state to do it
    ├── NotFound                      NOT_FOUND           NOT_FOUND (404)
    │   └── UnknownSource             UNKNOWN_SOURCE
    ├── Unavailable                   UNAVAILABLE         UNAVAILABLE (503): retry later
    │   ├── BrokerUnavailable         BROKER_UNAVAILABLE
    │   └── StoreUnavailable          STORE_UNAVAILABLE
    ├── CorruptData                   DATA_CORRUPT        INTERNAL: a stored value that cannot be decoded
    └── StackError                    STACK_FAILED        the local stack could not start or keep a component up
"""

from __future__ import annotations

from collections.abc import Mapping

# The ``domain`` of every google.rpc.ErrorInfo the services and the edge send.
ERROR_DOMAIN = "switchboard"


class SwitchboardError(Exception):
    """Base of every error Switchboard raises on purpose."""

    reason = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        public: str | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.public = message if public is None else public
        if reason is not None:
            self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})


class ConfigError(SwitchboardError):
    """The configuration is unsafe or invalid; services refuse to start."""

    reason = "INVALID_CONFIG"


class InvalidRequest(SwitchboardError):
    """The request is malformed (400)."""

    reason = "INVALID_REQUEST"


class PayloadTooLarge(InvalidRequest):
    """The body is over the source's limit (413 at the edge)."""

    reason = "PAYLOAD_TOO_LARGE"


class SignatureError(SwitchboardError):
    """The request's signature or timestamp did not verify (401). ``reason`` names the failed check."""

    reason = "SIGNATURE_INVALID"


class Unauthenticated(SwitchboardError):
    """The caller is not identified (401): a management request without a verified client."""

    reason = "UNAUTHENTICATED"


class PermissionDenied(SwitchboardError):
    """The caller may not do this (403)."""

    reason = "PERMISSION_DENIED"


class FailedPrecondition(SwitchboardError):
    """The request is well formed but the system is not in a state to do it (e.g. a purge without confirm)."""

    reason = "FAILED_PRECONDITION"


class NotFound(SwitchboardError):
    """The thing asked for does not exist (404)."""

    reason = "NOT_FOUND"


class UnknownSource(NotFound):
    """No source of that name is configured (404)."""

    reason = "UNKNOWN_SOURCE"


class Unavailable(SwitchboardError):
    """A backend could not do its part in time; the caller should retry (503)."""

    reason = "UNAVAILABLE"


class BrokerUnavailable(Unavailable):
    reason = "BROKER_UNAVAILABLE"


class StoreUnavailable(Unavailable):
    reason = "STORE_UNAVAILABLE"


class CorruptData(SwitchboardError):
    """A stored value cannot be decoded (a damaged row, or one written by a newer version)."""

    reason = "DATA_CORRUPT"


class StackError(SwitchboardError):
    """The local stack could not start a component, or one it supervises keeps exiting."""

    reason = "STACK_FAILED"
