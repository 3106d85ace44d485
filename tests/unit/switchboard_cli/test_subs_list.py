"""``switchboard subs list`` follows every page of ListSubscriptions (a stand-in answers the pages)."""

from __future__ import annotations

from typing import Any

from webhooks.v1 import subscriptions_pb2 as pb

from switchboard_cli import subs


def test_subs_list_prints_every_page() -> None:
    """Past 1,000 subscriptions the first page only was printed, the rest left out without a word."""
    pages = {"": ("t1", ["a", "b"]), "t1": ("t2", ["c"]), "t2": ("", ["d"])}
    asked: list[str] = []

    class Stub:
        def ListSubscriptions(self, request: pb.ListSubscriptionsRequest, timeout: float) -> Any:
            asked.append(request.page_token)
            token, ids = pages[request.page_token]
            return pb.ListSubscriptionsResponse(
                subscriptions=[pb.Subscription(id=i) for i in ids], next_page_token=token
            )

    reply = subs._every_subscription(Stub())
    assert [x.id for x in reply.subscriptions] == ["a", "b", "c", "d"] and asked == ["", "t1", "t2"]
