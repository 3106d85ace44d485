"""Subscriptions: one row each (no TTL), an index by owning client, and the signing secrets sealed at rest
(``switchboard.secrets.SecretBox``): a dump of the table does not hand out anyone's signing keys."""

from __future__ import annotations

import asyncio
from typing import Any

from switchboard.model.subscriptions import RetrySchedule, Subscription, SubscriptionStatus, Tier
from switchboard.secrets import SecretBox
from switchboard.store.session import StoreSession
from switchboard.store.values import ts, us_of


class SubscriptionStore:
    def __init__(self, store: StoreSession, box: SecretBox) -> None:
        self.store = store
        self.box = box
        self.q = store.statements.subscriptions

    async def put(self, s: Subscription) -> None:
        """Writes the whole subscription (create and every change) and its client index row."""
        retry = s.retry
        params = (
            s.id,
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
        await asyncio.gather(
            self.store.execute(self.q.put, params),
            self.store.execute(self.q.index_put, (s.client_id, s.id)),
        )

    async def get(self, subscription_id: str) -> Subscription | None:
        rows = await self.store.execute(self.q.get, (subscription_id,))
        return self._from_row(rows[0]) if rows else None

    async def all(self) -> list[Subscription]:
        """Every subscription (the processors' and delivery workers' caches load them at start)."""
        return [self._from_row(r) for r in await self.store.execute(self.q.all)]

    async def delete(self, s: Subscription) -> None:
        await asyncio.gather(
            self.store.execute(self.q.delete, (s.id,)),
            self.store.execute(self.q.index_delete, (s.client_id, s.id)),
        )

    async def set_status(self, subscription_id: str, status: SubscriptionStatus, reason: str, now_us: int) -> None:
        await self.store.execute(self.q.set_status, (status.value, reason, ts(now_us), subscription_id))

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
