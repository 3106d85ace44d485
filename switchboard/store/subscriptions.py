"""Subscriptions: one row each (no TTL), an index by owning client, and the signing secrets sealed at rest
(``switchboard.secrets.SecretBox``): a dump of the table does not hand out anyone's signing keys."""

from __future__ import annotations

import asyncio
from typing import Any

from switchboard.errors import StoreUnavailable
from switchboard.model.subscriptions import RetrySchedule, Subscription, SubscriptionStatus, Tier
from switchboard.secrets import SecretBox
from switchboard.store.session import StoreSession
from switchboard.store.values import ts, us_of

# Reads and conditional writes ``set_status`` makes before it gives up on a subscription that keeps changing.
SET_STATUS_TRIES = 5


class SubscriptionStore:
    def __init__(self, store: StoreSession, box: SecretBox) -> None:
        self.store = store
        self.box = box
        self.q = store.statements.subscriptions

    async def put(self, s: Subscription) -> None:
        """Writes a new subscription's client index row, then the subscription. In that order: an index row
        without its subscription (the second write refused) is passed over by ``page``, while a subscription
        written without its index row (the two went together, and the index's failed) went live, signing with a
        secret its caller never got (the create answered an error), and no listing of its client showed it. A
        write that timed out may have been applied all the same: then the create answers an error while the
        subscription exists, listed, its secret unknown to its caller (who can rotate it, or delete it)."""
        await self.store.execute(self.q.index_put, (s.client_id, s.id))
        await self.store.execute(self.q.put, (s.id, *self._values(s)))

    async def replace(self, s: Subscription, read_updated_us: int) -> bool:
        """Writes the whole changed subscription if it is still as it was read (its ``updated_at`` is still
        ``read_updated_us``: nothing changed or deleted it meanwhile); False, writing nothing, if not. ``s``'s
        own ``updated_us`` must differ from ``read_updated_us`` in its milliseconds (what the store keeps)."""
        if s.updated_us // 1000 == read_updated_us // 1000:
            raise ValueError("a change must move updated_us by at least a millisecond")
        rows = await self.store.execute(self.q.replace, (*self._values(s), s.id, ts(read_updated_us)))
        return _applied(rows)

    def _values(self, s: Subscription) -> tuple[Any, ...]:
        """Every column but the id, in the statements' order."""
        retry = s.retry
        return (
            s.client_id,
            s.callback_url,
            s.description,
            list(s.sources),
            list(s.event_types),
            s.trigger_conditions,
            list(retry.delays_ms) if retry else None,
            retry.max_attempts if retry else None,
            retry.timeout_ms if retry else None,
            s.rate_limit_per_second,
            s.tier.value,
            s.public_key,
            s.metadata,
            s.status.value,
            s.status_reason,
            self.box.seal(s.secret),
            self.box.seal(s.previous_secret) if s.previous_secret else None,
            ts(s.previous_secret_expires_us) if s.previous_secret_expires_us else None,
            ts(s.created_us),
            ts(s.updated_us),
            s.max_in_flight,
        )

    async def get(self, subscription_id: str) -> Subscription | None:
        rows = await self.store.execute(self.q.get, (subscription_id,))
        return self._from_row(rows[0]) if rows else None

    async def all(self) -> list[Subscription]:
        """Every subscription (the processors' and delivery workers' caches load them at start)."""
        return [self._from_row(r) for r in await self.store.execute(self.q.all)]

    async def delete(self, s: Subscription) -> None:
        """The subscription, then its index row (``put``'s order the other way round: a failure between the
        two leaves an index row ``page`` passes over, never a live subscription its client cannot list)."""
        await self.store.execute(self.q.delete, (s.id,))
        await self.store.execute(self.q.index_delete, (s.client_id, s.id))

    async def set_status(
        self,
        subscription_id: str,
        status: SubscriptionStatus,
        reason: str,
        now_us: int,
        *,
        only_url: str | None = None,
    ) -> bool:
        """Only if the subscription still exists (an unconditional update of a deleted one made a row of just
        these cells) and, with ``only_url``, still sends to that URL, over the row as it is read, moving
        ``updated_at``: a change read before it is refused (``replace``) and made again over it. Whether the
        status is ``status`` now (set here or before). Gives up after ``SET_STATUS_TRIES`` rows changed under
        it."""
        for _ in range(SET_STATUS_TRIES):
            rows = await self.store.execute(self.q.get, (subscription_id,))
            if not rows or (only_url is not None and rows[0].callback_url != only_url):
                return False  # gone, or moved to another URL since
            if rows[0].status == status.value:  # set already (by another 410 meanwhile)
                return True
            read = us_of(rows[0].updated_at)
            stamp = ts(max(now_us, read + 1000))  # the store keeps milliseconds
            if _applied(
                await self.store.execute(self.q.set_status, (status.value, reason, stamp, subscription_id, ts(read)))
            ):
                return True
        raise StoreUnavailable(f"subscription {subscription_id} kept changing while its status was set")

    async def page(self, client_id: str | None, after: str, limit: int) -> tuple[list[Subscription], str]:
        """Subscriptions of ``client_id`` (every client's when None) after cursor ``after``; returns them and
        the cursor of the next page ("" at the end)."""
        if client_id is not None:
            ids = [r.id for r in await self.store.execute(self.q.index_page, (client_id, after, limit))]
            found = await asyncio.gather(*(self.get(i) for i in ids))
            subs = [s for s in found if s is not None]
            return subs, ids[-1] if len(ids) == limit else ""
        if after:
            rows = await self.store.execute(self.q.page_after, (after, limit))
        else:
            rows = await self.store.execute(self.q.page_first, (limit,))
        subs = [self._from_row(r) for r in rows]
        return subs, subs[-1].id if len(rows) == limit else ""

    def _from_row(self, r: Any) -> Subscription:
        retry = None
        if r.retry_delays_ms is not None:
            retry = RetrySchedule(tuple(r.retry_delays_ms), int(r.max_attempts or 0), int(r.timeout_ms or 0))
        return Subscription(
            id=r.id,
            client_id=r.client_id or "",
            callback_url=r.callback_url or "",
            description=r.description or "",
            sources=tuple(r.sources or ()),
            event_types=tuple(r.event_types or ()),
            trigger_conditions=r.trigger_conditions or "",
            retry=retry,
            rate_limit_per_second=int(r.rate_limit or 0),
            max_in_flight=int(r.max_in_flight or 0),
            tier=Tier(r.tier) if r.tier else Tier.STANDARD,
            public_key=r.public_key or "",
            metadata=dict(r.metadata or {}),
            status=SubscriptionStatus(r.status) if r.status else SubscriptionStatus.ENABLED,
            status_reason=r.status_reason or "",
            secret=self.box.open(r.secret) if r.secret else "",
            previous_secret=self.box.open(r.previous_secret) if r.previous_secret else "",
            previous_secret_expires_us=us_of(r.previous_secret_expires),
            created_us=us_of(r.created_at),
            updated_us=us_of(r.updated_at),
        )


def _applied(rows: list[Any]) -> bool:
    """Whether a lightweight transaction was applied (its first row's ``[applied]`` column)."""
    return bool(rows) and bool(rows[0][0])
