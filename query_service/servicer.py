"""gRPC ``webhooks.v1.Query``: decode, call EventQueries, encode."""

from __future__ import annotations

import grpc
from webhooks.v1 import query_pb2, query_pb2_grpc

from query_service.convert import entity_to_pb, status_from_pb, stored_to_pb, summary_to_pb
from query_service.queries import EventQueries
from switchboard.wire import request_us


class QueryServicer(query_pb2_grpc.QueryServicer):
    def __init__(self, queries: EventQueries) -> None:
        self.queries = queries

    async def GetEvent(
        self, request: query_pb2.GetEventRequest, context: grpc.aio.ServicerContext
    ) -> query_pb2.GetEventResponse:
        stored = await self.queries.get_event(request.source, request.event_id)
        return query_pb2.GetEventResponse(event=stored_to_pb(stored))

    async def ListEvents(
        self, request: query_pb2.ListEventsRequest, context: grpc.aio.ServicerContext
    ) -> query_pb2.ListEventsResponse:
        page = await self.queries.list_events(
            request.source,
            request_us(request, "start_time"),
            request_us(request, "end_time"),
            request.page_size,
            request.page_token,
            status_from_pb(request.status),
        )
        return query_pb2.ListEventsResponse(
            events=[summary_to_pb(s) for s in page.events], next_page_token=page.next_token
        )

    async def GetEntity(
        self, request: query_pb2.GetEntityRequest, context: grpc.aio.ServicerContext
    ) -> query_pb2.GetEntityResponse:
        entity = await self.queries.get_entity(request.source, request.entity_id)
        return query_pb2.GetEntityResponse(entity=entity_to_pb(entity))
