"""``ConfirmingChannel``'s matching of the broker's answers to its calls (``switchboard.queue.amqp``), fed the
frames pika hands it: a returned message must never be answered as confirmed. The broker's side is covered on a
real node by tests/integration/test_queue_worker.py (an unroutable publish raises)."""

from __future__ import annotations

import asyncio
import types
from typing import Any

import pika
import pytest

from switchboard.errors import BrokerUnavailable
from switchboard.queue.amqp import ConfirmingChannel


class Sent:
    """pika's channel, as far as a publish goes: it takes the frames."""

    is_open = True

    def basic_publish(self, *args: Any, **kwargs: Any) -> None:
        pass


def confirming() -> ConfirmingChannel:
    return ConfirmingChannel(types.SimpleNamespace(channel=Sent(), is_open=True))  # type: ignore[arg-type]


def ack(tag: int, multiple: bool = False) -> Any:
    return types.SimpleNamespace(method=pika.spec.Basic.Ack(delivery_tag=tag, multiple=multiple))


def props(message_id: str) -> pika.BasicProperties:
    return pika.BasicProperties(message_id=message_id)


async def outcome(call: Any) -> str:
    try:
        await asyncio.wait_for(call, 1)
    except BrokerUnavailable as exc:
        return exc.message
    return "confirmed"


async def test_a_returned_second_receipt_of_an_event_is_never_confirmed() -> None:
    """Two receipts of one event share the message id. The first is queued and its confirm is slow; the second
    is returned (nothing bound to take it), then acked. Matched to the oldest call with the id, the returned
    one was answered 200. Every call waiting with the id fails now: the first one's sender retries, and the
    retry is a duplicate."""
    channel = confirming()
    first = channel.publish("x", "k", b"A", props("demo/evt_1"))
    second = channel.publish("x", "k", b"B", props("demo/evt_1"))
    channel._on_return(None, None, props("demo/evt_1"), b"B")
    channel._on_confirm(ack(2))
    channel._on_confirm(ack(1))
    assert await outcome(second) == "broker did not accept the message: returned, unroutable"
    assert await outcome(first) == "broker did not accept the message: returned, unroutable"


async def test_a_return_fails_only_the_calls_of_its_id_waiting_then() -> None:
    channel = confirming()
    other = channel.publish("x", "k", b"A", props("demo/evt_1"))
    returned = channel.publish("x", "k", b"B", props("demo/evt_2"))
    channel._on_return(None, None, props("demo/evt_2"), b"B")
    later = channel.publish("x", "k", b"C", props("demo/evt_2"))  # published after the return
    channel._on_confirm(ack(3, multiple=True))
    assert [await outcome(c) for c in (other, returned, later)] == [
        "confirmed",
        "broker did not accept the message: returned, unroutable",
        "confirmed",
    ]


@pytest.mark.parametrize("multiple", [False, True])
async def test_a_nack_fails_its_calls(multiple: bool) -> None:
    channel = confirming()
    calls = [channel.publish("x", "k", b"A", props(f"demo/evt_{i}")) for i in range(2)]
    channel._on_confirm(types.SimpleNamespace(method=pika.spec.Basic.Nack(delivery_tag=2, multiple=multiple)))
    if not multiple:
        channel._on_confirm(ack(1))
    expected = (
        ["broker did not accept the message: Nack"] * 2
        if multiple
        else ["confirmed", "broker did not accept the message: Nack"]
    )
    assert [await outcome(c) for c in calls] == expected
