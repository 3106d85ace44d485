"""The start/serve/stop lifecycle every service shares.

``service_main(name, run)`` parses ``--config``, refuses unsafe configuration with exit code 2, sets up
logging, runs the service's coroutine on the event loop and maps errors to exit codes. Inside it, a service
builds its parts in a ``serve()`` block::

    async with serve() as life:
        store = await life.enter(open_store(cfg.cassandra, stop=life.stopping))
        await life.enter(GrpcServer(...))
        await life.until_stopped()          # SIGTERM / SIGINT

Everything entered is closed in reverse order when the block ends, normally or by an error
(``contextlib.AsyncExitStack``), so no ``main`` writes its own start/stop/cleanup sequence.

The garbage collector is tuned for long-running services (``tune_gc``, ``settle_heap``): a larger first
generation, so that the objects of requests in flight die by reference count before a collection can promote
them, and everything alive once the service is ready (modules, descriptors, connections: ~65,000 objects)
frozen out of the full collections, which would otherwise walk it every time.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any, TypeVar

from switchboard.config import PlatformConfig, load_config
from switchboard.errors import ConfigError, SwitchboardError
from switchboard.runtime import loop as runtime
from switchboard.runtime.logs import setup_logging
from switchboard.runtime.signals import install_stop_signals

log = logging.getLogger(__name__)

T = TypeVar("T")
GC_THRESHOLDS = (20_000, 10, 10)  # CPython's default is (700, 10, 10)
Runner = Callable[[PlatformConfig, argparse.Namespace], Coroutine[Any, Any, None]]


class Lifetime:
    """The parts of a running service, closed in reverse order; ``stopping`` is set by SIGTERM/SIGINT."""

    def __init__(self, stack: AsyncExitStack, stopping: asyncio.Event) -> None:
        self._stack = stack
        self.stopping = stopping

    async def enter(self, part: AbstractAsyncContextManager[T]) -> T:
        return await self._stack.enter_async_context(part)

    def on_close(self, callback: Callable[[], Awaitable[Any]]) -> None:
        """Awaits ``callback()`` when the service stops (after the parts entered later are closed)."""
        self._stack.push_async_callback(callback)

    def push(self, callback: Callable[[], Any]) -> None:
        """Calls ``callback()`` when the service stops (after the parts entered later are closed)."""
        self._stack.callback(callback)

    async def until_stopped(self) -> None:
        """Waits for SIGTERM/SIGINT; the service is ready when it calls this, so its heap is settled first."""
        settle_heap()
        await self.stopping.wait()


def tune_gc() -> None:
    gc.set_threshold(*GC_THRESHOLDS)


def settle_heap() -> None:
    """Collects once and freezes what survives: the objects a service holds for its whole life are left out
    of every later collection (``gc.freeze``). Objects created afterwards are collected as usual."""
    gc.collect()
    gc.freeze()


@asynccontextmanager
async def serve() -> AsyncIterator[Lifetime]:
    stopping = asyncio.Event()
    install_stop_signals(stopping)
    async with AsyncExitStack() as stack:
        yield Lifetime(stack, stopping)


def member_argument(parser: argparse.ArgumentParser) -> None:
    """``--member N`` for a consumer of a partitioned stream (processors, delivery workers)."""
    parser.add_argument(
        "--member",
        type=int,
        default=None,
        help="this process's index among its peers (0, 1, ...): it prefers every N-th partition from it",
    )


def service_main(
    name: str,
    run: Runner,
    argv: list[str] | None = None,
    *,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> int:
    parser = argparse.ArgumentParser(prog=f"{name}_service")
    parser.add_argument("--config", default=None, help="configuration file (default: switchboard.toml)")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"{name}: refusing to start: {exc}", file=sys.stderr)
        return 2
    setup_logging(name, cfg.log_level)
    tune_gc()
    try:
        runtime.run(run(cfg, args))
    except ConfigError as exc:
        log.error("refusing to start", extra={"error": exc.message})
        print(f"{name}: refusing to start: {exc}", file=sys.stderr)
        return 2
    except SwitchboardError as exc:
        log.error("stopped", extra={"error": exc.message, "reason": exc.reason})
        return 1
    return 0
