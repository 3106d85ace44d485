"""Query service entry point: ``python -m query_service --config FILE``."""

from __future__ import annotations

import argparse
import logging

from webhooks.v1 import query_pb2_grpc

from query_service.queries import EventQueries
from query_service.servicer import QueryServicer
from switchboard.config import PlatformConfig
from switchboard.observability.hooks import metrics_endpoint
from switchboard.rpc.server import GrpcServer, Service
from switchboard.runtime.service import serve, service_main
from switchboard.store import EntityStore, EventStore, open_store

log = logging.getLogger(__name__)


async def run(cfg: PlatformConfig, _args: argparse.Namespace) -> None:
    async with serve() as life:
        await life.enter(metrics_endpoint(cfg.metrics, "query"))
        store = await life.enter(open_store(cfg.cassandra, stop=life.stopping))
        entities = EntityStore(store)
        queries = EventQueries(EventStore(store, entities), entities)
        await life.enter(
            GrpcServer(
                cfg.query.host,
                cfg.query.port,
                [Service("webhooks.v1.Query", query_pb2_grpc.add_QueryServicer_to_server, QueryServicer(queries))],
            )
        )
        await life.until_stopped()
        log.info("query stopping")


def main(argv: list[str] | None = None) -> int:
    return service_main("query", run, argv)
