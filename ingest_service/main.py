"""Ingest service entry point: ``python -m ingest_service --config FILE``."""

from __future__ import annotations

import asyncio
import logging

from webhooks.v1 import ingest_pb2_grpc

from edge.providers import build_verifier
from ingest_service.ingestor import Ingestor, Source
from ingest_service.servicer import IngestServicer
from switchboard.config import PlatformConfig
from switchboard.errors import ConfigError
from switchboard.grpc_server import GrpcServer, Service, install_stop_signals
from switchboard.queue import Publisher, Topology
from switchboard.service import service_main

log = logging.getLogger(__name__)


def build_sources(cfg: PlatformConfig) -> dict[str, Source]:
    """Every configured source with its verifier; raises ConfigError (naming the source) if any is unsafe."""
    if not cfg.sources:
        raise ConfigError("no sources configured: ingest would reject every request")
    return {s.name: Source(s, build_verifier(s)) for s in cfg.sources}


async def run(cfg: PlatformConfig) -> None:
    sources = build_sources(cfg)
    stop = asyncio.Event()
    install_stop_signals(stop)
    publisher = Publisher(
        cfg.rabbitmq.amqp_url,
        Topology(cfg.rabbitmq.queue_prefix),
        confirm_timeout=cfg.ingest.confirm_timeout_seconds,
    )
    await publisher.start(stop)
    ingestor = Ingestor(sources, publisher, default_source=cfg.edge.default_source)
    server = GrpcServer(
        cfg.ingest.host,
        cfg.ingest.port,
        [Service("webhooks.v1.Ingest", ingest_pb2_grpc.add_IngestServicer_to_server, IngestServicer(ingestor))],
    )
    await server.start()
    log.info("ingest ready", extra={"sources": sorted(sources), "default_source": cfg.edge.default_source})
    await stop.wait()
    log.info("ingest stopping")
    await server.stop()
    await publisher.close()


def main(argv: list[str] | None = None) -> int:
    return service_main("ingest", lambda cfg, _args: run(cfg), argv)
