"""``[ingest]`` and ``[query]``: where the gRPC services listen."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from switchboard.config._table import Table


@dataclass(frozen=True)
class IngestConfig:
    host: str = "127.0.0.1"
    port: int = 50051
    # How long Receive waits for the broker's confirm before answering UNAVAILABLE. At most
    # MAX_CONFIRM_TIMEOUT_SECONDS: Envoy's route waits 3 s more, and its stream idle timeout (60 s) ended longer
    # waits with its own 504 instead of ingest's 503; senders give up on a webhook long before (10-30 s).
    confirm_timeout_seconds: float = 2.0


MAX_CONFIRM_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class QueryConfig:
    host: str = "127.0.0.1"
    port: int = 50052


def parse_ingest(raw: Mapping[str, Any]) -> IngestConfig:
    t = Table(raw, "ingest", IngestConfig)
    return IngestConfig(
        host=t.ip("host"),
        port=t.port("port"),
        confirm_timeout_seconds=t.pos_float("confirm_timeout_seconds", at_most=MAX_CONFIRM_TIMEOUT_SECONDS),
    )


def parse_query(raw: Mapping[str, Any]) -> QueryConfig:
    t = Table(raw, "query", QueryConfig)
    return QueryConfig(host=t.ip("host"), port=t.port("port"))
