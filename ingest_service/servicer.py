"""gRPC ``webhooks.v1.Ingest``: decode, call the Ingestor, encode. Errors are mapped by the interceptor."""

from __future__ import annotations

import grpc
from webhooks.v1 import ingest_pb2, ingest_pb2_grpc

from ingest_service.ingestor import Ingestor


class IngestServicer(ingest_pb2_grpc.IngestServicer):
    def __init__(self, ingestor: Ingestor) -> None:
        self.ingestor = ingestor

    async def Receive(
        self, request: ingest_pb2.ReceiveRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.ReceiveResponse:
        accepted = await self.ingestor.receive(
            request.source,
            context.invocation_metadata() or (),
            request.payload.data,
            request.payload.content_type,
        )
        return ingest_pb2.ReceiveResponse(status="success", event_id=accepted.event_id)
