"""``switchboard subs ...`` and ``switchboard deliveries ...``: manage subscriptions and inspect deliveries
through the control service's gRPC port (an internal tool: it acts for every client)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.json_format import MessageToDict
from webhooks.v1 import subscriptions_pb2 as pb
from webhooks.v1 import subscriptions_pb2_grpc

from switchboard.config import PlatformConfig
from switchboard_cli.args import INT32_MAX, MAX_PAGE, MAX_SECONDS, number, whole
from switchboard_cli.channels import open_channel


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    subs = sub.add_parser("subs", help="manage outbound subscriptions (webhooks)", parents=[common])
    s = subs.add_subparsers(dest="action", required=True)
    create = s.add_parser("create", help="create a subscription; prints its signing secret once")
    create.add_argument("url", help="HTTPS callback URL")
    create.add_argument("--types", nargs="+", default=["*"], help="event type globs, e.g. 'invoice.*'")
    create.add_argument("--sources", nargs="*", default=[], help="only these sources (default: all)")
    create.add_argument(
        "--condition", default="", help="CEL expression over `event`, e.g. 'event.data.object.amount_due > 1000'"
    )
    create.add_argument(
        "--schedule", type=number(0, MAX_SECONDS), nargs="*", default=None, help="retry delays in seconds"
    )
    create.add_argument(
        "--timeout", type=number(0, 3600, above_low=True), default=None, help="per-attempt timeout in seconds"
    )
    create.add_argument("--rate", type=whole(0, INT32_MAX), default=0, help="deliveries per second at most")
    create.add_argument(
        "--max-in-flight",
        type=whole(0, INT32_MAX),
        default=0,
        help="requests sent at once at most (per worker without delivery.partitions)",
    )
    create.add_argument("--description", default="")
    create.add_argument("--client", default="", help="the owning client (default: internal)")
    create.add_argument("--check", action="store_true", help="also try a HEAD request and report the answer")
    s.add_parser("list", help="every subscription")
    for name in ("get", "delete", "enable", "disable"):
        s.add_parser(name).add_argument("id")
    rotate = s.add_parser("rotate", help="a new signing secret; the old one signs too for --overlap seconds")
    rotate.add_argument("id")
    rotate.add_argument("--overlap", type=number(0, MAX_SECONDS), default=None)

    deliveries = sub.add_parser("deliveries", help="deliveries and attempts of a subscription", parents=[common])
    d = deliveries.add_subparsers(dest="action", required=True)
    lst = d.add_parser("list", help="newest first")
    lst.add_argument("subscription")
    lst.add_argument("--status", choices=["pending", "delivered", "retrying", "failed", "cancelled"])
    lst.add_argument("--limit", type=whole(1, MAX_PAGE), default=20)
    att = d.add_parser("attempts", help="every attempt, newest first (of one delivery with --delivery)")
    att.add_argument("subscription")
    att.add_argument("--delivery", default="")
    att.add_argument("--limit", type=whole(1, MAX_PAGE), default=20)


def _every_subscription(s: Any) -> Any:
    """Every page of ListSubscriptions in one reply (its first page only was printed: past 1,000
    subscriptions, the rest were left out without a word)."""
    reply = pb.ListSubscriptionsResponse()
    token = ""
    while True:
        page = s.ListSubscriptions(pb.ListSubscriptionsRequest(page_size=1000, page_token=token), timeout=10)
        reply.subscriptions.extend(page.subscriptions)
        token = page.next_page_token
        if not token:
            return reply


@contextmanager
def stub(cfg: PlatformConfig) -> Iterator[Any]:
    channel = open_channel(cfg.control.host, cfg.control.port)
    try:
        yield subscriptions_pb2_grpc.SubscriptionsStub(channel)
    finally:
        channel.close()


def run(cfg: PlatformConfig, args: argparse.Namespace) -> int:
    try:
        with stub(cfg) as s:
            reply = _call(s, args)
    except grpc.RpcError as exc:
        print(f"switchboard: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    print(json.dumps(MessageToDict(reply, preserving_proto_field_name=True), indent=2))
    return 0


def _call(s: Any, args: argparse.Namespace) -> Any:
    if args.command == "deliveries":
        if args.action == "list":
            status = pb.DeliveryStatus.Value(f"DELIVERY_STATUS_{args.status.upper()}") if args.status else 0
            request = pb.ListDeliveriesRequest(subscription_id=args.subscription, status=status, page_size=args.limit)
            return s.ListDeliveries(request, timeout=10)
        request_a = pb.ListDeliveryAttemptsRequest(
            subscription_id=args.subscription, delivery_id=args.delivery, page_size=args.limit
        )
        return s.ListDeliveryAttempts(request_a, timeout=10)
    match args.action:
        case "create":
            sub = pb.Subscription(
                callback_url=args.url,
                event_types=args.types,
                sources=args.sources,
                trigger_conditions=args.condition,
                rate_limit_per_second=args.rate,
                max_in_flight=args.max_in_flight,
                description=args.description,
                client_id=args.client,
            )
            if args.schedule is not None or args.timeout is not None:
                sub.retry_policy.schedule.extend(_duration(x) for x in args.schedule or [])
                if args.timeout is not None:
                    sub.retry_policy.timeout.CopyFrom(_duration(args.timeout))
            return s.CreateSubscription(
                pb.CreateSubscriptionRequest(subscription=sub, check_reachable=args.check), timeout=20
            )
        case "list":
            return _every_subscription(s)
        case "get":
            return s.GetSubscription(pb.GetSubscriptionRequest(id=args.id), timeout=10)
        case "delete":
            return s.DeleteSubscription(pb.DeleteSubscriptionRequest(id=args.id), timeout=10)
        case "enable" | "disable":
            status = pb.SUBSCRIPTION_STATUS_ENABLED if args.action == "enable" else pb.SUBSCRIPTION_STATUS_DISABLED
            request_u = pb.UpdateSubscriptionRequest(id=args.id, subscription=pb.Subscription(status=status))
            request_u.update_mask.paths.append("status")
            return s.UpdateSubscription(request_u, timeout=10)
        case _:
            request_r = pb.RotateSubscriptionSecretRequest(id=args.id)
            if args.overlap is not None:
                request_r.overlap.CopyFrom(_duration(args.overlap))
            return s.RotateSubscriptionSecret(request_r, timeout=10)


def _duration(seconds: float) -> Duration:
    d = Duration()
    d.FromMicroseconds(round(seconds * 1_000_000))
    return d


def create_for_listener(cfg: PlatformConfig, url: str, types: list[str]) -> tuple[str, str]:
    """A subscription for ``switchboard listen``; returns (secret, id)."""
    with stub(cfg) as s:
        request = pb.CreateSubscriptionRequest(
            subscription=pb.Subscription(callback_url=url, event_types=types, description="switchboard listen")
        )
        reply = s.CreateSubscription(request, timeout=20)
    return reply.secret, reply.subscription.id


def delete(cfg: PlatformConfig, subscription_id: str) -> None:
    with stub(cfg) as s:
        s.DeleteSubscription(pb.DeleteSubscriptionRequest(id=subscription_id), timeout=10)
