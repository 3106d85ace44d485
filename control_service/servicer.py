"""gRPC ``webhooks.v1.Subscriptions``: decode, call the SubscriptionManager, encode. The caller comes from the
metadata Envoy sets on REST requests (``x-switchboard-via-edge``, ``x-switchboard-client`` from the verified
JWT); Envoy strips both from what clients send."""

from __future__ import annotations

import grpc
from webhooks.v1 import subscriptions_pb2 as pb
from webhooks.v1 import subscriptions_pb2_grpc

from control_service.convert import (
    attempt_pb,
    delivery_pb,
    delivery_status_of,
    draft_of,
    duration_us,
    optional_us,
    subscription_pb,
)
from control_service.subscriptions import Caller, SubscriptionManager
from switchboard.wire import ts

CLIENT_HEADER = "x-switchboard-client"
VIA_EDGE_HEADER = "x-switchboard-via-edge"


def caller_of(context: grpc.aio.ServicerContext) -> Caller:
    metadata = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
    via_edge = metadata.get(VIA_EDGE_HEADER) == "1"
    client = metadata.get(CLIENT_HEADER) or None
    return Caller(client_id=client if via_edge else None, via_edge=via_edge)


class SubscriptionsServicer(subscriptions_pb2_grpc.SubscriptionsServicer):
    def __init__(self, manager: SubscriptionManager) -> None:
        self.manager = manager

    async def CreateSubscription(
        self, request: pb.CreateSubscriptionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateSubscriptionResponse:
        created = await self.manager.create(
            caller_of(context), draft_of(request.subscription), check_reachable=request.check_reachable
        )
        return pb.CreateSubscriptionResponse(
            subscription=subscription_pb(created.subscription), secret=created.secret, reachability=created.reachability
        )

    async def GetSubscription(
        self, request: pb.GetSubscriptionRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetSubscriptionResponse:
        s = await self.manager.get(caller_of(context), request.id)
        return pb.GetSubscriptionResponse(subscription=subscription_pb(s))

    async def ListSubscriptions(
        self, request: pb.ListSubscriptionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListSubscriptionsResponse:
        subs, token = await self.manager.list_subscriptions(caller_of(context), request.page_size, request.page_token)
        return pb.ListSubscriptionsResponse(subscriptions=[subscription_pb(s) for s in subs], next_page_token=token)

    async def UpdateSubscription(
        self, request: pb.UpdateSubscriptionRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdateSubscriptionResponse:
        s = await self.manager.update(
            caller_of(context),
            request.id or request.subscription.id,
            draft_of(request.subscription),
            list(request.update_mask.paths),
        )
        return pb.UpdateSubscriptionResponse(subscription=subscription_pb(s))

    async def DeleteSubscription(
        self, request: pb.DeleteSubscriptionRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteSubscriptionResponse:
        await self.manager.delete(caller_of(context), request.id)
        return pb.DeleteSubscriptionResponse()

    async def RotateSubscriptionSecret(
        self, request: pb.RotateSubscriptionSecretRequest, context: grpc.aio.ServicerContext
    ) -> pb.RotateSubscriptionSecretResponse:
        overlap = duration_us(request.overlap) if request.HasField("overlap") else None
        secret, expires = await self.manager.rotate_secret(caller_of(context), request.id, overlap)
        return pb.RotateSubscriptionSecretResponse(secret=secret, previous_secret_expires_at=ts(expires))

    async def ListDeliveries(
        self, request: pb.ListDeliveriesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListDeliveriesResponse:
        deliveries, token = await self.manager.list_deliveries(
            caller_of(context),
            request.subscription_id,
            status=delivery_status_of(request.status),
            start_us=optional_us(request, "start_time"),
            end_us=optional_us(request, "end_time"),
            source=request.source,
            event_id=request.event_id,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListDeliveriesResponse(deliveries=[delivery_pb(d) for d in deliveries], next_page_token=token)

    async def ListDeliveryAttempts(
        self, request: pb.ListDeliveryAttemptsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListDeliveryAttemptsResponse:
        attempts, token = await self.manager.list_attempts(
            caller_of(context),
            request.subscription_id,
            delivery_id=request.delivery_id,
            start_us=optional_us(request, "start_time"),
            end_us=optional_us(request, "end_time"),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListDeliveryAttemptsResponse(attempts=[attempt_pb(a) for a in attempts], next_page_token=token)
