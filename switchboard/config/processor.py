"""``[processor]``: operations, retries and the consumer's window."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from switchboard.config._table import Table, resolve_path, table
from switchboard.errors import ConfigError

MAX_DELAY_LEVELS = 24
MAX_PARTITIONS = 100  # of a stream (processor.partitions, delivery.partitions)
# A consumer's prefetch count is a 16-bit field of AMQP's basic.qos (processor.prefetch, delivery.prefetch).
MAX_PREFETCH = 65_535
# A redelivered event's wait must outlast a write the dead processor had in flight (Cassandra's write timeout:
# 2 s by default); with 0 the processor-cut-off fault test applied 11 events twice (docs/processing.md).
MIN_REDELIVERY_DELAY_SECONDS = 2.5
# The longest TTL RabbitMQ takes for a delay queue (x-message-ttl, in ms: Erlang's timer limit); a longer
# retry level would make every declaration of the events stream fail.
MAX_DELAY_MS = 2**32 - 1


@dataclass(frozen=True)
class OperationConfig:
    """An operation the processor runs for matching events: ``call`` is ``module:function``."""

    name: str
    call: str
    event_types: tuple[str, ...] = ("*",)
    sources: tuple[str, ...] = ()  # empty: every source
    timeout_seconds: float = 10.0
    # Runs for a STALE event too (one older than its entity's applied version); None: what the operation
    # itself declares (``runs_when_stale``; the built-in ``deliver`` does, so every event reaches its
    # subscribers), else not.
    run_when_stale: bool | None = None


@dataclass(frozen=True)
class RetryConfig:
    """Retries of failed operations: exponential backoff with jitter through delay queues.

    Attempt ``n`` (1-based) that fails waits ``min_backoff * 2**(n-1)`` seconds, capped at ``max_backoff``,
    jittered down to between half and all of it; attempt ``max_attempts`` that fails marks the event FAILED
    and dead-letters its message.
    """

    max_attempts: int = 8
    min_backoff_seconds: float = 1.0
    max_backoff_seconds: float = 600.0

    def levels_ms(self) -> tuple[int, ...]:
        """The delay queues' TTLs: ``min_backoff * 2**k`` up to and including ``max_backoff``."""
        out: list[int] = []
        delay = self.min_backoff_seconds
        while True:
            ms = round(min(delay, self.max_backoff_seconds) * 1000)
            if out and ms == out[-1]:
                break
            out.append(ms)
            if delay >= self.max_backoff_seconds:
                break
            delay *= 2
        return tuple(out)


@dataclass(frozen=True)
class ProcessorConfig:
    count: int = 1
    # Partitions of the events stream: every receipt of one event goes to the same one, and each has one
    # active processor at a time. More partitions spread the load over more processors.
    partitions: int = 8
    # Unacked messages per partition a processor holds (at least ``batch``, so that one partition can fill a
    # batch while draining a backlog).
    prefetch: int = 256
    # Messages handed to the pipeline at once, and how many such batches run together. One batch at a time
    # is the default: a batch takes what queued while the previous one ran, so batches grow with the load,
    # and fewer requests reach Cassandra at once. At 400 events/s on 2 cores (bench.pipeline, 2026-12-03,
    # three runs each) 2 batches at a time gave HTTP p50/p99 93-160/527-713 ms and e2e 121-176/758-984 ms,
    # 1 gave 34-57/433-480 and 64-99/544-742, with no lower drain rate. More helps operations that wait long
    # on something outside (a batch's operations run concurrently, but the next batch waits for the slowest),
    # and a single processor past ~600 events/s: at 800/s one batch at a time fell behind (batches of 256
    # taking ~350 ms), two carried it as two processors do (README, "One processor or two").
    # Up to 256 (was 128) since 2026-12-04: draining a backlog with two processors, 1,240, 1,466 and 1,389
    # events/s against 1,160, 1,166 and 1,222 (three alternating pairs, prefetch raised with it); a batch's
    # reads and its commit's round trips are shared by twice the events. Below a backlog batches are smaller
    # than either limit (they take what queued), so latency at 400/s did not move.
    batch: int = 256
    concurrency: int = 1
    # A batch smaller than ``batch`` waits until its oldest message has been this long in the processor (a full
    # batch goes at once). At 300 events/s on 2 cores with no wait the processors ran ~110 batches of ~3 events
    # a second; with 20 ms, ~70 of ~4-5, the box's CPU per event 5.1-5.2 ms instead of 5.6 (the processors'
    # 1.2 instead of 1.4-1.5), e2e p50 21-23 ms instead of 15-17 (bench.pipeline, 2026-12-06, README). At 600/s
    # and above batches are larger than a linger would make them. 0: a batch starts with what is there.
    batch_linger_ms: int = 20
    # A redelivered event waits this long before it is processed, so that the writes a processor that died had
    # in flight for it have landed or timed out (Cassandra's write timeout is 2 s).
    redelivery_delay_seconds: float = 3.0
    # Seconds of silence after which the broker drops a processor's connection and fails its partitions over
    # to another processor (its unacked messages are redelivered to that one). Short, so that a frozen or
    # cut-off processor is replaced quickly; the benchmark raises it for processors it pauses on purpose.
    heartbeat_seconds: int = 10
    operations: tuple[OperationConfig, ...] = ()
    retry: RetryConfig = field(default_factory=RetryConfig)
    # Directories put in front of sys.path before the operations are imported (a team's own modules).
    python_path: tuple[Path, ...] = ()
    # Seconds between the processor's stats log lines.
    stats_interval_seconds: float = 60.0


def parse_processor(raw: Mapping[str, Any], base: Path) -> ProcessorConfig:
    t = Table(raw, "processor", ProcessorConfig)
    operations = raw.get("operations", [])
    if not isinstance(operations, list):
        raise ConfigError("processor.operations: must be an array of tables ([[processor.operations]])")
    processor = ProcessorConfig(
        count=t.pos_int("count"),
        partitions=t.int_between("partitions", 1, MAX_PARTITIONS),
        prefetch=t.int_between("prefetch", 1, MAX_PREFETCH),
        batch=t.pos_int("batch"),
        concurrency=t.pos_int("concurrency"),
        batch_linger_ms=t.int_between("batch_linger_ms", 0, 1000),
        redelivery_delay_seconds=t.float_between("redelivery_delay_seconds", MIN_REDELIVERY_DELAY_SECONDS, 60),
        heartbeat_seconds=t.int_between("heartbeat_seconds", 1, 3600),
        operations=tuple(_operation(o, j) for j, o in enumerate(operations)),
        retry=_retry(table(raw, "retry", "processor")),
        python_path=tuple(resolve_path(base, p) for p in t.strings("python_path")),
        stats_interval_seconds=t.pos_float("stats_interval_seconds"),
    )
    names = [o.name for o in processor.operations]
    if len(set(names)) != len(names):
        raise ConfigError(f"processor.operations: duplicate operation names in {names}")
    return processor


def _retry(raw: Mapping[str, Any]) -> RetryConfig:
    t = Table(raw, "processor.retry", RetryConfig)
    retry = RetryConfig(
        max_attempts=t.pos_int("max_attempts"),
        min_backoff_seconds=t.pos_float("min_backoff_seconds"),
        max_backoff_seconds=t.pos_float("max_backoff_seconds", at_most=MAX_DELAY_MS / 1000),
    )
    if retry.max_backoff_seconds < retry.min_backoff_seconds:
        raise ConfigError("processor.retry.max_backoff_seconds must not be less than min_backoff_seconds")
    if len(retry.levels_ms()) > MAX_DELAY_LEVELS:
        raise ConfigError(f"processor.retry: more than {MAX_DELAY_LEVELS} delay levels; raise min_backoff_seconds")
    return retry


def _operation(o: Any, idx: int) -> OperationConfig:
    where = f"processor.operations[{idx}]"
    if not isinstance(o, Mapping):
        raise ConfigError(f"{where}: must be a table")
    t = Table(o, where, OperationConfig)
    name, call = t.get("name"), t.get("call")
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]{0,62}", name):
        raise ConfigError(f"{where}.name: {name!r} must be a lower_snake_case name")
    if not isinstance(call, str) or not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", call):
        raise ConfigError(f"{where}.call: {call!r} must be 'package.module:function'")
    return OperationConfig(
        name=name,
        call=call,
        event_types=t.strings("event_types"),
        sources=t.strings("sources"),
        timeout_seconds=t.pos_float("timeout_seconds"),
        run_when_stale=t.boolean("run_when_stale") if t.present("run_when_stale") else None,
    )
