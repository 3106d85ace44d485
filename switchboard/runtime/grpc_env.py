"""gRPC core settings a service's process needs in its environment before ``grpc`` is first imported (the C
core reads ``GRPC_EXPERIMENTS`` once, at import). The ``__main__`` of every service that serves gRPC calls
``apply()`` before it imports its ``main``; this module imports nothing of gRPC.

* ``GRPC_EXPERIMENTS=-event_engine_listener``: the server's connections are served by the C core's polling
  I/O manager (epoll1) instead of grpcio 1.85's EventEngine listener and endpoints. With EventEngine a read
  completes on one of its worker threads before the completion queue's poller thread and the asyncio loop
  see it; with the poller the thread that polls reads too. Measured with ``python -m bench.grpc_server
  --variants aio --rounds 3`` (an echo server, ~5 KB requests, 2026-12-06): 238-250 instead of 276-290 µs of
  server CPU per call; disabling ``event_engine_for_all_other_endpoints`` (the client side) changed nothing.
  Pipeline figures: docs/benchmarks.md ("gRPC's polling listener").

An operator's own ``GRPC_EXPERIMENTS`` is kept as it is. An experiment the installed grpcio does not know is
logged by gRPC at import (``Unknown experiment``) and otherwise ignored, so a later grpcio that drops this
one only loses the saving.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

EXPERIMENTS = "-event_engine_listener"


def apply(environ: MutableMapping[str, str] = os.environ) -> None:
    """Sets ``GRPC_EXPERIMENTS`` unless it is set already. Raises if ``grpc`` is already imported (the value
    would silently have no effect: an entry point imports in the wrong order)."""
    if "grpc" in sys.modules:
        raise RuntimeError("grpc_env.apply() must run before grpc is imported")
    environ.setdefault("GRPC_EXPERIMENTS", EXPERIMENTS)
