"""The operation registry: which async callables run for which events, with a timeout each.

Operations are plain async functions named in the configuration (``module:function``), so a team adds its
own without touching the processor::

    async def op(event: InboundEvent) -> None: ...
    async def op(event: InboundEvent, ctx: OperationContext) -> None: ...

An event older than its entity's applied version is STALE: its operations are skipped (recorded SKIPPED with
the reason), except those that run for stale events too. An operation declares that with a
``runs_when_stale = True`` attribute (the built-in ``deliver`` does: a subscriber gets every event, and an
outbound delivery changes no entity); ``run_when_stale`` in its configuration overrides it. Operations that
change state stay guarded, so nothing older is ever applied over newer state.

Raise ``SkipOperation`` to record a skip; any other exception (or the timeout) records a failure, and the
operation runs again on the event's next attempt. An operation that succeeded (or skipped) never runs again
for that receipt of the event (a replay runs every operation again, on purpose).

What "applied exactly once" covers: effects staged on ``ctx`` (``ctx.save_entity_state``) are written
together with the operation's result, so they are applied once however often the message is delivered.
Effects an operation performs itself (an HTTP call, a write elsewhere) are at-least-once: a processor killed
after the call and before its commit runs the operation again on redelivery. Such operations should pass
``ctx.idempotency_key`` to the system they call.
"""

from __future__ import annotations

import asyncio
import fnmatch
import importlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field

from switchboard.config import OperationConfig
from switchboard.errors import ConfigError
from switchboard.model.events import Effect, EntitySnapshot, InboundEvent, OperationResult, Outcome, now_us

log = logging.getLogger(__name__)


@dataclass
class OperationContext:
    """What an operation gets besides the event: its attempt number, a key to make external calls
    idempotent, and the effects it stages for the processor to commit with its result."""

    operation: str
    attempt: int
    idempotency_key: str
    effects: list[Effect] = field(default_factory=list)

    def save_entity_state(self, event: InboundEvent) -> None:
        """Stage ``event``'s body as the latest state of its entity (ordered by the entity version)."""
        if not event.entity_id or not event.entity_version:
            raise SkipOperation("the event names no entity with a version")
        self.effects.append(
            EntitySnapshot(
                source=event.source,
                entity_id=event.entity_id,
                version=event.entity_version,
                event_id=event.event_id,
                event_type=event.event_type,
                content_type=event.content_type,
                body=event.body,
            )
        )


OperationFn = Callable[..., Awaitable[None]]


class SkipOperation(Exception):
    """Raised by an operation that decided not to act on an event; the reason is recorded."""


@dataclass(frozen=True)
class Operation:
    name: str
    fn: OperationFn
    event_types: tuple[str, ...] = ("*",)
    sources: tuple[str, ...] = ()
    timeout_seconds: float = 10.0
    takes_context: bool = False
    runs_when_stale: bool = False  # runs for a STALE event too (see the module docstring)

    def matches(self, event: InboundEvent) -> bool:
        if self.sources and event.source not in self.sources:
            return False
        return any(fnmatch.fnmatchcase(event.event_type, pattern) for pattern in self.event_types)

    async def run(self, event: InboundEvent, attempt: int) -> tuple[OperationResult, list[Effect]]:
        """Runs once; returns the result and the effects to commit with it (none unless it succeeded)."""
        ctx = OperationContext(self.name, attempt, f"{event.key}/{self.name}")
        started = now_us()
        outcome, error = Outcome.OK, ""
        try:
            call = self.fn(event, ctx) if self.takes_context else self.fn(event)
            # In the caller's task, not a task of its own as ``wait_for`` would make: ~6 µs less per run.
            async with asyncio.timeout(self.timeout_seconds):
                await call
        except SkipOperation as exc:
            outcome, error = Outcome.SKIPPED, str(exc)[:1000]
        except TimeoutError:
            outcome, error = Outcome.FAILED, f"timed out after {self.timeout_seconds:g} s"
        except asyncio.CancelledError:
            if _cancelled():  # the processor is stopping: not the operation's failure
                raise
            # Leaked from the operation (a future its own library cancelled): a failure like any other. Let
            # through, it ended the worker's batch task with nothing acked and nothing logged.
            outcome, error = Outcome.FAILED, "CancelledError: raised inside the operation"
            log.warning("operation failed", extra={"operation": self.name, "event": event.key, "error": error})
        except Exception as exc:
            outcome, error = Outcome.FAILED, f"{type(exc).__name__}: {exc}"[:1000]
            log.warning("operation failed", extra={"operation": self.name, "event": event.key, "error": error})
        finished = now_us()
        effects = ctx.effects if outcome is Outcome.OK else []
        return OperationResult(self.name, outcome, attempt, finished - started, finished, error), effects


def _cancelled() -> bool:
    """Whether the running task is being cancelled (a CancelledError it raises is its own, not a leak)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def load_operation(cfg: OperationConfig, bound: Mapping[str, OperationFn] | None = None) -> Operation:
    """The operation ``cfg`` names: a function imported from ``module:function``, or, for a built-in that needs
    the process's resources (the fan-out needs the subscriptions and a publisher), the callable ``bound``
    gives for that name."""
    if bound is not None and cfg.call in bound:
        fn = bound[cfg.call]
    else:
        module_name, _, attr = cfg.call.partition(":")
        try:
            fn = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"operation {cfg.name!r}: cannot load {cfg.call}: {exc}") from None
    if not (inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)):
        raise ConfigError(f"operation {cfg.name!r}: {cfg.call} must be an async function")
    positional = [
        p
        for p in inspect.signature(fn).parameters.values()
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    if len(positional) not in (1, 2):
        raise ConfigError(f"operation {cfg.name!r}: {cfg.call} must take (event) or (event, ctx)")
    when_stale = cfg.run_when_stale
    if when_stale is None:
        when_stale = getattr(fn, "runs_when_stale", False) is True
    return Operation(cfg.name, fn, cfg.event_types, cfg.sources, cfg.timeout_seconds, len(positional) == 2, when_stale)


class Registry:
    def __init__(self, operations: Iterable[Operation]) -> None:
        self.operations = list(operations)

    @classmethod
    def from_config(
        cls, configs: Iterable[OperationConfig], bound: Mapping[str, OperationFn] | None = None
    ) -> Registry:
        return cls(load_operation(c, bound) for c in configs)

    def matching(self, event: InboundEvent) -> list[Operation]:
        return [op for op in self.operations if op.matches(event)]
