"""The fan-out: the built-in ``deliver`` operation (``call = "processor_service.fanout:deliver"``).

For an event that is processed, stale ones included (``runs_when_stale``: a subscriber gets every event the
provider sent, late ones too; never for a duplicate, whose operations do not run), one delivery
task per matching subscription (sources, event type globs, CEL condition; from the in-process cache, no
per-event read) goes to the ``deliveries`` stream, each confirmed by the broker before the operation
succeeds, hence before the event is committed and its message acked. The delivery id is
deterministic per (event, subscription), so a processor that dies after publishing and before its commit
publishes the same deliveries again on redelivery: the delivery workers recognise them (a delivery already
final is acked without a send), and receivers deduplicate on ``webhook-id``. A delivery is never lost: an
operation that could not publish fails and runs again on the event's next attempt.
"""

from __future__ import annotations

import asyncio

from processor_service.operations import OperationContext
from switchboard.delivery.ids import delivery_id
from switchboard.model.events import InboundEvent, now_us
from switchboard.model.subscriptions import DeliveryTask
from switchboard.streams import DeliveryPublisher
from switchboard.subscription_cache import SubscriptionCache

CALL = "processor_service.fanout:deliver"


class FanOut:
    # A delivery changes no entity: an event older than its entity's version (STALE) is delivered too, and a
    # replay of such an event delivers it again.
    runs_when_stale = True

    def __init__(self, subscriptions: SubscriptionCache, publisher: DeliveryPublisher) -> None:
        self.subscriptions = subscriptions
        self.publisher = publisher

    async def __call__(self, event: InboundEvent, ctx: OperationContext) -> None:
        created = now_us()
        tasks = [
            DeliveryTask(
                # A replay delivers anew: its deliveries have ids of their own (the originals may be final).
                delivery_id(event.source, event.event_id, f"{s.id}#{event.replay_id}" if event.replay_id else s.id),
                s.id,
                event,
                created,
                event.replay_id,
            )
            for s in self.subscriptions.matching(event)
        ]
        await asyncio.gather(*(self.publisher.publish_task(t) for t in tasks))
