"""``StoreSession.execute`` translates the server errors the driver raises as its own messages (not
``DriverException``s): an outage becomes ``StoreUnavailable``, a request no retry gets through ``STORE_REFUSED``.
A stand-in for the driver's session answers with the error the test names."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from cassandra.protocol import (
    CDCWriteException,
    ConfigurationException,
    ErrorMessage,
    IsBootstrappingErrorMessage,
    OverloadedErrorMessage,
    ProtocolException,
    ServerError,
    SyntaxException,
    UnauthorizedErrorMessage,
)

from switchboard.errors import InvalidRequest, StoreUnavailable
from switchboard.store.session import StoreSession


class Failing:
    """The driver's ``ResponseFuture``: calls back with ``error`` from another thread, as the driver does."""

    has_more_pages = False

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def add_callbacks(self, ok: Any, fail: Any) -> None:
        asyncio.get_running_loop().run_in_executor(None, fail, self.error)


def session(error: BaseException) -> StoreSession:
    driver = SimpleNamespace(execute_async=lambda *a, **k: Failing(error))
    store = StoreSession.__new__(StoreSession)
    store.session = driver
    return store


def delivered(error: ErrorMessage) -> BaseException:
    """What the driver hands a callback for a server error: its ``to_exception()`` (a DriverException for the
    codes it knows, the message itself for the others)."""
    exc: BaseException = error.to_exception()
    return exc


@pytest.mark.parametrize(
    "error",
    [
        ErrorMessage(0x1700, "CAS operation result is unknown", None),  # Cassandra 4's CAS_WRITE_UNKNOWN (v5)
        CDCWriteException(0x1600, "CDC space full", None),
        OverloadedErrorMessage(0x1001, "overloaded", None),
        IsBootstrappingErrorMessage(0x1002, "bootstrapping", None),
        ServerError(0x0000, "server error", None),
        UnauthorizedErrorMessage(0x2100, "no permission", None),  # the driver's Unauthorized: a DriverException
    ],
)
async def test_an_outage_the_driver_raises_as_a_message_is_store_unavailable(error: ErrorMessage) -> None:
    """They escaped untranslated: a lightweight transaction of unknown outcome crashed a delivery worker's batch
    (sent again, counted as a crash) and the APIs answered INTERNAL (found in review)."""
    with pytest.raises(StoreUnavailable):
        await session(delivered(error)).execute("SELECT 1")


@pytest.mark.parametrize(
    "error",
    [
        SyntaxException(0x2000, "line 1: no viable alternative", None),
        ConfigurationException(0x2300, "no keyspace", None),
        ProtocolException(0x000A, "message over native_transport_max_message_size", None),
    ],
)
async def test_a_request_no_retry_gets_through_is_refused(error: ErrorMessage) -> None:
    with pytest.raises(InvalidRequest) as refused:
        await session(delivered(error)).execute("SELECT 1")
    assert refused.value.reason == "STORE_REFUSED"
