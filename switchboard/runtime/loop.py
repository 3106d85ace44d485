"""Running a service's event loop.

The standard asyncio loop by default: grpc.aio does not support uvloop officially, and on this machine
the Ingest service answered 235 requests/s (p50 99 ms, 32 in flight) under uvloop against 320-350/s
(p50 75-78 ms) on the standard loop. SWITCHBOARD_EVENT_LOOP=uvloop opts in for experiments.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    if os.environ.get("SWITCHBOARD_EVENT_LOOP") == "uvloop":
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)
