"""Small builders for unit tests (pure data, no running component)."""

from __future__ import annotations

from switchboard.model.events import InboundEvent, new_traceparent


def event(**over: object) -> InboundEvent:
    e = InboundEvent(
        source="shop",
        event_id="evt_1",
        event_type="invoice.paid",
        provider="stripe",
        received_us=1_700_000_000_123_456,
        body=b"\x00\xff{}",
        content_type="application/json",
        headers={"stripe-signature": "t=1,v1=ab"},
        receipt_id="r1",
        provider_time_us=1_700_000_000_000_000,
        entity_id="in_1",
        entity_version=7,
        traceparent=new_traceparent(),
    )
    for k, v in over.items():
        setattr(e, k, v)
    return e
