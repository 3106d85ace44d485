"""Query service entry point: ``python -m query_service --config FILE``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from webhooks.v1 import query_pb2_grpc

from query_service.queries import EventQueries
from query_service.servicer import QueryServicer
from switchboard import runtime
from switchboard.config import PlatformConfig, load_config
from switchboard.errors import ConfigError, SwitchboardError
from switchboard.grpc_server import GrpcServer, Service, install_stop_signals
from switchboard.logs import setup_logging
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
    parser = argparse.ArgumentParser(prog="query_service")
    parser.add_argument("--config", default=None, help="configuration file (default: switchboard.toml)")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"query: refusing to start: {exc}", file=sys.stderr)
        return 2
    setup_logging("query", cfg.log_level)
    try:
        runtime.run(run(cfg))
    except ConfigError as exc:
        log.error("refusing to start", extra={"error": exc.message})
        return 2
    except SwitchboardError as exc:
        log.error("stopped", extra={"error": exc.message, "reason": exc.reason})
        return 1
    return 0
