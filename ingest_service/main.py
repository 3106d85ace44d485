"""Ingest service entry point: ``python -m ingest_service --config FILE``."""

from __future__ import annotations

import argparse
import logging

from webhooks.v1 import ingest_pb2_grpc

from ingest_service.ingestor import Ingestor, Source
from ingest_service.servicer import IngestServicer
from switchboard.config import PlatformConfig
from switchboard.errors import ConfigError
from switchboard.rpc.server import GrpcServer, Service
from switchboard.runtime.service import serve, service_main
from switchboard.signatures import build_verifier
from switchboard.streams import EventPublisher

log = logging.getLogger(__name__)


def build_sources(cfg: PlatformConfig) -> dict[str, Source]:
    """Every configured source with its verifier; raises ConfigError (naming the source) if any is unsafe."""
    if not cfg.sources:
        raise ConfigError("no sources configured: ingest would reject every request")
    return {s.name: Source(s, build_verifier(s)) for s in cfg.sources}


async def run(cfg: PlatformConfig, _args: argparse.Namespace) -> None:
    sources = build_sources(cfg)
    async with serve() as life:
        publisher = EventPublisher(cfg, purpose="ingest-publisher", confirm_timeout=cfg.ingest.confirm_timeout_seconds)
        await publisher.start(life.stopping)
        life.on_close(publisher.close)
        ingestor = Ingestor(sources, publisher, default_source=cfg.edge.default_source)
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
