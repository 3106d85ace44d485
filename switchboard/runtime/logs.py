"""Structured (one JSON object per line) logging for every service. Loggers are named by ``__name__``."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class _UndecodableMetadata(logging.Filter):
    """gRPC decodes a request header value that is not UTF-8 as latin-1 and logs it first, whole, at ERROR with
    a traceback (``grpc._cython.cygrpc``, "Invalid encoding on ..."): one byte of 0x80 or more in a webhook's
    ``Authorization`` header put the credential in the service's log. The record stays, without the value."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith("Invalid encoding on"):
            record.msg, record.args, record.exc_info, record.exc_text = _UNDECODABLE, (), None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


_UNDECODABLE = "a request header value is not UTF-8: gRPC decoded it as latin-1 (the value is not logged)"
_GRPC_CORE_LOGGER = "grpc._cython.cygrpc"


def hide_undecodable_metadata() -> None:
    """Installs ``_UndecodableMetadata`` on gRPC's logger (once)."""
    grpc_logger = logging.getLogger(_GRPC_CORE_LOGGER)
    if not any(isinstance(f, _UndecodableMetadata) for f in grpc_logger.filters):
        grpc_logger.addFilter(_UndecodableMetadata())


def setup_logging(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    hide_undecodable_metadata()
    # Drivers are chatty at INFO (reconnect attempts are logged by us, with context).
    for noisy in ("cassandra", "aiormq", "aio_pika", "pika"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
