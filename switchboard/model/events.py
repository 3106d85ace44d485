"""The domain model of an event. Free of gRPC, protobuf and drivers; adapters convert at their edges."""

from __future__ import annotations

import enum
import os
import time
from dataclasses import dataclass, field

# The longest key (``InboundEvent.key``, UTF-8): it travels as the message id, an AMQP short string.
MAX_KEY_BYTES = 255


def key_bytes(source: str, event_id: str) -> int:
    """The length in bytes of the key ``<source>/<event_id>`` in UTF-8 (at most ``MAX_KEY_BYTES``)."""
    return len(source.encode()) + 1 + len(event_id.encode())


# The longest entity id (UTF-8) an event may name: it is part of the entities table's key, which Cassandra
# stops at 64 KB (with the source's name); far longer than any provider's object ids.
MAX_ENTITY_ID_BYTES = 4096


class EventStatus(enum.Enum):
    RECEIVED = "received"
    PROCESSED = "processed"
    RETRYING = "retrying"
    FAILED = "failed"
    STALE = "stale"


class Outcome(enum.Enum):
    OK = "ok"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass(slots=True)
class InboundEvent:
    """A verified event as ingest queued it. Times are integer microseconds since the epoch."""

    source: str
    event_id: str
    event_type: str
    provider: str
    received_us: int
    body: bytes
    content_type: str
    headers: dict[str, str]
    receipt_id: str
    provider_time_us: int = 0
    entity_id: str = ""
    entity_version: int = 0
    traceparent: str = ""
    replay: bool = False
    replay_id: str = ""

    @property
    def key(self) -> str:
        """``<source>/<event_id>``: the queue message's id (an AMQP short string: at most ``MAX_KEY_BYTES``)."""
        return f"{self.source}/{self.event_id}"


@dataclass(slots=True)
class OperationResult:
    """One run of one operation. ``run_id`` is unique per run, so the history keeps every run: an
    operation applied twice would show as two OK results, never as one overwritten row."""

    operation: str
    outcome: Outcome
    attempt: int
    duration_us: int
    finished_us: int
    error: str = ""
    run_id: str = field(default_factory=lambda: os.urandom(6).hex())


@dataclass(frozen=True, slots=True)
class EntitySnapshot:
    """An effect staged by an operation: the latest state of a provider entity (the body of the event that
    carried it). Written with the event's commit, ordered by ``version`` whatever the arrival order."""

    source: str
    entity_id: str
    version: int
    event_id: str
    event_type: str
    content_type: str
    body: bytes


Effect = EntitySnapshot


@dataclass(frozen=True, slots=True)
class Runs:
    """What one receipt of an event did in the passes committed for it: the operations it ran OK or skipped
    (never run again for that receipt) and the attempt numbers of its results."""

    done: frozenset[str] = frozenset()
    attempts: frozenset[int] = frozenset()

    def first_attempt(self, attempt: int) -> int:
        """The first attempt of the run that ``attempt`` continues: the receipt's lowest attempt before it (a
        redrive numbers attempts from 1 again, so later ones of an earlier run do not count), else
        ``attempt`` itself."""
        return min((a for a in self.attempts if a < attempt), default=attempt)


@dataclass(frozen=True, slots=True)
class Prior:
    """What the store holds of an event before a new processing pass: the receipt that was applied (the first
    to be committed), the status of its last pass and the attempts made."""

    receipt_id: str
    status: EventStatus
    attempts: int
    last_error: str = ""  # why its last pass failed, if it did


@dataclass(frozen=True, slots=True)
class Entity:
    source: str
    entity_id: str
    version: int
    event_id: str
    event_type: str
    updated_us: int
    content_type: str = ""
    state: bytes = b""
    state_event_id: str = ""


@dataclass(slots=True)
class StoredEvent:
    event: InboundEvent
    status: EventStatus
    results: list[OperationResult] = field(default_factory=list)
    processed_us: int = 0
    attempts: int = 0
    last_error: str = ""
    duplicates: int = 0


@dataclass(slots=True)
class Commit:
    """One processing pass to write: the event with its status and new results, the effects its operations
    staged, and whether it moves its entity's version mark."""

    stored: StoredEvent
    effects: list[Effect] = field(default_factory=list)
    mark_entity: bool = False


@dataclass(frozen=True, slots=True)
class EventSummary:
    source: str
    event_id: str
    event_type: str
    received_us: int
    status: EventStatus
    receipt_id: str


def now_us() -> int:
    return time.time_ns() // 1000


def new_receipt_id() -> str:
    return os.urandom(12).hex()


def new_traceparent() -> str:
    """A fresh W3C trace context for a request that arrived without one (tracing is off at the edge): not
    sampled, so the trace id correlates logs and metrics but no service records spans for it (sampling is
    decided at Envoy only)."""
    return f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-00"


def valid_traceparent(value: str) -> bool:
    parts = value.split("-")
    return (
        len(parts) == 4
        and len(parts[0]) == 2
        and len(parts[1]) == 32
        and len(parts[2]) == 16
        and len(parts[3]) == 2
        and all(c in "0123456789abcdef" for c in value.replace("-", ""))
        and parts[1] != "0" * 32
        and parts[2] != "0" * 16
        and parts[0] != "ff"
    )
