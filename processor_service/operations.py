"""The operation registry: which async callables run for which events, with a timeout each.

Operations are plain ``async def op(event: InboundEvent) -> None`` functions named in the configuration
(``module:function``), so a team adds its own without touching the processor. Raise ``SkipOperation`` to
record a skip; any other exception (or the timeout) records a failure.
"""

from __future__ import annotations

import asyncio
import fnmatch
import importlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from switchboard.config import OperationConfig
from switchboard.errors import ConfigError
from switchboard.events import InboundEvent, OperationResult, Outcome, now_us

log = logging.getLogger(__name__)

OperationFn = Callable[[InboundEvent], Awaitable[None]]


class SkipOperation(Exception):
    """Raised by an operation that decided not to act on an event; the reason is recorded."""


@dataclass(frozen=True)
class Operation:
    name: str
    fn: OperationFn
    event_types: tuple[str, ...] = ("*",)
    sources: tuple[str, ...] = ()
    timeout_seconds: float = 10.0

    def matches(self, event: InboundEvent) -> bool:
        if self.sources and event.source not in self.sources:
            return False
        return any(fnmatch.fnmatchcase(event.event_type, pattern) for pattern in self.event_types)

    async def run(self, event: InboundEvent, attempt: int) -> OperationResult:
        started = now_us()
        outcome, error = Outcome.OK, ""
        try:
            await asyncio.wait_for(self.fn(event), self.timeout_seconds)
        except SkipOperation as exc:
            outcome, error = Outcome.SKIPPED, str(exc)[:1000]
        except TimeoutError:
            outcome, error = Outcome.FAILED, f"timed out after {self.timeout_seconds:g} s"
        except Exception as exc:
            outcome, error = Outcome.FAILED, f"{type(exc).__name__}: {exc}"[:1000]
            log.warning("operation failed", extra={"operation": self.name, "event": event.key, "error": error})
        finished = now_us()
        return OperationResult(self.name, outcome, attempt, finished - started, finished, error)


def load_operation(cfg: OperationConfig) -> Operation:
    module_name, _, attr = cfg.call.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"operation {cfg.name!r}: cannot load {cfg.call}: {exc}") from None
    if not inspect.iscoroutinefunction(fn):
        raise ConfigError(f"operation {cfg.name!r}: {cfg.call} must be an async function")
    return Operation(cfg.name, fn, cfg.event_types, cfg.sources, cfg.timeout_seconds)


class Registry:
    def __init__(self, operations: Iterable[Operation]) -> None:
        self.operations = list(operations)

    @classmethod
    def from_config(cls, configs: Iterable[OperationConfig]) -> Registry:
        return cls(load_operation(c) for c in configs)

    def matching(self, event: InboundEvent) -> list[Operation]:
        return [op for op in self.operations if op.matches(event)]
