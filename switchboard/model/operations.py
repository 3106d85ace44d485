"""What the operating tools work on: dead letters and replay jobs. Plain dataclasses; times in microseconds."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class DeadLetterKind(enum.Enum):
    PROCESSING = "processing"  # an inbound event (the events stream)
    DELIVERY = "delivery"  # a delivery task (the deliveries stream)


class DeadLetterState(enum.Enum):
    DEAD = "dead"
    REDRIVING = "redriving"  # claimed by a redrive (``redriven_us``: when)
    REDRIVEN = "redriven"
    PURGED = "purged"


@dataclass(slots=True)
class DeadLetter:
    id: str
    kind: DeadLetterKind
    dead_us: int
    source: str = ""
    event_id: str = ""
    event_type: str = ""
    subscription_id: str = ""
    delivery_id: str = ""
    message_id: str = ""
    attempts: int = 0
    last_error: str = ""
    reason: str = ""  # FAILED, CRASHED (the handler raised on it), UNDECODABLE, DELIVERY_LIMIT
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    message_type: str = ""
    state: DeadLetterState = DeadLetterState.DEAD
    redriven_us: int = 0


class ReplayState(enum.Enum):
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"


@dataclass(slots=True)
class ReplayJob:
    id: str
    request: str  # the request, as JSON, for the record
    state: ReplayState = ReplayState.RUNNING
    matched: int = 0
    queued: int = 0
    done: int = 0
    failed: int = 0
    started_us: int = 0
    finished_us: int = 0
    message: str = ""
    dry_run: bool = False
    updated_us: int = 0  # the last write of the job: its runner's heartbeat while RUNNING
    # The received time of the last event it enqueued (a listing is oldest first): where a new replay of the
    # rest starts, should this one stop before the end.
    resume_from_us: int = 0
