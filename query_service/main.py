"""Query service entry point: ``python -m query_service --config FILE``."""

from __future__ import annotations

import asyncio
import logging

from webhooks.v1 import query_pb2_grpc

from query_service.queries import EventQueries
from query_service.servicer import QueryServicer
from switchboard.config import PlatformConfig
from switchboard.grpc_server import GrpcServer, Service, install_stop_signals
from switchboard.service import service_main
from switchboard.store import CassandraStore

log = logging.getLogger(__name__)


async def run(cfg: PlatformConfig) -> None:
    stop = asyncio.Event()
    install_stop_signals(stop)
    loop = asyncio.get_running_loop()
    store = await loop.run_in_executor(None, lambda: CassandraStore.connect(cfg.cassandra))
    await loop.run_in_executor(None, store.prepare)
    server = GrpcServer(
        cfg.query.host,
        cfg.query.port,
        [
            Service(
                "webhooks.v1.Query",
                query_pb2_grpc.add_QueryServicer_to_server,
                QueryServicer(EventQueries(store)),
            )
        ],
    )
    await server.start()
    await stop.wait()
    log.info("query stopping")
    await server.stop()
    store.close()


def main(argv: list[str] | None = None) -> int:
    return service_main("query", lambda cfg, _args: run(cfg), argv)
