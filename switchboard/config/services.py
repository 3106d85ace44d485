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
    # How long Receive waits for the broker's confirm before answering UNAVAILABLE.
    confirm_timeout_seconds: float = 2.0


@dataclass(frozen=True)
class QueryConfig:
    host: str = "127.0.0.1"
    port: int = 50052


def parse_ingest(raw: Mapping[str, Any]) -> IngestConfig:
    t = Table(raw, "ingest", IngestConfig)
    return IngestConfig(
        host=t.ip("host"), port=t.port("port"), confirm_timeout_seconds=t.pos_float("confirm_timeout_seconds")
    )


def parse_query(raw: Mapping[str, Any]) -> QueryConfig:
    t = Table(raw, "query", QueryConfig)
    return QueryConfig(host=t.ip("host"), port=t.port("port"))
