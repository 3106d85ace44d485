"""Dead letters: recorded when they happen, listed from the store, redriven with a fresh attempt budget,
purged (marked, never deleted).

* **Recording.** The control service consumes both streams' dead-letter queues (``switchboard.events.dead``,
  ``switchboard.deliveries.dead``) with the shared queue worker and writes one row per message (its headers
  and body, the attempts, the last error, why). Listing therefore never pages through a queue. One death of a
  message is one row, however many copies of it reach the queue: the row's id is derived from the message id,
  its receipt (an event's message id is its key, shared by every receipt of it) and its attempts, and a copy
  of a death already recorded is acked without a write. Copies arise when a worker dies before its ack (the
  recorder's own, or a processor's or delivery worker's whose dead-letter copy was already out: a FAILED
  message that comes back is dead-lettered again) and when an older copy of a delivery, deferred behind its
  retry, ends too. A death after the row was claimed by a redrive or purged
  (the message died after the claim or the purge) takes the next id in the chain (``dead_letter_id``'s
  ``generation``); a copy dead-lettered a second time says so (``x-dead-again``) and belongs to the newest
  death (``_earlier_death``). Two recorders that take two copies at the same moment can still write two
  rows: the check is a read, not a transaction.
* **Redrive.** An event: its stored status goes back to RETRYING with its attempts at 0, and its message is
  published to the events stream again; the processor resumes it like a retry (operations already OK are not
  run again). A delivery: its state goes back to PENDING with 0 attempts and its task is published to the
  deliveries stream. The row is claimed first (DEAD → REDRIVING, a lightweight transaction), marked REDRIVEN
  once sent (tried again, never raised: the message is out) or once found with nothing left to send (its event
  settled since, its delivery delivered: counted failed by that redrive), and given back (DEAD) if sending
  fails, so
  concurrent redrives send a row once; a claim left by a control service that stopped is taken over after
  five minutes. A message that could not be decoded cannot be redriven. A purge leaves a row a redrive is
  sending.
* **Purge** marks rows PURGED (hidden from listings, never redriven); it needs a filter or ids and
  ``confirm``. It takes DEAD rows (and claims gone stale), not REDRIVEN ones.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from switchboard import pagination
from switchboard.errors import FailedPrecondition, InvalidRequest, NotFound, SwitchboardError
from switchboard.model.events import InboundEvent, now_us
from switchboard.model.operations import DeadLetter, DeadLetterKind, DeadLetterState
from switchboard.model.subscriptions import DeliveryTask
from switchboard.queue import Ack, QueueMessage, Verdict
from switchboard.queue.message import DEAD_AGAIN_HEADER, RECEIPT_HEADER
from switchboard.runtime.loop import after_pauses
from switchboard.wire import decode_inbound, decode_task

log = logging.getLogger(__name__)

DEFAULT_PAGE = 100
MAX_PAGE = 1000
MAX_SCAN = 5000
# A listing page ends once its messages add up to ``pagination.PAGE_BYTES`` (with at least one dead letter a
# page): a page of 1,000 dead letters of 5 KB bodies was ~5 MB, refused by a client that takes gRPC's default
# 4 MiB, and of bodies up to the edge's limit, gigabytes read into the service. Messages are read a few at a
# time (``_with_messages``): FIRST_READS, then as many as the room left takes at the largest seen so far, at
# most MESSAGE_READS.
FIRST_READS = 4
MESSAGE_READS = 32
DEFAULT_RANGE_US = 30 * 86_400 * 1_000_000


class DeadLetterStore(Protocol):
    async def put_dead_letter(self, d: DeadLetter) -> None: ...
    async def get_dead_letter(self, dead_letter_id: str) -> DeadLetter | None: ...
    async def dead_letter_message(self, d: DeadLetter) -> DeadLetter | None: ...
    async def set_dead_letter_state(
        self,
        d: DeadLetter,
        state: DeadLetterState,
        at_us: int,
        *,
        only_from: DeadLetterState | None = None,
        only_at_us: int | None = None,
    ) -> bool: ...
    async def dead_letters(
        self,
        kind: DeadLetterKind,
        start_us: int,
        end_us: int,
        limit: int,
        after: tuple[str, int, int, str] | None,
    ) -> tuple[list[DeadLetter], tuple[str, int, int, str] | None]: ...
    async def reset_delivery(self, delivery_id: str, now_us: int) -> bool: ...
    async def fail_delivery(self, delivery_id: str, error: str, dead_us: int) -> bool: ...


class EventResetter(Protocol):
    async def reset_attempts(self, event: InboundEvent) -> bool: ...


class Republisher(Protocol):
    async def publish_event(self, event: InboundEvent) -> None: ...
    async def publish_task(self, task: DeliveryTask) -> None: ...


@dataclass(frozen=True)
class Filter:
    kind: DeadLetterKind | None = None
    source: str = ""
    subscription_id: str = ""
    event_type: str = ""  # a glob
    reason: str = ""
    start_us: int | None = None
    end_us: int | None = None
    all_states: bool = False

    @property
    def empty(self) -> bool:
        return not (
            self.kind
            or self.source
            or self.subscription_id
            or self.event_type
            or self.reason
            or self.start_us
            or self.end_us
        )

    def matches(self, d: DeadLetter) -> bool:
        return (
            (self.all_states or d.state in REDRIVABLE)
            and (not self.source or d.source == self.source)
            and (not self.subscription_id or d.subscription_id == self.subscription_id)
            and (not self.event_type or fnmatch.fnmatchcase(d.event_type, self.event_type))
            and (not self.reason or d.reason == self.reason)
        )


@dataclass(frozen=True)
class RedriveProgress:
    matched: int
    redriven: int
    failed: int
    done: bool
    message: str = ""


# How long a stopping control service waits for the redrives under way.
CLOSE_WAIT_SECONDS = 10.0
# A redrive's claim this old lost its control service: the next redrive takes it over.
STALE_CLAIM_US = 5 * 60 * 1_000_000
# The states listed by default: not yet dealt with (a REDRIVING one is taken by a redrive once its claim is
# stale: _takeable).
REDRIVABLE = frozenset({DeadLetterState.DEAD, DeadLetterState.REDRIVING})
# The REDRIVEN mark after a redrive has sent: tried again after these pauses.
MARK_PAUSES = (0.2, 1.0, 3.0)

# How many redrives of one message (same id, same attempts) get ids of their own in the chain; past that each
# death gets an id of its own from the moment it happened (no check for copies).
MAX_GENERATIONS = 20


def _earlier_death(row: DeadLetter, d: DeadLetter, again: bool) -> bool:
    """Whether ``row`` (same message, same attempts) records a death before ``d``'s, so that ``d`` is a new
    death further along the chain. A DEAD row is ``d``'s own death. A row marked (claimed, redriven, purged:
    ``redriven_us``) before ``d`` died was an earlier death: the message was sent again and died again (or
    its redrive found nothing to send, and a message still dying after that is a new death all the same). A
    copy dated later than its death (``again``: dead-lettered a second time) is the newest death's, so only
    a row REDRIVEN (claimed) before the copy was dead-lettered lies before it."""
    if again:  # a copy of death N+1 is always dead-lettered after the claim of death N
        return row.state is DeadLetterState.REDRIVEN and d.dead_us > row.redriven_us
    return row.state is not DeadLetterState.DEAD and d.dead_us > row.redriven_us


def dead_letter_id(kind: DeadLetterKind, message_id: str, attempts: int, generation: int, receipt: str = "") -> str:
    """The id of one death of a message: the same for every copy of it, the next ``generation`` after a
    redrive. An event's message id is its key, the same for every receipt of it (a replay's too), so the
    receipt is part of the id: without it, a replay's death at the same attempt count as an earlier receipt's
    was taken for a copy of that one and acked as a duplicate (the event FAILED with no dead letter of its
    own to redrive; found in review)."""
    key = f"{kind.value}\0{message_id}\0{attempts}\0{generation}"
    if receipt:
        key += f"\0{receipt}"
    return "dl_" + hashlib.sha256(key.encode()).hexdigest()[:24]


def unique_dead_letter_id(message_id: str, dead_at: str) -> str:
    """For a message without an id (no copies to tell apart) or past ``MAX_GENERATIONS``."""
    return "dl_" + hashlib.sha256(f"{message_id}\0{dead_at}".encode()).hexdigest()[:24]


class DeadLetterRecorder:
    """A queue handler on a dead-letter queue: one row per message, then ack."""

    def __init__(self, store: DeadLetterStore, kind: DeadLetterKind) -> None:
        self.store = store
        self.kind = kind

    def key(self, message: QueueMessage) -> str | None:
        return None

    async def handle(self, batch: Sequence[QueueMessage]) -> list[Verdict]:
        verdicts: list[Verdict] = []
        for m in batch:
            d = self.record(m)
            outcome = await self.put_once(d, again=bool(m.headers.get(DEAD_AGAIN_HEADER)))
            if d.delivery_id and d.reason != "FAILED":
                # Its worker did not record the end (the handler kept raising on the task, or the broker's
                # delivery limit): the delivery said PENDING or RETRYING for good, with no attempt coming. The
                # error the client sees names the dead letter, not the platform's own exception text.
                error = f"dead-lettered ({d.reason}): the platform could not deliver it; dead letter {d.id}"
                await self.store.fail_delivery(d.delivery_id, error, d.dead_us)
            verdicts.append(Ack(outcome))
        return verdicts

    async def put_once(self, d: DeadLetter, *, again: bool = False) -> str:
        """Writes ``d`` unless its death is recorded already; the outcome: ``recorded``, or ``duplicate`` for a
        copy of a death that is. ``d.id`` is the first of its chain (``record``) and moves along the chain past
        the rows of earlier deaths (``_earlier_death``). ``again``: the message is a copy of a death already
        dead-lettered once (``x-dead-again``), dated when it was dead-lettered again."""
        if not d.message_id:
            await self.store.put_dead_letter(d)
            return "recorded"
        receipt = d.headers.get(RECEIPT_HEADER, "")
        for generation in range(MAX_GENERATIONS):
            d.id = dead_letter_id(self.kind, d.message_id, d.attempts, generation, receipt)
            existing = await self.store.get_dead_letter(d.id)
            if existing is None:
                await self.store.put_dead_letter(d)
                return "recorded"
            if existing.dead_us // 1000 == d.dead_us // 1000:  # the store keeps milliseconds
                return "recorded"  # this very message, handled again (its batch was retried after an outage)
            if not _earlier_death(existing, d, again):
                return "duplicate"
        d.id = unique_dead_letter_id(d.message_id, str(d.dead_us))
        await self.store.put_dead_letter(d)
        return "recorded"

    def record(self, m: QueueMessage) -> DeadLetter:
        headers = {k: _text(v) for k, v in m.headers.items() if not k.startswith("x-death")}
        death = _first_death(m.headers)
        dead_at = m.headers.get("x-dead-at") or (death.get("time") if death else None)
        dead_us = _us(dead_at) or now_us()
        if "x-dead-at" in m.headers:  # the worker's dead-letter copy (a retried copy has x-last-error too)
            dead_reason = m.headers.get("x-dead-reason")
            reason = {"undecodable": "UNDECODABLE", "crashed": "CRASHED"}.get(str(dead_reason), "FAILED")
            error = m.last_error
        else:  # dead-lettered by the broker itself
            reason = str(death.get("reason", "")).upper() if death else "UNKNOWN"
            error = f"dead-lettered by the broker ({reason.lower()}): its consumer kept failing on it"
            if m.last_error:
                error += f"; the last error before: {m.last_error}"
        d = DeadLetter(
            id=(
                dead_letter_id(self.kind, m.message_id, m.attempt, 0, headers.get(RECEIPT_HEADER, ""))
                if m.message_id
                else unique_dead_letter_id(m.message_id, str(dead_at or dead_us))
            ),
            kind=self.kind,
            dead_us=dead_us,
            message_id=m.message_id,
            attempts=m.attempt,
            last_error=error[:2000],
            reason=reason,
            headers=headers,
            body=m.body,
            message_type=m.type,
        )
        try:
            if self.kind is DeadLetterKind.PROCESSING:
                e = decode_inbound(m.body)
                d.source, d.event_id, d.event_type = e.source, e.event_id, e.event_type
            else:
                t = decode_task(m.body)
                d.source, d.event_id, d.event_type = t.event.source, t.event.event_id, t.event.event_type
                d.subscription_id, d.delivery_id = t.subscription_id, t.delivery_id
        except InvalidRequest:
            d.reason = "UNDECODABLE"
        return d


class DeadLetterManager:
    def __init__(
        self,
        store: DeadLetterStore,
        events: EventResetter,
        publisher: Republisher,
        *,
        retention_us: int = DEFAULT_RANGE_US,
    ) -> None:
        """``retention_us``: how long dead letters are kept (``cassandra.ttl_seconds``), the range a listing,
        a redrive or a purge covers when it names no time (at least ``DEFAULT_RANGE_US``): with a longer
        retention, ``dlq redrive --all`` skipped every dead letter older than 30 days."""
        self.store = store
        self.events = events
        self.publisher = publisher
        self.default_range_us = max(DEFAULT_RANGE_US, retention_us)
        self._redrives: set[asyncio.Task[None]] = set()

    async def get(self, dead_letter_id: str) -> DeadLetter:
        d = await self.store.get_dead_letter(dead_letter_id) if dead_letter_id else None
        if d is None:
            raise NotFound(f"no dead letter {dead_letter_id!r}", reason="DEAD_LETTER_NOT_FOUND")
        return d

    async def list_dead_letters(
        self, f: Filter, page_size: int, page_token: str, *, messages: bool = True
    ) -> tuple[list[DeadLetter], str]:
        """A page of the dead letters ``f`` takes; without ``messages``, with empty bodies and headers, which
        are then not read from the store at all. With them, the page ends early, after the dead letter whose
        message reached ``pagination.PAGE_BYTES`` (its token goes on from there)."""
        if not 0 <= page_size <= MAX_PAGE:
            raise InvalidRequest(f"page_size must be between 0 and {MAX_PAGE}", reason="PAGE_SIZE_INVALID")
        limit = page_size or DEFAULT_PAGE
        start, end = pagination.listing_range(f.start_us, f.end_us, self.default_range_us)
        kinds = [f.kind] if f.kind else [DeadLetterKind.PROCESSING, DeadLetterKind.DELIVERY]
        query = _query(f, start, end)
        index, cursor = 0, None
        if page_token:
            raw = pagination.decode_token(page_token)
            pinned = raw.get("q")
            if not isinstance(pinned, dict) or {**pinned, "a": start, "b": end} != query:
                raise pagination.mismatched_token()
            start, end = pagination.pinned_range(pinned.get("a"), pinned.get("b"), f.start_us, f.end_us)
            query = _query(f, start, end)
            index, cursor = raw.get("k", 0), _cursor(raw.get("c"))
            if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(kinds):
                raise pagination.invalid_token()
        out: list[DeadLetter] = []
        scanned = 0
        while index < len(kinds) and len(out) < limit and scanned < MAX_SCAN:
            want = max(limit - len(out), pagination.SCAN_PAGE)
            batch, cursor = await self.store.dead_letters(kinds[index], start, end, want, cursor)
            scanned += len(batch)
            stop = pagination.take_matches(out, batch, f.matches, limit)
            if stop is not None:
                cursor = pagination.dead_cursor(stop)
            if cursor is None:
                index += 1
        if messages:
            out, cut = await self._with_messages(out)
            if cut:  # the next page starts after the last dead letter this one carries
                index, cursor = kinds.index(out[-1].kind), pagination.dead_cursor(out[-1])
        more = index < len(kinds)
        token = pagination.encode_token({"q": query, "k": index, "c": list(cursor) if cursor else None}) if more else ""
        return out, token

    async def _with_messages(self, rows: list[DeadLetter]) -> tuple[list[DeadLetter], bool]:
        """``rows`` read whole, in order, up to ``pagination.PAGE_BYTES`` of messages (at least one row); whether
        that cut the page short. A row that expired since the listing read it is left out."""
        out: list[DeadLetter] = []
        size = largest = 0
        i = 0
        while i < len(rows):
            # Sized to what the page can still carry: 32 reads of 15 MiB bodies held ~480 MiB for a page of one.
            n = FIRST_READS if not largest else max(1, min(MESSAGE_READS, (pagination.PAGE_BYTES - size) // largest))
            chunk, i = rows[i : i + n], i + n
            for d in await asyncio.gather(*(self.store.dead_letter_message(d) for d in chunk)):
                if d is None:
                    continue
                weight = _message_bytes(d)
                largest = max(largest, weight)
                size += weight
                if out and size > pagination.PAGE_BYTES:
                    return out, True
                out.append(d)
        return out, False

    async def selection(self, ids: Sequence[str], f: Filter, everything: bool) -> list[DeadLetter]:
        """The dead letters a redrive or a purge takes, without their bodies and headers, which are not even
        read: a selection can hold every dead letter of a long outage (100,000 rows of 5 KB bodies were half a
        gigabyte held for the whole redrive, and each page of 1,000 read whole before); a redrive reads each body
        back when it sends it (``_send_again``)."""
        if ids:  # an id named twice is redriven once
            return [_light(await self.get(i)) for i in dict.fromkeys(ids)]
        if f.empty and not everything:
            raise FailedPrecondition(
                "name dead letters by id, give a filter, or ask for all of them", reason="SELECTION_MISSING"
            )
        out: list[DeadLetter] = []
        token = ""
        while True:
            page, token = await self.list_dead_letters(f, MAX_PAGE, token, messages=False)
            out += page
            if not token:
                return out

    async def redrive(
        self, ids: Sequence[str], f: Filter, *, everything: bool, dry_run: bool
    ) -> AsyncIterator[RedriveProgress]:
        now = now_us()
        selected = await self.selection(ids, f, everything)
        chosen = [d for d in selected if _takeable(d, now)]
        # Named by id but not DEAD (redriven, purged, or being redriven): counted failed, said why. A filter
        # passes over them; named, they were dropped without a word (matched 0, exit 0).
        refused = [d for d in selected if ids and not _takeable(d, now)]
        matched, redriven, failed = len(chosen) + len(refused), 0, len(refused)
        why = (
            f"{len(refused)} named dead letter(s) not DEAD (redriven, purged or being redriven): "
            + ", ".join(f"{d.id} ({d.state.value})" for d in refused[:5])
            if refused
            else ""
        )
        yield RedriveProgress(matched, 0, 0, False, "dry run" if dry_run else why)
        if dry_run:
            yield RedriveProgress(
                matched, 0, failed, True, f"dry run: nothing redriven; {why}" if why else "dry run: nothing redriven"
            )
            return
        for n, d in enumerate(chosen, start=1):
            try:
                await self._redrive_one(d)
                redriven += 1
            except (InvalidRequest, FailedPrecondition) as exc:
                failed += 1
                log.warning("dead letter not redriven", extra={"dead_letter": d.id, "error": exc.message})
            if n % 50 == 0:
                yield RedriveProgress(matched, redriven, failed, False)
        yield RedriveProgress(matched, redriven, failed, True, why)

    async def _redrive_one(self, d: DeadLetter) -> None:
        """Shielded: a client that stops reading the progress (Ctrl-C) does not cut one row's redrive between
        its publish and its mark, which left the row DEAD and a second redrive published it again. The shielded
        redrives are tracked, so that ``close`` lets them end before the publisher and the store close."""
        task = asyncio.ensure_future(self._claimed_redrive(d))
        self._redrives.add(task)
        task.add_done_callback(self._redrives.discard)
        await asyncio.shield(task)

    async def close(self) -> None:
        """Waits (up to ``CLOSE_WAIT_SECONDS``) for the redrives under way, whose callers may be gone."""
        if self._redrives:
            await asyncio.wait(set(self._redrives), timeout=CLOSE_WAIT_SECONDS)

    async def _claimed_redrive(self, d: DeadLetter) -> None:
        """The row is claimed first (DEAD → REDRIVING, a lightweight transaction): of two redrives that
        selected it, one sends it again and the other counts it failed. Then the reset, the publish, and the
        mark REDRIVEN; if sending fails, the claim is given back (DEAD). Crash window: a control service killed
        after the claim leaves the row REDRIVING (and the event or delivery possibly reset, with nothing
        queued); a claim older than ``STALE_CLAIM_US`` is taken over by the next redrive, which sends it."""
        if d.reason == "UNDECODABLE":
            raise FailedPrecondition("an undecodable message cannot be redriven", reason="UNDECODABLE")
        claimed_at = await self._claim(d)
        try:
            await self._send_again(d)
        except FailedPrecondition as exc:
            if exc.reason != "NOTHING_TO_REDRIVE":
                raise
            # Settled without it (the event processed since, the delivery delivered, the row expired): marked
            # REDRIVEN, counted failed by this redrive. Given back DEAD, such a row stayed in every listing and
            # every later redrive of a filter counted it failed again, until it expired.
            await self._mark_redriven(d, claimed_at)
            raise
        except BaseException:
            try:
                await self.store.set_dead_letter_state(
                    d, DeadLetterState.DEAD, now_us(), only_from=DeadLetterState.REDRIVING, only_at_us=claimed_at
                )
            except SwitchboardError as exc:
                log.error(
                    "a dead letter not redriven is left REDRIVING until its claim is stale: the store refused "
                    "to mark it DEAD again",
                    extra={"dead_letter": d.id, "error": str(exc)},
                )
            raise
        await self._mark_redriven(d, claimed_at)

    async def _mark_redriven(self, d: DeadLetter, claimed_at: int) -> None:
        """REDRIVEN, dated by the claim (the recorder takes a death after it for a new one). It is sent: the
        mark is tried again rather than raised, since a raise would give the row back and a second redrive
        would send it twice. Still REDRIVING after the tries, it is taken over (and sent again) once stale."""
        error = await after_pauses(
            lambda: self.store.set_dead_letter_state(
                d, DeadLetterState.REDRIVEN, claimed_at, only_from=DeadLetterState.REDRIVING, only_at_us=claimed_at
            ),
            MARK_PAUSES,
            SwitchboardError,
        )
        if error is not None:
            log.error(
                "a dead letter sent again is left REDRIVING: the store refused the mark",
                extra={"dead_letter": d.id, "error": str(error)},
            )

    async def _claim(self, d: DeadLetter) -> int:
        """Claims ``d`` for this redrive; the claim's time. A DEAD row is claimed; a REDRIVING one whose claim
        is stale is taken over (compare-and-set on the claim's time); anything else is refused."""
        at = now_us()
        if await self.store.set_dead_letter_state(d, DeadLetterState.REDRIVING, at, only_from=DeadLetterState.DEAD):
            return at
        current = await self.store.get_dead_letter(d.id)
        if (
            current is not None
            and current.state is DeadLetterState.REDRIVING
            and at - current.redriven_us > STALE_CLAIM_US
            and await self.store.set_dead_letter_state(
                d,
                DeadLetterState.REDRIVING,
                at,
                only_from=DeadLetterState.REDRIVING,
                only_at_us=current.redriven_us,
            )
        ):
            log.warning("a stale redrive claim taken over", extra={"dead_letter": d.id})
            return at
        raise FailedPrecondition(
            f"dead letter {d.id} is being redriven, or was redriven or purged, since it was selected",
            reason="NOTHING_TO_REDRIVE",
        )

    async def _send_again(self, d: DeadLetter) -> None:
        if not d.body:  # selected without it (``selection``); every redrivable message has one
            stored = await self.store.dead_letter_message(d)
            if stored is None or not stored.body:
                raise FailedPrecondition(f"dead letter {d.id} is gone (expired)", reason="NOTHING_TO_REDRIVE")
            d = stored
        if d.kind is DeadLetterKind.PROCESSING:
            event = decode_inbound(d.body)
            if not await self.events.reset_attempts(event):
                raise FailedPrecondition(
                    f"event {event.key} was processed, or is stored under another receipt, since it was "
                    "dead-lettered: nothing to redrive",
                    reason="NOTHING_TO_REDRIVE",
                )
            await self.publisher.publish_event(event)
        else:
            task = decode_task(d.body)
            if not await self.store.reset_delivery(task.delivery_id, now_us()):
                raise FailedPrecondition(
                    f"delivery {task.delivery_id} was delivered: nothing to send again",
                    reason="NOTHING_TO_REDRIVE",
                )
            await self.publisher.publish_task(task)

    async def purge(self, ids: Sequence[str], f: Filter, *, confirm: bool) -> int:
        if not confirm:
            raise FailedPrecondition("a purge needs confirm = true", reason="CONFIRMATION_MISSING")
        now = now_us()
        chosen = [d for d in await self.selection(ids, f, everything=False) if _takeable(d, now)]
        purged = 0
        for d in chosen:  # only over what it selected: a redrive that claimed it meanwhile goes on
            claim = d.redriven_us if d.state is DeadLetterState.REDRIVING else None
            purged += await self.store.set_dead_letter_state(
                d, DeadLetterState.PURGED, now, only_from=d.state, only_at_us=claim
            )
        return purged


def _light(d: DeadLetter) -> DeadLetter:
    return replace(d, body=b"", headers={})


def _message_bytes(d: DeadLetter) -> int:
    """About what ``d`` weighs in a listing's answer (UTF-8): its message and error, its names, ~100 bytes more."""
    texts = (d.last_error, d.source, d.event_id, d.event_type, d.subscription_id, d.delivery_id, d.reason, d.id)
    headers = sum(len(k.encode()) + len(v.encode()) for k, v in d.headers.items())
    return len(d.body) + headers + sum(len(t.encode()) for t in texts) + 100


def _takeable(d: DeadLetter, now: int) -> bool:
    """Whether a redrive or a purge takes ``d``: DEAD, or REDRIVING under a stale claim (its control service
    stopped). A REDRIVEN row is not purged: its ``redriven_at`` dates the redrive, which tells the recorder a
    later death from a copy."""
    if d.state is DeadLetterState.REDRIVING:
        return now - d.redriven_us > STALE_CLAIM_US
    return d.state is DeadLetterState.DEAD


def _query(f: Filter, start: int, end: int) -> dict[str, Any]:
    return {
        "k": f.kind.value if f.kind else "",
        "s": f.source,
        "u": f.subscription_id,
        "t": f.event_type,
        "r": f.reason,
        "a": start,
        "b": end,
        "x": f.all_states,
    }


def _cursor(value: object) -> tuple[str, int, int, str] | None:
    if value is None:
        return None
    kind, day, ms, dead_letter_id = pagination.position(value, "sims")
    return kind, day, ms, dead_letter_id


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _first_death(headers: Any) -> dict[str, Any] | None:
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        return deaths[0]
    return None


def _us(value: object) -> int:
    if isinstance(value, int):
        return value
    if hasattr(value, "timestamp"):
        return int(value.timestamp() * 1_000_000)
    return 0
