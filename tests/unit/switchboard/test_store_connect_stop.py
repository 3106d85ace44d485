"""A service told to stop while it waits for Cassandra goes at once: the wait ended only after
``wait_seconds`` (300 by default). Against a port nothing listens on (the driver's connection is refused)."""

from __future__ import annotations

import asyncio
import time

import pytest

from switchboard.config import CassandraConfig
from switchboard.errors import StoreUnavailable
from switchboard.store import open_store
from switchboard_devstack.ports import free_port


async def test_a_stop_ends_the_wait_for_cassandra() -> None:
    cfg = CassandraConfig(hosts=("127.0.0.1",), port=free_port())
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(1.0, stop.set)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="stopped while waiting for Cassandra"):
        async with open_store(cfg, stop=stop):
            pass
    assert time.monotonic() - started < 15
