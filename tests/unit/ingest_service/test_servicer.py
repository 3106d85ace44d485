"""``webhooks.v1.Ingest`` in process over a real gRPC channel (pytest-grpc-aio) with the error interceptor:
the request's metadata reaches the Ingestor as headers, and every error of the tree becomes its status."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.api import httpbody_pb2
from webhooks.v1 import ingest_pb2, ingest_pb2_grpc

from ingest_service.ingestor import Ingestor, Source
from ingest_service.servicer import IngestServicer
from switchboard import errors
from switchboard.config import SourceConfig
from switchboard.model.events import InboundEvent
from switchboard.rpc.errors import ErrorInterceptor
from switchboard.secrets import SecretRef
from switchboard.signatures import build_verifier
from tests.unit.ingest_service.test_ingestor import SECRET, stripe_request
from tests.unit.query_service.test_servicer import error_info
from tests.unit.rpc_tree import EXPECTED, tree


class Publisher:
    def __init__(self) -> None:
        self.published: list[InboundEvent] = []
        self.error: Exception | None = None

    async def publish_event(self, event: InboundEvent) -> None:
        if self.error is not None:
            raise self.error
        self.published.append(event)


PUBLISHER = Publisher()


@pytest.fixture
def grpc_add_to_server() -> Any:
    return ingest_pb2_grpc.add_IngestServicer_to_server


@pytest.fixture
def grpc_servicer(monkeypatch: pytest.MonkeyPatch) -> IngestServicer:
    monkeypatch.setenv("SB_UNIT_SECRET", SECRET)
    cfg = SourceConfig(name="shop", scheme="stripe", secrets=(SecretRef(env="SB_UNIT_SECRET"),))
    return IngestServicer(Ingestor({"shop": Source(cfg, build_verifier(cfg))}, PUBLISHER, default_source=None))


@pytest.fixture
def grpc_interceptors() -> list[grpc.aio.ServerInterceptor]:
    return [ErrorInterceptor()]


@pytest.fixture
def grpc_stub_cls() -> Any:
    return ingest_pb2_grpc.IngestStub


@pytest.fixture
async def stub(grpc_aio_stub: Any) -> AsyncIterator[Any]:
    PUBLISHER.published.clear()
    PUBLISHER.error = None
    async with grpc_aio_stub() as s:
        yield s


def request(body: bytes) -> ingest_pb2.ReceiveRequest:
    return ingest_pb2.ReceiveRequest(
        source="shop", payload=httpbody_pb2.HttpBody(content_type="application/json", data=body)
    )


async def test_receive_answers_success_with_the_event_id(stub: Any) -> None:
    body, headers = stripe_request("evt_grpc")
    reply = await stub.Receive(request(body), metadata=headers)
    assert (reply.status, reply.event_id) == ("success", "evt_grpc")
    assert [e.event_id for e in PUBLISHER.published] == ["evt_grpc"]


async def test_a_bad_signature_is_unauthenticated_with_the_failed_check(stub: Any) -> None:
    body, headers = stripe_request(secret="whsec_not_ours")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Receive(request(body), metadata=headers)
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_info(raised.value).reason == "SIGNATURE_MISMATCH"
    assert PUBLISHER.published == []


@pytest.mark.parametrize("cls", tree(), ids=lambda c: c.__name__)
async def test_every_error_of_the_tree_has_its_status_and_reason(stub: Any, cls: type[errors.SwitchboardError]) -> None:
    assert cls in EXPECTED, f"{cls.__name__} has no expected gRPC status: decide one in tests/unit/rpc_tree.py"
    PUBLISHER.error = cls("cannot queue", metadata={"queue": "events"})
    body, headers = stripe_request()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Receive(request(body), metadata=headers)
    assert raised.value.code() == EXPECTED[cls]
    assert (error_info(raised.value).reason, raised.value.details()) == (cls.reason, "cannot queue")
