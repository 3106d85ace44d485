"""Processor domain: decide what each receipt is, guard, run the operations that are not done yet, commit.

At-least-once delivery from the queue becomes "applied once, recorded forever", for a whole batch of
receipts at a time (one read of what is stored, one write of every outcome):

* **Idempotency without a lightweight transaction.** Every receipt of one event (same ``source/event_id``)
  travels through the same partition of the events stream, which has one active processor at a time, and
  that processor never handles two receipts of one key at once (the queue worker orders by key). So receipts
  of one event are decided one after the other, and a plain read decides: nothing stored yet → this receipt
  is applied; stored under another receipt → a duplicate, recorded and acked; stored under this receipt → a
  redelivery (the processor died before its ack) or a retry, which resumes from what was committed and only
  runs the operations with no OK or SKIPPED result yet. Replays (``replay``) are applied again on purpose.
* **Out-of-order guard.** An event whose entity already holds a higher version is recorded as STALE and its
  operations are not run, except those that run when stale (``Operation.runs_when_stale``: ``deliver``; a
  stale pass whose such operation fails retries like any pass, and moves no version mark). Equal versions
  are applied. Events of one entity in the same batch are guarded in arrival order against each other too.
  Batches running at the same time in one processor (``processor.concurrency`` > 1) are guarded against each
  other too: the processor remembers the versions it committed (the latest ``DECIDED_VERSIONS`` entities)
  and those its batches in flight decided, and takes the highest of those and what it read, so a batch whose
  read came before another batch's commit still sees that batch's version. A batch that fails before its
  commit takes back its own decisions and no other batch's, and a committed batch those of its receipts left
  out of the commit (abandoned), so the memory never holds a version that was neither committed nor is being
  committed (its own receipts, retried, are not STALE against it).
* **Attempts.** A pass whose operation failed is RETRYING (the worker schedules it through a delay queue)
  until ``max_attempts``, then FAILED (the worker dead-letters it). The attempt count lives in the store, so
  it survives redeliveries and restarts.

The caller acks only after ``handle`` returned: every outcome is committed before that. ``docs/processing.md``
lists the crash windows and what each leaves behind.

**Traces.** With a ``tracer``, each receipt whose traceparent Envoy sampled gets, once its batch is committed,
a ``process`` span (consumer; attempt, disposition, batch size) with the batch's Cassandra reads (what is
stored and, for a versioned entity, the guard's versions, both sent at once), each operation this pass ran
(its own start and duration) and the batch's Cassandra commit under it. Spans are recorded
after the commit with the times measured during the batch, so untraced receipts cost two clock reads per
batch, and a crash before the commit leaves no span (the redelivery's pass records its own).
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from processor_service.operations import Operation, Registry
from switchboard.model.events import (
    Commit,
    EventStatus,
    InboundEvent,
    OperationResult,
    Outcome,
    Prior,
    Runs,
    StoredEvent,
    now_us,
)
from switchboard.observability.tracing import NO_TRACER, Attributes, Tracer, sampled

TERMINAL = frozenset({EventStatus.PROCESSED, EventStatus.STALE, EventStatus.FAILED})
# Entities whose decided version the processor remembers for the guard (least recently decided dropped first).
DECIDED_VERSIONS = 50_000
# The error of a receipt whose pass was committed FAILED and that came back (its dead letter again).
REDELIVERED_FAILED = "failed on its last attempt (redelivered before its dead letter was confirmed)"


class EventStore(Protocol):
    async def priors(self, events: Sequence[InboundEvent]) -> dict[str, Prior]: ...
    async def runs_of(self, source: str, event_id: str, receipt_id: str) -> Runs: ...
    async def commit(
        self,
        commits: Sequence[Commit],
        *,
        duplicates: Sequence[InboundEvent] = (),
        reindex: Sequence[tuple[InboundEvent, EventStatus]] = (),
    ) -> None: ...


class EntityVersions(Protocol):
    async def versions(self, keys: Collection[tuple[str, str]]) -> dict[tuple[str, str], int]: ...


class Disposition(enum.Enum):
    PROCESSED = "processed"  # every operation OK or skipped: ack
    STALE = "stale"  # older than its entity's applied version: ack
    RETRY = "retry"  # an operation failed, attempts left: schedule a retry, then ack
    FAILED = "failed"  # an operation failed on the last attempt: dead-letter, then ack
    DUPLICATE = "duplicate"  # another receipt of this event was applied: ack
    DONE = "done"  # this receipt was already committed in a final state (a redelivery): ack
    ABANDONED = "abandoned"  # no longer held when the batch was about to commit: nothing committed, no ack
    BEHIND = "behind"  # a copy behind the stored attempts of a RETRYING pass: nothing run, back to wait, ack


@dataclass(frozen=True)
class Handled:
    disposition: Disposition
    attempt: int = 0
    last_error: str = ""
    applied: int = 0  # operations that ran and succeeded in this pass
    # The attempt within the receipt's own budget (1 for the first attempt of a replay that comes after the
    # event's attempts): what a retry's backoff is counted from. 0: ``attempt``.
    backoff_attempt: int = 0
    again: bool = False  # FAILED before this pass: its dead letter is a copy of that death (DeadLetter.again)
    first: bool = False  # the event's first pass (nothing was stored for it): what its e2e latency times


@dataclass
class _Pass:
    """One receipt to apply: its attempt number, the operations still to run, and its last attempt (the
    receipt's first attempt + ``max_attempts`` - 1: a replay counts its attempts on from the event's, and gets
    as many as a new event)."""

    event: InboundEvent
    attempt: int
    ops: list[Operation]
    guarded: bool
    last_attempt: int
    first: bool = False  # nothing was stored for the event: not a retry, redelivery, replay or redrive
    stale: str = ""  # why the guard found it stale: only the operations that run when stale are left in ops
    skipped: list[OperationResult] = field(default_factory=list)  # the guarded operations, skipped as stale


class Processor:
    def __init__(
        self,
        store: EventStore,
        entities: EntityVersions,
        registry: Registry,
        *,
        max_attempts: int,
        tracer: Tracer = NO_TRACER,
    ) -> None:
        self.store = store
        self.entities = entities
        self.registry = registry
        self.max_attempts = max_attempts
        self.tracer = tracer
        # (source, entity id) → the highest version this processor committed for it (least recent dropped first)
        self._decided: dict[tuple[str, str], int] = {}
        # (source, entity id) → {batch: the version it decided}, for the batches not committed yet
        self._pending: dict[tuple[str, str], dict[int, int]] = {}
        self._batches = itertools.count()

    async def handle(
        self,
        events: Sequence[InboundEvent],
        held: Callable[[int], bool] | None = None,
        sent_attempts: Sequence[int] | None = None,
    ) -> list[Handled]:
        """Decides, applies and commits a batch of receipts with distinct keys; one ``Handled`` each, in order.

        ``held(i)`` says whether ``events[i]`` is still this processor's to decide; it is asked right before
        the commit. A receipt no longer held (its queue channel closed while the batch ran, so the broker
        hands it to the partition's next processor) is left out of the commit and answered ``ABANDONED``:
        committing it would race that processor's read (see "Windows that remain", docs/processing.md).

        ``sent_attempts[i]``: the attempts made before ``events[i]``'s copy was sent (its ``x-attempt``). A
        copy of a pass still RETRYING that is behind the stored attempts (its retry copy was never published:
        the broker refused it, during a resource alarm at once, or the batch was retried after an outage once
        its commit had landed) runs nothing and is answered ``BEHIND``: sent back to wait in the delay queue
        of the stored attempt. Run at once, such copies spent an event's attempts in seconds."""
        assert len({e.key for e in events}) == len(events), "one receipt per event in a batch"
        started_ns = time.time_ns()
        # The entity versions are read together with the priors, for every event that names a versioned
        # entity (a duplicate's or redelivery's key is read for nothing: cheaper than a second round trip).
        entity_keys = {(e.source, e.entity_id) for e in events if _guarded(e)}
        priors, versions = await asyncio.gather(
            self.store.priors(events), self.entities.versions(entity_keys) if entity_keys else _no_versions()
        )
        read_ns = time.time_ns()
        out: list[Handled | None] = [None] * len(events)
        duplicates: list[InboundEvent] = []
        reindex: list[tuple[InboundEvent, EventStatus]] = []
        # Receipts whose own earlier runs decide their pass: retries, redeliveries and replays.
        rereads: list[tuple[int, InboundEvent, Prior]] = []
        passes: dict[int, _Pass] = {}
        for i, e in enumerate(events):
            prior = priors.get(e.key)
            if prior is not None and not prior.receipt_id:
                # A row with no receipt was never committed: what a redrive's reset of attempts leaves for an
                # event dead-lettered before its first commit (a batch the store refused). Nothing is applied.
                prior = None
            if prior is None:
                passes[i] = self._pass(e, 1, frozenset(), 1)
                passes[i].first = e.key not in priors  # a redrive's receiptless row: not the first pass
            elif prior.receipt_id != e.receipt_id:
                if e.replay:  # a new replay, or one another replay took over since
                    rereads.append((i, e, prior))
                else:
                    duplicates.append(e)
                    out[i] = Handled(Disposition.DUPLICATE)
            elif prior.status in TERMINAL:
                reindex.append((e, prior.status))  # repairs an index row lost to a crash
                if prior.status is EventStatus.FAILED:
                    # Its dead letter may never have been published (the copy refused, or the processor died
                    # before it): dead-lettered again. A second record of it at worst, never none.
                    error = f"{REDELIVERED_FAILED}: {prior.last_error}" if prior.last_error else REDELIVERED_FAILED
                    out[i] = Handled(Disposition.FAILED, prior.attempts, error, again=True)
                else:
                    out[i] = Handled(Disposition.DONE, prior.attempts)
            elif sent_attempts is not None and sent_attempts[i] < prior.attempts:
                out[i] = Handled(Disposition.BEHIND, prior.attempts, prior.last_error)
            else:
                rereads.append((i, e, prior))
        if rereads:  # what these receipts did before
            runs = await asyncio.gather(
                *(self.store.runs_of(e.source, e.event_id, e.receipt_id) for _, e, _ in rereads)
            )
            for (i, e, prior), run in zip(rereads, runs, strict=True):
                attempt = prior.attempts + 1
                if prior.receipt_id == e.receipt_id:
                    # A retry or redelivery of a non-final pass: what this receipt did is skipped.
                    passes[i] = self._pass(e, attempt, run.done, run.first_attempt(attempt))
                elif not run.attempts:
                    # A replay is applied again on purpose: every operation runs, as the event's next attempt,
                    # with as many attempts as a new event from there.
                    passes[i] = self._pass(e, attempt, frozenset(), attempt)
                else:
                    # A copy of a replay that another replay of the event took over since: that one runs
                    # everything again; this one giving itself a fresh budget, two overlapping replays of a
                    # failing event ran every operation by turns, without end.
                    duplicates.append(e)
                    out[i] = Handled(Disposition.DUPLICATE)

        commits: dict[int, Commit] = {}
        # No await from here to the end of _decide: batches running concurrently decide one after the other.
        batch = next(self._batches)
        stale, decided = self._decide(batch, passes, versions)
        try:
            answers, commit_ns, lost = await self._apply(events, held, passes, stale, commits, out, duplicates, reindex)
        except BaseException:
            self._settle(batch, decided, committed=False)
            raise
        if lost:  # abandoned receipts committed nothing: their versions are taken back like a failed batch's
            kept = _committed_versions(passes, stale, lost)
            self._settle(batch, {k: v for k, v in decided.items() if k not in kept}, committed=False)
            decided = {k: v for k, v in kept.items() if k in decided}
        self._settle(batch, decided, committed=True)
        if self.tracer.enabled:
            self._trace(events, answers, commits, (started_ns, read_ns, commit_ns, time.time_ns()))
        return answers

    async def _apply(
        self,
        events: Sequence[InboundEvent],
        held: Callable[[int], bool] | None,
        passes: dict[int, _Pass],
        stale: dict[int, str],
        commits: dict[int, Commit],
        out: list[Handled | None],
        duplicates: list[InboundEvent],
        reindex: list[tuple[InboundEvent, EventStatus]],
    ) -> tuple[list[Handled], int, set[int]]:
        """Runs the passes and commits the batch (``handle``'s second half); returns the answers, when the
        commit started, and the receipts left out of it (no longer held: abandoned)."""
        for i, reason in stale.items():
            # Guarded operations are skipped with the reason; those that run when stale (deliver) still run.
            p = passes[i]
            finished = now_us()
            p.stale = reason
            p.skipped = [
                OperationResult(op.name, Outcome.SKIPPED, p.attempt, 0, finished, reason)
                for op in p.ops
                if not op.runs_when_stale
            ]
            p.ops = [op for op in p.ops if op.runs_when_stale]
            if not p.ops:
                del passes[i]
                commits[i] = Commit(StoredEvent(p.event, EventStatus.STALE, p.skipped, finished, p.attempt, reason))
                out[i] = Handled(Disposition.STALE, p.attempt, reason, first=p.first)
        for i, (commit, handled) in await self._run_all(passes):
            commits[i] = commit
            out[i] = handled
        lost: set[int] = set()
        if held is not None:
            lost = {i for i in range(len(events)) if not held(i)}
            if lost:
                lost_keys = {events[i].key for i in lost}
                for i in lost:
                    commits.pop(i, None)
                    out[i] = Handled(Disposition.ABANDONED)
                duplicates = [e for e in duplicates if e.key not in lost_keys]
                reindex = [(e, s) for e, s in reindex if e.key not in lost_keys]
        commit_ns = time.time_ns()
        await self.store.commit([commits[i] for i in sorted(commits)], duplicates=duplicates, reindex=reindex)
        answers = [h for h in out if h is not None]
        assert len(answers) == len(events)
        return answers, commit_ns, lost

    def _trace(
        self,
        events: Sequence[InboundEvent],
        handled: Sequence[Handled],
        commits: dict[int, Commit],
        times: tuple[int, int, int, int],
    ) -> None:
        """The spans of the batch's sampled receipts (see the module docstring)."""
        started, read, commit_start, committed = times
        for i, e in enumerate(events):
            if not sampled(e.traceparent):
                continue
            h = handled[i]
            failed = h.disposition in (Disposition.RETRY, Disposition.FAILED)
            parent = self.tracer.record(
                f"process {e.event_type or 'event'}",
                e.traceparent,
                started,
                committed,
                kind="consumer",
                attributes={
                    "switchboard.event_id": e.event_id,
                    "switchboard.source": e.source,
                    "messaging.message.id": e.receipt_id,
                    "switchboard.attempt": h.attempt,
                    "switchboard.disposition": h.disposition.value,
                    "switchboard.replay": bool(e.replay),
                    "messaging.batch.message_count": len(events),
                },
                error=h.last_error if failed else "",
            )
            db: Attributes = {"db.system.name": "cassandra", "messaging.batch.message_count": len(events)}
            self.tracer.record(
                "cassandra read", parent, started, read, kind="client", attributes={**db, "db.operation.name": "priors"}
            )
            passed = h.disposition not in (Disposition.DUPLICATE, Disposition.DONE)
            if passed and _guarded(e):  # the out-of-order guard read its entity's version, with the priors
                self.tracer.record(
                    "cassandra read versions",
                    parent,
                    started,
                    read,
                    kind="client",
                    attributes={**db, "db.operation.name": "entity versions"},
                )
            commit = commits.get(i)
            for r in commit.stored.results if commit is not None else ():
                self.tracer.record(
                    f"operation {r.operation}",
                    parent,
                    (r.finished_us - r.duration_us) * 1000,
                    r.finished_us * 1000,
                    attributes={
                        "switchboard.operation": r.operation,
                        "switchboard.outcome": r.outcome.value,
                        "switchboard.attempt": r.attempt,
                    },
                    error=r.error if r.outcome is Outcome.FAILED else "",
                )
            self.tracer.record(
                "cassandra commit",
                parent,
                commit_start,
                committed,
                kind="client",
                attributes={**db, "db.operation.name": "commit", "switchboard.commits": len(commits)},
            )

    def _decide(
        self, batch: int, passes: dict[int, _Pass], versions: dict[tuple[str, str], int]
    ) -> tuple[dict[int, str], dict[tuple[str, str], int]]:
        """``_guard`` against what was read and what this processor decided: committed (possibly after this
        batch's read) or decided by batches not committed yet. Returns the stale passes and the version this
        batch decided per entity, pending until ``_settle``: a batch that fails before its commit takes back its
        own decisions and no other batch's."""
        for key in {(p.event.source, p.event.entity_id) for p in passes.values() if p.guarded}:
            decided = self._decided_version(key)
            if decided is not None and decided > versions.get(key, -1):
                versions[key] = decided
        stale = _guard(passes, versions)
        mine = {(p.event.source, p.event.entity_id) for i, p in passes.items() if p.guarded and i not in stale}
        decided_now = {key: versions[key] for key in mine}
        for key, version in decided_now.items():
            self._pending.setdefault(key, {})[batch] = version
        return stale, decided_now

    def _decided_version(self, key: tuple[str, str]) -> int | None:
        """The highest version of the entity this processor committed or has a batch deciding."""
        pending = self._pending.get(key)
        committed = self._decided.get(key)
        if not pending:
            return committed
        highest = max(pending.values())
        return highest if committed is None else max(committed, highest)

    def _settle(self, batch: int, decided: dict[tuple[str, str], int], *, committed: bool) -> None:
        """The batch's decisions leave the pending ones; committed, they are remembered (the most recently
        decided last, the oldest dropped past ``DECIDED_VERSIONS``). A batch that failed before its commit (the
        worker retries it, or runs its receipts one by one) leaves nothing: kept, its versions made its own
        receipts STALE on the next pass."""
        for key, version in decided.items():
            pending = self._pending.get(key)
            if pending is not None:
                pending.pop(batch, None)
                if not pending:
                    del self._pending[key]
            if committed:
                before = self._decided.pop(key, None)  # re-inserted last: the oldest decisions are dropped first
                self._decided[key] = version if before is None else max(before, version)
        while len(self._decided) > DECIDED_VERSIONS:
            del self._decided[next(iter(self._decided))]

    def _pass(self, event: InboundEvent, attempt: int, done: frozenset[str], first_attempt: int) -> _Pass:
        ops = [op for op in self.registry.matching(event) if op.name not in done]
        return _Pass(event, attempt, ops, _guarded(event), first_attempt + self.max_attempts - 1)

    async def _run_all(self, passes: dict[int, _Pass]) -> list[tuple[int, tuple[Commit, Handled]]]:
        """Runs the passes, those of one entity one after another in arrival order (the guard's version order:
        an older one that arrived later is STALE), the others concurrently. Run all at once, versions 100 and
        200 of one entity in one batch both passed the guard and an outside write of 100 could land after
        200's: "nothing older is applied over newer state" held for the entity's row only."""
        lanes: dict[tuple[str, str] | int, list[int]] = {}
        for i, p in passes.items():
            lanes.setdefault((p.event.source, p.event.entity_id) if p.event.entity_id else i, []).append(i)

        async def lane(indices: list[int]) -> list[tuple[int, tuple[Commit, Handled]]]:
            return [(i, await self._run(passes[i])) for i in sorted(indices)]

        return [pair for done in await asyncio.gather(*(lane(x) for x in lanes.values())) for pair in done]

    async def _run(self, p: _Pass) -> tuple[Commit, Handled]:
        """Runs the pass's operations one after another and builds what to commit. A stale pass ends STALE
        once its operations succeeded, and moves no version mark."""
        results: list[OperationResult] = list(p.skipped)
        commit = Commit(StoredEvent(p.event, EventStatus.PROCESSED), mark_entity=p.guarded and not p.stale)
        for op in p.ops:
            result, staged = await op.run(p.event, p.attempt)
            results.append(result)
            commit.effects.extend(staged)
        failed = [r for r in results if r.outcome is Outcome.FAILED]
        last_error = "; ".join(f"{r.operation}: {r.error}" for r in failed)[:2000]
        if not failed and p.stale:
            status, disposition, last_error = EventStatus.STALE, Disposition.STALE, p.stale
        elif not failed:
            status, disposition = EventStatus.PROCESSED, Disposition.PROCESSED
        elif p.attempt < p.last_attempt:
            status, disposition = EventStatus.RETRYING, Disposition.RETRY
            # A stale pass that retries records only what it ran: SKIPPED counts as done, and its retry guards
            # the skipped operations again (should the version that made it stale not hold, they run then).
            results = results[len(p.skipped) :]
        else:
            status, disposition = EventStatus.FAILED, Disposition.FAILED
        commit.stored = StoredEvent(p.event, status, results, now_us(), p.attempt, last_error)
        applied = sum(1 for r in results if r.outcome is Outcome.OK)
        return commit, Handled(
            disposition, p.attempt, last_error, applied, p.attempt - p.last_attempt + self.max_attempts, first=p.first
        )


def _guarded(event: InboundEvent) -> bool:
    """The out-of-order guard applies: the event names an entity and carries a version."""
    return bool(event.entity_id and event.entity_version > 0)


async def _no_versions() -> dict[tuple[str, str], int]:
    return {}


def _committed_versions(passes: dict[int, _Pass], stale: dict[int, str], lost: set[int]) -> dict[tuple[str, str], int]:
    """The highest version per entity among the batch's committed passes that moved it (guarded, not stale, not
    abandoned): what the batch decided once its abandoned receipts are taken out."""
    versions: dict[tuple[str, str], int] = {}
    for i, p in passes.items():
        if p.guarded and i not in stale and i not in lost:
            key = (p.event.source, p.event.entity_id)
            versions[key] = max(versions.get(key, 0), p.event.entity_version)
    return versions


def _guard(passes: dict[int, _Pass], versions: dict[tuple[str, str], int]) -> dict[int, str]:
    """The passes older than their entity's applied version (index → reason). Passes of one entity in this
    batch are taken in arrival order, each moving the version for the ones after it (``versions`` is updated)."""
    stale: dict[int, str] = {}
    for i in sorted(passes):
        p = passes[i]
        if not p.guarded:
            continue
        key = (p.event.source, p.event.entity_id)
        current = versions.get(key)
        if current is not None and current > p.event.entity_version:
            stale[i] = (
                f"stale: entity {p.event.entity_id} is at version {current}, "
                f"this event carries {p.event.entity_version}"
            )
        else:
            versions[key] = p.event.entity_version
    return stale
