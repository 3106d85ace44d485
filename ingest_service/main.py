"""Ingest service entry point: ``python -m ingest_service --config FILE``."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterable
from typing import Any

from webhooks.v1 import ingest_pb2_grpc

from ingest_service.ingestor import Accepted, Ingestor, Source
from ingest_service.servicer import IngestServicer
from switchboard.config import PlatformConfig
from switchboard.errors import ConfigError
from switchboard.observability.hooks import IngestMetrics, metrics_endpoint
from switchboard.observability.tracing import setup_tracing
from switchboard.rpc.server import GrpcServer, Service
from switchboard.runtime.service import serve, service_main
from switchboard.signatures import build_verifier, check_distinct_secrets
from switchboard.streams import EventPublisher

log = logging.getLogger(__name__)


def build_sources(cfg: PlatformConfig) -> dict[str, Source]:
    """Every configured source with its verifier; raises ConfigError (naming the source) if any is unsafe."""
    if not cfg.sources:
        raise ConfigError("no sources configured: ingest would reject every request")
    sources = {s.name: Source(s, build_verifier(s)) for s in cfg.sources}
    check_distinct_secrets(cfg.sources)
    return sources


class MeteredIngestor(Ingestor):
    """Counts every event accepted and every request rejected (by source and reason) for the metrics."""

    def __init__(self, *args: Any, metrics: IngestMetrics, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.metrics = metrics

    async def receive(
        self, source_name: str, metadata: Iterable[tuple[str, str | bytes]], body: bytes, content_type: str
    ) -> Accepted:
        try:
            accepted = await super().receive(source_name, metadata, body, content_type)
        except Exception as exc:
            self.metrics.rejected(source_name, exc)
            raise
        self.metrics.accepted(source_name)
        return accepted


async def run(cfg: PlatformConfig, _args: argparse.Namespace) -> None:
    sources = build_sources(cfg)
    async with serve() as life:
        tracer, flush_spans = setup_tracing("switchboard-ingest", cfg.tracing)
        life.push(flush_spans)  # last: after the server and the publisher stopped
        await life.enter(metrics_endpoint(cfg.metrics, "ingest"))
        publisher = EventPublisher(cfg, purpose="ingest-publisher", confirm_timeout=cfg.ingest.confirm_timeout_seconds)
        await publisher.start(life.stopping)
        life.on_close(publisher.close)
        ingestor = MeteredIngestor(
            sources,
            publisher,
            default_source=cfg.edge.default_source,
            metrics=IngestMetrics(sources, cfg.edge.default_source),
            tracer=tracer,
        )
        servicer = IngestServicer(ingestor)
        await life.enter(
            GrpcServer(
                cfg.ingest.host,
                cfg.ingest.port,
                [Service("webhooks.v1.Ingest", ingest_pb2_grpc.add_IngestServicer_to_server, servicer)],
            )
        )
        log.info("ingest ready", extra={"sources": sorted(sources), "default_source": cfg.edge.default_source})
        await life.until_stopped()
        log.info("ingest stopping")


def main(argv: list[str] | None = None) -> int:
    return service_main("ingest", run, argv)
