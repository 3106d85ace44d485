"""A circuit breaker per subscription: an endpoint that keeps failing stops getting sends for a while.

Without one, a receiver that is down takes every delivery worker's sends (each waiting for its timeout or
refused at once), and every delivery for it burns an attempt of its retry schedule while the endpoint is
known to be down. With one:

* **Closed** (normal): every send goes out. ``failure_threshold`` failures in a row that say the endpoint is
  unavailable (5xx, 408, 429, timeouts, connection and TLS errors: what the retry policy retries) open it.
  A success resets the count; answers that are the request's fault (other 4xx) and 410 count neither way.
* **Open** for a cool-down (``cooldown_seconds``, doubled each time a probe fails, up to
  ``max_cooldown_seconds``): nothing is sent. A task that comes meanwhile is deferred to the end of the
  cool-down, without an attempt (its retry schedule does not move): the caller parks it in a delay queue.
* **Half-open** after the cool-down: one send goes out as a probe, the others are deferred until its answer
  is due (its send's timeout after it was admitted, at least ``PROBE_WAIT_SECONDS``, at most
  ``PROBE_HOLD_MAX_SECONDS``): deferred a second at a time, a backlog of 20,000 tasks went round the delay
  queue ten times (a state read and a confirmed publish each) for every probe of an endpoint that timed out
  after 10 s. A probe answered at once does not call back the ones deferred (they wait out their hold). The
  probe's success closes the circuit; its failure opens it again, for twice as long. The probe is the send
  whose admission carries the probe token: a late answer of a send from before the circuit opened, or of a
  probe that timed out and was replaced, is never taken for it.

State lives in the worker's memory, one breaker per subscription. With the deliveries stream partitioned
(``delivery.partitions``) one worker at a time sends for a subscription, so its breaker is the only one; a
worker that takes a partition over (or restarts) starts with its circuits closed. Pure logic: the caller passes
the clock.
"""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field

# The shortest and the longest wait of tasks deferred while another one is the half-open probe (the longest: a
# probe with a 60 s timeout that is answered at once would keep the others a minute).
PROBE_WAIT_SECONDS = 1.0
PROBE_HOLD_MAX_SECONDS = 10.0
# A probe not recorded within this long (its worker lost it: cancelled, crashed) lets another one go.
PROBE_TIMEOUT_SECONDS = 120.0


class State(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerSettings:
    failure_threshold: int = 20
    cooldown_seconds: float = 30.0
    max_cooldown_seconds: float = 600.0

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if not 0 < self.cooldown_seconds <= self.max_cooldown_seconds:
            raise ValueError("cooldown_seconds must be positive and at most max_cooldown_seconds")


@dataclass
class _Circuit:
    failures: int = 0
    state: State = State.CLOSED
    open_until: float = 0.0
    cooldown: float = 0.0
    probe: int = 0  # the token of the half-open circuit's probe while it is out; 0 when none is
    probe_started: float = 0.0
    probe_due: float = 0.0  # when the probe's answer is due at the latest


@dataclass(frozen=True)
class Admission:
    """What ``admit`` decided for one send.

    ``hold``: seconds to hold it back; 0 means send now. ``probe``: non-zero when this send is its half-open
    circuit's probe, a token that only this send holds; it goes back with ``record`` or ``release``, so a send
    that is not the probe (one from before the circuit opened, or a probe that timed out and was replaced) can
    never be taken for it."""

    hold: float
    probe: int = 0


@dataclass(frozen=True)
class Change:
    """A circuit changed state (for the caller's log line and metrics)."""

    key: str
    state: State
    cooldown_seconds: float = 0.0


@dataclass
class Breakers:
    settings: BreakerSettings = field(default_factory=BreakerSettings)
    _circuits: dict[str, _Circuit] = field(default_factory=dict)
    _tokens: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def state(self, key: str) -> State:
        circuit = self._circuits.get(key)
        return circuit.state if circuit is not None else State.CLOSED

    def held(self, key: str, now: float) -> float:
        """Seconds an open circuit still holds sends to ``key`` back (0 when it is closed, half-open or at the
        end of its cool-down). Unlike ``admit`` it changes nothing: for a send ``admit`` allowed that then waited
        for something else (an in-flight slot) while the circuit may have opened."""
        circuit = self._circuits.get(key)
        if circuit is None or circuit.state is not State.OPEN:
            return 0.0
        return max(0.0, circuit.open_until - now)

    def admit(self, key: str, now: float, answer_within: float = PROBE_WAIT_SECONDS) -> Admission:
        """Whether a send to ``key`` may go now; ``answer_within``: seconds within which its answer is due (its
        timeout, with a margin), how long the others wait should it be the probe. Every admission with ``hold``
        0 must be followed by ``record`` for that send, or by ``release`` if it is not made."""
        circuit = self._circuits.get(key)
        if circuit is None or circuit.state is State.CLOSED:
            return Admission(0.0)
        if circuit.state is State.OPEN:
            if now < circuit.open_until:
                return Admission(circuit.open_until - now)
            circuit.state = State.HALF_OPEN
        if circuit.probe and now - circuit.probe_started < PROBE_TIMEOUT_SECONDS:
            return Admission(self._probe_wait(circuit, now))
        circuit.probe = next(self._tokens)
        circuit.probe_started = now
        circuit.probe_due = now + max(answer_within, PROBE_WAIT_SECONDS)
        return Admission(0.0, circuit.probe)

    def probe_hold(self, key: str, now: float) -> float:
        """How long a send that is not the probe waits while its circuit is half-open: until the probe's answer
        is due when one is out, else ``PROBE_WAIT_SECONDS`` (the next admission makes a probe)."""
        circuit = self._circuits.get(key)
        if circuit is None or not circuit.probe:
            return PROBE_WAIT_SECONDS
        return self._probe_wait(circuit, now)

    @staticmethod
    def _probe_wait(circuit: _Circuit, now: float) -> float:
        return max(PROBE_WAIT_SECONDS, min(circuit.probe_due - now, PROBE_HOLD_MAX_SECONDS))

    def release(self, key: str, probe: int) -> None:
        """A send ``admit`` allowed is not made. If it held the probe, the next send may probe; any other
        changes nothing (clearing the flag would let a second probe out)."""
        circuit = self._circuits.get(key)
        if probe and circuit is not None and circuit.probe == probe:
            circuit.probe = 0

    def record(self, key: str, *, failed: bool | None, now: float, probe: int = 0) -> Change | None:
        """The outcome of a send ``admit`` allowed: ``failed`` True (the endpoint is unavailable), False (it
        answered well), None (neither: the request's own fault); ``probe`` is its admission's token. Returns the
        state change, if any."""
        circuit = self._circuits.get(key)
        if circuit is None:
            if not failed:
                return None
            circuit = self._circuits[key] = _Circuit()
        is_probe = bool(probe) and circuit.probe == probe
        if is_probe:
            circuit.probe = 0
        if failed is None:
            return None
        if not failed:
            del self._circuits[key]  # closed, count reset (a send from before it opened closes it too)
            return Change(key, State.CLOSED) if circuit.state is not State.CLOSED else None
        if is_probe:
            circuit.cooldown = min(circuit.cooldown * 2, self.settings.max_cooldown_seconds)
            return self._open(key, circuit, now)
        if circuit.state is not State.CLOSED:
            return None  # a send that was not the probe: in flight when the circuit opened, or a replaced probe
        circuit.failures += 1
        if circuit.failures < self.settings.failure_threshold:
            return None
        circuit.cooldown = self.settings.cooldown_seconds
        return self._open(key, circuit, now)

    def open_count(self) -> int:
        """Circuits that hold sends back (open or half-open). Called from the metrics thread: it iterates a copy
        (``list`` of a dict's values is taken whole under the GIL), never the dict the loop changes."""
        return sum(1 for c in list(self._circuits.values()) if c.state is not State.CLOSED)

    def keys(self) -> set[str]:
        """The subscriptions with a circuit kept (failing, open or half-open)."""
        return set(self._circuits)

    def forget(self, key: str) -> None:
        """Drops the circuit of a subscription that is gone or disabled."""
        self._circuits.pop(key, None)

    @staticmethod
    def _open(key: str, circuit: _Circuit, now: float) -> Change:
        circuit.state = State.OPEN
        circuit.open_until = now + circuit.cooldown
        circuit.failures = 0
        return Change(key, State.OPEN, circuit.cooldown)
