"""``webhooks.v1.Query`` in process over a real gRPC channel (pytest-grpc-aio), behind the one error
interceptor: encoding of answers, and the status and ``google.rpc.ErrorInfo`` of every error of the tree."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from cassandra import OperationTimedOut
from google.rpc import error_details_pb2, status_pb2
from webhooks.v1 import event_pb2, query_pb2, query_pb2_grpc

from query_service.queries import EventQueries
from query_service.servicer import QueryServicer
from switchboard import errors
from switchboard.model.events import EventStatus, StoredEvent
from switchboard.rpc.errors import MAX_MESSAGE_BYTES, ErrorInterceptor
from switchboard.store.session import _unavailable
from tests.unit.factories import event
from tests.unit.query_service.test_queries import MemoryEntities, MemoryReader
from tests.unit.rpc_tree import EXPECTED, tree


class FailingReader(MemoryReader):
    error: Exception | None = None

    async def get(self, source: str, event_id: str) -> StoredEvent | None:
        if self.error is not None:
            raise self.error
        return await super().get(source, event_id)


READER = FailingReader(stored={"shop/evt_1": StoredEvent(event(), EventStatus.PROCESSED, attempts=1)})


@pytest.fixture
def grpc_add_to_server() -> Any:
    return query_pb2_grpc.add_QueryServicer_to_server


@pytest.fixture
def grpc_servicer() -> QueryServicer:
    return QueryServicer(EventQueries(READER, MemoryEntities(READER)))


@pytest.fixture
def grpc_interceptors() -> list[grpc.aio.ServerInterceptor]:
    return [ErrorInterceptor()]


@pytest.fixture
def grpc_stub_cls() -> Any:
    return query_pb2_grpc.QueryStub


@pytest.fixture
async def stub(grpc_aio_stub: Any) -> AsyncIterator[Any]:
    READER.error = None
    async with grpc_aio_stub() as s:
        yield s
    READER.error = None


def error_info(exc: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    raw = dict(exc.trailing_metadata() or ())["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(raw)
    info = error_details_pb2.ErrorInfo()
    assert status.code == exc.code().value[0] and status.details[0].Unpack(info)
    return info


async def test_get_event_encodes_the_stored_event(stub: Any) -> None:
    reply = await stub.GetEvent(query_pb2.GetEventRequest(source="shop", event_id="evt_1"))
    assert (reply.event.event_id, reply.event.status, reply.event.attempts) == (
        "evt_1",
        event_pb2.EVENT_STATUS_PROCESSED,
        1,
    )
    assert reply.event.body == b"\x00\xff{}"


@pytest.mark.parametrize("cls", tree(), ids=lambda c: c.__name__)
async def test_every_error_of_the_tree_has_its_status_and_reason(stub: Any, cls: type[errors.SwitchboardError]) -> None:
    assert cls in EXPECTED, f"{cls.__name__} has no expected gRPC status: decide one in tests/unit/rpc_tree.py"
    READER.error = cls("what went wrong", metadata={"source": "shop"})
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.GetEvent(query_pb2.GetEventRequest(source="shop", event_id="evt_1"))
    assert raised.value.code() == EXPECTED[cls]
    info = error_info(raised.value)
    assert (info.reason, info.domain, dict(info.metadata)) == (cls.reason, errors.ERROR_DOMAIN, {"source": "shop"})
    assert raised.value.details() == "what went wrong"


async def test_an_unexpected_exception_is_internal_without_its_text(stub: Any) -> None:
    READER.error = KeyError("secret internals")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.GetEvent(query_pb2.GetEventRequest(source="shop", event_id="evt_1"))
    assert raised.value.code() == grpc.StatusCode.INTERNAL
    assert raised.value.details() == "internal error" and error_info(raised.value).reason == "INTERNAL"


async def test_domain_validation_reaches_the_caller_as_invalid_argument(stub: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.ListEvents(query_pb2.ListEventsRequest(source="shop", page_size=100_000))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(raised.value).reason == "PAGE_SIZE_INVALID"


async def test_received_is_not_a_listable_status(stub: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.ListEvents(query_pb2.ListEventsRequest(source="shop", status=event_pb2.EVENT_STATUS_RECEIVED))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(raised.value).reason == "STATUS_INVALID"


async def test_an_error_quoting_a_long_id_keeps_its_status_with_its_text_cut(stub: Any) -> None:
    """A 4 KB entity id (the longest there is), quoted in the message and the metadata, made trailers that gRPC
    refused: RESOURCE_EXHAUSTED instead of NOT_FOUND. Every message is cut to MAX_MESSAGE_BYTES."""
    for entity_id in ("é" * 2048, "x" * 4096):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.GetEntity(query_pb2.GetEntityRequest(source="shop", entity_id=entity_id))
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
        info = error_info(raised.value)
        assert info.reason == "ENTITY_NOT_FOUND" and info.metadata["source"] == "shop"
        assert entity_id.startswith(info.metadata["entity_id"][:-3]) and info.metadata["entity_id"].endswith("...")
        details = raised.value.details() or ""
        assert details.startswith("no entity '") and details.endswith("...")
        assert len(details.encode()) <= MAX_MESSAGE_BYTES


async def test_a_request_that_is_not_its_message_is_invalid_argument(stub: Any, grpc_addr: str) -> None:
    """A string field that is not UTF-8: gRPC answered UNKNOWN with the parser's text."""
    async with grpc.aio.insecure_channel(grpc_addr) as channel:
        call = channel.unary_unary("/webhooks.v1.Query/GetEvent")
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call(b"\x0a\x02\xff\xfe\x12\x01e")
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(raised.value).reason == "REQUEST_UNDECODABLE"
    assert "GetEvent" in (raised.value.details() or "")


async def test_a_store_outage_reaches_the_caller_without_the_drivers_detail(
    stub: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The driver's text of a timeout names the Cassandra nodes' addresses: the log keeps it, the caller is told
    the kind of failure (``SwitchboardError.public``)."""
    READER.error = _unavailable(OperationTimedOut({"10.20.30.40:9042": "Client request timeout"}, "10.20.30.40:9042"))
    with pytest.raises(grpc.aio.AioRpcError) as raised, caplog.at_level("WARNING", logger="switchboard.rpc.errors"):
        await stub.GetEvent(query_pb2.GetEventRequest(source="shop", event_id="evt_1"))
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert raised.value.details() == "the store is unavailable (OperationTimedOut); retry later"
    assert error_info(raised.value).reason == "STORE_UNAVAILABLE"
    assert b"10.20.30.40" not in dict(raised.value.trailing_metadata() or ())["grpc-status-details-bin"]
    logged = [r for r in caplog.records if r.getMessage() == "rpc failed"]
    assert logged and "10.20.30.40:9042" in logged[0].__dict__["error"]
