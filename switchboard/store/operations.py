"""Dead letters and replay jobs (written with the retention TTL; never deleted by the operating tools: a purge
marks a dead letter purged)."""

from __future__ import annotations

import asyncio
from typing import Any

from switchboard.errors import StoreUnavailable
from switchboard.model.events import now_us
from switchboard.model.operations import DeadLetter, DeadLetterKind, DeadLetterState, ReplayJob, ReplayState
from switchboard.pagination import DAY_US, DeadCursor, dead_cursor
from switchboard.store.deliveries import day_of, days_to_read, ms_floor
from switchboard.store.events import RESET_TRIES
from switchboard.store.session import StoreSession
from switchboard.store.values import ts, us_of


class OperationsStore:
    def __init__(self, store: StoreSession) -> None:
        self.store = store
        self.ttl = store.cfg.ttl_seconds
        self.q = store.statements.operations

    # -- dead letters -------------------------------------------------------------------------------------
    def _ttl_left(self, d: DeadLetter) -> int:
        """A dead letter is kept for the retention from the moment it died: its row, written late (a recorder
        that was down) or marked later, expires with it, so no row of a mark's cells alone outlives it (the TTL
        counts from now, when the cells are written)."""
        return max(1, self.ttl - max(0, now_us() - d.dead_us) // 1_000_000)

    async def put_dead_letter(self, d: DeadLetter) -> None:
        day = day_of(d.dead_us)
        ttl = self._ttl_left(d)
        params = (
            d.kind.value,
            day,
            ts(d.dead_us),
            d.id,
            d.source,
            d.event_id,
            d.event_type,
            d.subscription_id,
            d.delivery_id,
            d.message_id,
            d.attempts,
            d.last_error,
            d.reason,
            d.headers,
            d.body,
            d.message_type,
            d.state.value,
            ts(d.redriven_us) if d.redriven_us else None,
            ttl,
        )
        await asyncio.gather(
            self.store.execute(self.q.dead_put, params),
            self.store.execute(self.q.dead_by_id_put, (d.id, d.kind.value, day, ts(d.dead_us), ttl)),
        )

    async def get_dead_letter(self, dead_letter_id: str) -> DeadLetter | None:
        rows = await self.store.execute(self.q.dead_by_id, (dead_letter_id,))
        if not rows:
            return None
        r = rows[0]
        found = await self.store.execute(self.q.dead_get, (r.kind, r.day, r.dead_at, dead_letter_id))
        return _dead_letter(found[0]) if found else None

    async def dead_letter_message(self, d: DeadLetter) -> DeadLetter | None:
        """``d`` (a row a listing read, without its message) read whole, or None once it expired: one read."""
        found = await self.store.execute(self.q.dead_get, (d.kind.value, day_of(d.dead_us), ts(d.dead_us), d.id))
        return _dead_letter(found[0]) if found else None

    async def set_dead_letter_state(
        self,
        d: DeadLetter,
        state: DeadLetterState,
        at_us: int,
        *,
        only_from: DeadLetterState | None = None,
        only_at_us: int | None = None,
    ) -> bool:
        """Marks ``d`` (``at_us`` is kept as its ``redriven_at``, except for DEAD). With ``only_from``, only if
        its stored state is that one, and with ``only_at_us`` too, only if its stored ``redriven_at`` is that
        (a lightweight transaction: of two redrives of one row, one claims it). Whether it was written. The
        cells written expire with the row (``_ttl_left``)."""
        left = self._ttl_left(d)  # from now: at_us may date a claim made seconds ago
        key = (d.kind.value, day_of(d.dead_us), ts(d.dead_us), d.id)
        at = ts(at_us) if state is not DeadLetterState.DEAD else None
        if only_from is None:
            await self.store.execute(self.q.dead_state, (left, state.value, at, *key))
            return True
        if only_at_us is None:
            params: tuple[Any, ...] = (left, state.value, at, *key, only_from.value)
            rows = await self.store.execute(self.q.dead_state_from, params)
        else:
            params = (left, state.value, at, *key, only_from.value, ts(only_at_us))
            rows = await self.store.execute(self.q.dead_state_from_at, params)
        return bool(rows) and bool(rows[0][0])

    async def dead_letters(
        self,
        kind: DeadLetterKind,
        start_us: int,
        end_us: int,
        limit: int,
        after: DeadCursor | None,
    ) -> tuple[list[DeadLetter], DeadCursor | None]:
        """Dead letters of ``kind`` in [start, end), newest first, without their messages (bodies and headers
        come back empty: ``dead_letter_message`` reads them); the cursor of the next page."""
        after_q, range_q = self.q.dead_after, self.q.dead_range
        out: list[DeadLetter] = []
        day, first_day = days_to_read(start_us, end_us, after[1] if after else None, self.ttl)
        while day >= first_day and len(out) < limit:
            want = limit - len(out)
            if after is not None and after[1] == day:
                params: tuple[Any, ...] = (kind.value, day, ts(after[2] * 1000), after[3], want)
                rows = await self.store.execute(after_q, params)
            else:
                rows = await self.store.execute(range_q, (kind.value, day, ts(start_us), ts(end_us), want))
            page = [_dead_letter(r) for r in rows if us_of(r.dead_at) >= ms_floor(start_us)]
            out += page
            if len(rows) < want or len(page) < len(rows):
                day -= 1
                after = None
                if len(page) < len(rows):
                    break
            else:
                after = dead_cursor(out[-1])
        return out, (dead_cursor(out[-1]) if len(out) >= limit else None)

    # -- replays ------------------------------------------------------------------------------------------
    async def put_replay(self, job: ReplayJob) -> None:
        params = (
            job.id,
            job.request,
            job.state.value,
            job.matched,
            job.queued,
            job.done,
            job.failed,
            ts(job.started_us),
            ts(job.finished_us) if job.finished_us else None,
            job.message,
            job.dry_run,
            ts(job.updated_us) if job.updated_us else None,
            ts(job.resume_from_us) if job.resume_from_us else None,
            self.ttl,
        )
        await self.store.execute(self.q.replay_put, params)

    async def mark_replay_interrupted(self, job: ReplayJob, read_updated_us: int) -> bool:
        """Writes ``job``'s end (state, message, finish) only if its row was not written since it was read at
        ``read_updated_us`` (a lightweight transaction: rare, a job whose runner went silent). Whether it was.
        With the TTL the rest of the row has left (written last at ``read_updated_us``): a fresh one kept these
        cells after the others expired, a job with no request, no counts and a start at the epoch."""
        left = max(1, self.ttl - (job.updated_us - read_updated_us) // 1_000_000)
        params = (
            left,
            job.state.value,
            job.message,
            ts(job.finished_us) if job.finished_us else None,
            ts(job.updated_us),
            job.id,
            ts(read_updated_us),
        )
        rows = await self.store.execute(self.q.replay_interrupted, params)
        return bool(rows) and bool(rows[0][0])

    async def get_replay(self, replay_id: str) -> ReplayJob | None:
        rows = await self.store.execute(self.q.replay_get, (replay_id,))
        if not rows:
            return None
        r = rows[0]
        return ReplayJob(
            id=r.id,
            request=r.request or "",
            state=ReplayState(r.state),
            matched=int(r.matched or 0),
            queued=int(r.queued or 0),
            done=int(r.done or 0),
            failed=int(r.failed or 0),
            started_us=us_of(r.started_at),
            finished_us=us_of(r.finished_at),
            message=r.message or "",
            dry_run=bool(r.dry_run),
            updated_us=us_of(r.updated_at),
            resume_from_us=us_of(getattr(r, "resume_from", None)),
        )

    async def request_replay_cancel(self, replay_id: str, at_us: int) -> None:
        """Asks the replica that runs ``replay_id`` to cancel it (kept a day: a job is over long before)."""
        await self.store.execute(self.q.replay_cancel_put, (replay_id, ts(at_us), 86_400))

    async def replay_cancel_requested(self, replay_id: str) -> bool:
        return bool(await self.store.execute(self.q.replay_cancel_get, (replay_id,)))

    async def reset_delivery(self, delivery_id: str, now_us: int) -> bool:
        """A delivery redriven from the dead letters: PENDING with a fresh attempt budget. False, writing
        nothing, for one that was delivered (a task dead-lettered after its delivery was recorded: a redrive
        must not send it again). A delivery with no row (a task dead-lettered before its first record, or
        expired) is left without one: writing would make a row of these cells only; its task records it.

        The reset applies only if the status is still the one read (a lightweight transaction; redrives are
        rare): a DELIVERED recorded between the read and an unconditional write was overwritten, and the task
        sent again. The cells keep the row's remaining TTL (a fresh 30 days outlived the rest of the row)."""
        for _ in range(RESET_TRIES):
            rows = await self.store.execute(self.q.delivery_status, (delivery_id,))
            if not rows:
                return True
            if rows[0].status == "delivered":
                return False
            left = rows[0].ttl_left or self.ttl
            params = (left, "pending", ts(now_us), delivery_id, rows[0].status)
            applied = await self.store.execute(self.q.delivery_reset, params)
            if applied and applied[0][0]:
                return True
        raise StoreUnavailable(f"delivery {delivery_id} kept changing while it was reset for a redrive")

    async def fail_delivery(self, delivery_id: str, error: str, dead_us: int) -> bool:
        """A delivery whose task was dead-lettered at ``dead_us`` without its worker recording the end (the
        handler kept raising on it, or the broker's delivery limit): FAILED with ``error``, unless it has no row
        or is over already (delivered, failed, cancelled). Whether it was marked.

        Written with the death's time as its cell timestamp, so that whatever was written after the death wins
        over the mark, whenever the mark lands: a redrive's reset (a copy of the death recorded again later
        marked a redriven delivery FAILED, and its task was then dead-lettered without a send), a worker's
        record of a send that was still out. With the TTL the row has left, so the marked cells expire with it."""
        rows = await self.store.execute(self.q.delivery_status, (delivery_id,))
        if not rows or rows[0].status in ("delivered", "failed", "cancelled"):
            return False
        left = rows[0].ttl_left or self.ttl
        params = (left, dead_us, "failed", error[:1000], ts(dead_us), delivery_id)
        await self.store.execute(self.q.delivery_fail, params)
        return True


def _dead_letter(r: Any) -> DeadLetter:
    return DeadLetter(
        id=r.id,
        kind=DeadLetterKind(r.kind),
        dead_us=us_of(r.dead_at),
        source=r.source or "",
        event_id=r.event_id or "",
        event_type=r.event_type or "",
        subscription_id=r.subscription_id or "",
        delivery_id=r.delivery_id or "",
        message_id=r.message_id or "",
        attempts=int(r.attempts or 0),
        last_error=r.last_error or "",
        reason=r.reason or "",
        headers=dict(getattr(r, "headers", None) or {}),  # not read by a listing
        body=getattr(r, "body", None) or b"",
        message_type=r.message_type or "",
        state=DeadLetterState(r.state) if r.state else DeadLetterState.DEAD,
        redriven_us=us_of(r.redriven_at),
    )


__all__ = ["DAY_US", "DeadCursor", "OperationsStore"]
