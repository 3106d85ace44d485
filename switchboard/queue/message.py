"""What a queue handler sees and what it answers: a consumed message, and its verdict.

Handlers never touch the driver's message class: the worker wraps each delivery in a ``QueueMessage`` and
acts on the ``Verdict`` the handler returns for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True, eq=False)
class QueueMessage:
    body: bytes
    message_id: str
    headers: Mapping[str, Any]
    redelivered: bool
    queue: str
    # The AMQP ``type`` property ("" when unset).
    type: str = ""
    # The driver's message (acks, nacks, the channel it came on); for the worker only.
    raw: Any = field(repr=False, default=None)
    # Monotonic time before which the worker does not hand it to the handler (a redelivery, see the worker).
    not_before: float = 0.0
    # Monotonic time it reached this consumer (the batch linger counts from the oldest waiting message).
    arrived: float = 0.0

    @property
    def held(self) -> bool:
        """True while this consumer can still ack it. False once the channel it came on closed: the broker has
        it back and hands it to the queue's next consumer, so committing an outcome for it here would race
        that consumer (the worker does not start such a message; a handler checks before it commits). A
        message built without a driver's message (tests) is always held."""
        return self.raw is None or bool(self.raw.held)

    @property
    def attempt(self) -> int:
        """The ``x-attempt`` header of a retried message (attempts made before this delivery), else 0."""
        value = self.headers.get("x-attempt", 0)
        return int(value) if isinstance(value, int) else 0

    @property
    def last_error(self) -> str:
        """The ``x-last-error`` header of a retried or dead-lettered copy (why its last try failed), else ""."""
        return str(self.headers.get("x-last-error", ""))

    @property
    def retry_delay_ms(self) -> int:
        """The ``x-retry-delay-ms`` header of a retried copy (how long it waited in its delay queue), else 0."""
        value = self.headers.get("x-retry-delay-ms", 0)
        return int(value) if isinstance(value, int) else 0


@dataclass(frozen=True, slots=True)
class Ack:
    """Done: the outcome is committed. ``outcome`` labels it for stats and metrics (``processed``,
    ``duplicate``, ...); ``latency_ms`` is the end-to-end latency to report, if any."""

    outcome: str = "ok"
    latency_ms: float | None = None


@dataclass(frozen=True, slots=True)
class Retry:
    """Try again later: the worker parks a copy in a delay queue, then acks this one. ``attempt`` is the
    attempt that just failed (1-based). Without ``delay_ms`` the delay is the stream's backoff level for that
    attempt (for ``backoff_attempt`` when set: a replay counts its backoff from its own first attempt, not the
    event's), jittered; with it, exactly that (capped at the longest level)."""

    attempt: int
    error: str
    delay_ms: int | None = None
    outcome: str = "retried"
    backoff_attempt: int | None = None


# On a dead-letter copy of a death already dead-lettered once (``DeadLetter.again``).
DEAD_AGAIN_HEADER = "x-dead-again"
# The receipt id on an event's message (every receipt of one event shares its message id, the event key).
RECEIPT_HEADER = "receipt-id"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Give up: the worker republishes the message to the dead-letter queue with ``x-attempt`` and
    ``x-last-error``, then acks it."""

    attempt: int
    error: str
    outcome: str = "dead_lettered"
    # A copy of a death that was already dead-lettered (a FAILED message that came back): the copy says so
    # (``x-dead-again``), so that the recorder never takes it for a new death.
    again: bool = False


Verdict = Ack | Retry | DeadLetter
