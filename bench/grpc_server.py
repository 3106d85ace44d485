"""CPU per unary call of Python gRPC servers, for choosing ingest's server: ``python -m bench.grpc_server``.

Each variant runs in a process of its own, serving one echo method (the request, ~5 KB, comes back; the
handler reads the call's metadata, 15 headers, as ingest does). A grpc.aio client in this process sends
``--calls`` calls, ``--concurrency`` at a time, after a warm-up; the server's CPU (user + system, from /proc)
over those calls divided by their number is the figure. Variants (``--variants``, each run ``--rounds`` times,
interleaved):

* ``aio``: ``grpc.aio.server`` with no interceptor (what ingest's server costs at the least).
* ``aio-chain``: the same behind the metrics and error interceptors every service has (``GrpcServer``).
* ``aio-loop``: the handler awaits one round trip through the event loop (a stand-in for the confirmed
  publish) — the baseline for ``sync-bridge``.
* ``sync``: ``grpc.server`` on a thread pool (``--workers``), no interceptor.
* ``sync-bridge``: the sync server whose handler hands that round trip to an asyncio loop in another thread
  (``run_coroutine_threadsafe``), which is how a sync server would reach an asyncio publisher.

The client shares the machine, so absolute figures move with the load; compare variants within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import threading
import time
from concurrent import futures
from typing import Any

import grpc

from bench.cpu import cpu_seconds
from switchboard_devstack.ports import free_port

SERVICE, METHOD = "bench.v1.Echo", "Echo"
VARIANTS = ("aio", "aio-chain", "aio-loop", "sync", "sync-bridge")
HEADERS = tuple((f"x-bench-{i}", "v" * 20) for i in range(15))


# -- servers (run in a child process: python -m bench.grpc_server --serve VARIANT PORT WORKERS) ----------------
async def _serve_aio(variant: str, port: int) -> None:
    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        context.invocation_metadata()
        if variant == "aio-loop":
            done = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_soon(done.set_result, None)
            await done
        return request

    interceptors: list[Any] = []
    if variant == "aio-chain":
        from switchboard.observability.rpc import MetricsInterceptor
        from switchboard.rpc.errors import ErrorInterceptor

        interceptors = [MetricsInterceptor(), ErrorInterceptor()]
    server = grpc.aio.server(interceptors=interceptors, options=[("grpc.so_reuseport", 0)])
    handler = grpc.unary_unary_rpc_method_handler(echo)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {METHOD: handler}),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def _serve_sync(variant: str, port: int, workers: int) -> None:
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    async def round_trip() -> None:
        done = loop.create_future()
        loop.call_soon(done.set_result, None)
        await done

    def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
        context.invocation_metadata()
        if variant == "sync-bridge":
            asyncio.run_coroutine_threadsafe(round_trip(), loop).result()
        return request

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=[("grpc.so_reuseport", 0)])
    handler = grpc.unary_unary_rpc_method_handler(echo)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {METHOD: handler}),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


# -- client --------------------------------------------------------------------------------------------------
async def _load(port: int, calls: int, concurrency: int, body: bytes) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        echo = channel.unary_unary(f"/{SERVICE}/{METHOD}")
        await channel.channel_ready()

        async def one_connection_share(n: int) -> None:
            for _ in range(n):
                await echo(body, metadata=HEADERS)

        await asyncio.gather(*(one_connection_share(calls // concurrency) for _ in range(concurrency)))


def measure(variant: str, args: argparse.Namespace) -> tuple[float, float]:
    """(server CPU µs per call, calls per second) of one run of ``variant``."""
    port = free_port()
    cmd = [sys.executable, "-m", "bench.grpc_server", "--serve", variant, str(port), str(args.workers)]
    server = subprocess.Popen(cmd)
    try:
        body = b"x" * args.size
        asyncio.run(_load(port, args.calls // 10, args.concurrency, body))  # warm-up (and waits for the server)
        cpu, started = cpu_seconds(server.pid), time.monotonic()
        asyncio.run(_load(port, args.calls, args.concurrency, body))
        cpu, elapsed = cpu_seconds(server.pid) - cpu, time.monotonic() - started
    finally:
        server.kill()
        server.wait()
    done = args.calls // args.concurrency * args.concurrency
    return 1e6 * cpu / done, done / elapsed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.grpc_server", description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {','.join(VARIANTS)}")
    p.add_argument("--calls", type=int, default=20_000)
    p.add_argument("--concurrency", type=int, default=32, help="calls in flight")
    p.add_argument("--size", type=int, default=5000, help="request bytes")
    p.add_argument("--workers", type=int, default=8, help="thread pool of the sync servers")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--serve", nargs=3, metavar=("VARIANT", "PORT", "WORKERS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        variant, port, workers = args.serve[0], int(args.serve[1]), int(args.serve[2])
        if variant.startswith("sync"):
            _serve_sync(variant, port, workers)
        else:
            asyncio.run(_serve_aio(variant, port))
        return 0
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        p.error(f"unknown variants: {', '.join(sorted(unknown))}")
    results: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
    for _ in range(args.rounds):
        for v in variants:
            results[v].append(measure(v, args))
            us, rate = results[v][-1]
            print(f"{v:12} {us:6.0f} µs of server CPU per call, {rate:6.0f} calls/s", flush=True)
    print("per variant, rounds in order (µs per call):")
    for v, runs in results.items():
        print(f"  {v:12} " + ", ".join(f"{us:.0f}" for us, _ in runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
