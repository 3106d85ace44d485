"""CPU used per component of a running stack, from ``/proc`` (Linux only).

Every process the stack starts leads a process group of its own (``ManagedProcess`` uses
``start_new_session``), so a component is the set of live processes whose process group is its leader's pid:
Envoy; the ingest, query and each processor service; RabbitMQ (the ``rabbitmq-server`` script, ``beam.smp``,
``erl_child_setup``, ``inet_gethost``; not the shared, detached ``epmd``); Cassandra (the JVM).

A sample reads ``utime + stime + cutime + cstime`` (clock ticks) of each member: children a member reaps
move into its ``c*`` fields, so short-lived helpers are counted too. A member that appears between two
samples counts with everything it used; one that is gone at the second sample (and was not reaped by a
member) is lost. The load generator is counted separately (``RUSAGE_CHILDREN`` of this process, see
``ChildrenClock``); the whole machine from ``/proc/stat``, so that what others ran meanwhile shows: "box" is
the time its CPUs ran anything (user, nice, system, irq, softirq), without the time the hypervisor gave them to
other guests (steal), which is reported apart (until 2026-12-07 box included steal).

    meter = CpuMeter.for_stack(stack)
    before = meter.sample()
    ...
    used = meter.sample().minus(before)   # {"envoy": seconds, ...}
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

CLK_TCK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1

# Display order; anything else follows.
ORDER = (
    "envoy", "ingest", "rabbitmq", "processor", "cassandra", "query", "control", "delivery", "traces", "wrk", "bench",
)  # fmt: skip


def _proc_stat(pid: str) -> tuple[int, int] | None:
    """(process group, utime + stime + cutime + cstime) of ``pid``, None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # "pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime cutime cstime"
    fields = raw[raw.rfind(b")") + 2 :].split()
    if len(fields) < 15 or fields[0] in (b"Z", b"X"):
        return None
    return int(fields[2]), int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])


def cpu_seconds(pid: int) -> float:
    """CPU seconds ``pid`` (and its reaped children) used so far; ``ProcessLookupError`` if it is gone."""
    st = _proc_stat(str(pid))
    if st is None:
        raise ProcessLookupError(pid)
    return st[1] / CLK_TCK


class MachineTicks(NamedTuple):
    busy: int  # user nice system irq softirq (guest is inside user): this machine's CPUs running anything
    steal: int  # the hypervisor ran another guest on them
    total: int  # the above, idle and iowait


def machine_busy_ticks() -> MachineTicks:
    """Clock ticks of all CPUs since boot, from the ``cpu`` line of ``/proc/stat``: busy (steal left out),
    steal, total."""
    with open("/proc/stat") as f:
        parts = f.readline().split()
    values = [int(v) for v in parts[1:]] + [0] * 8
    idle = values[3] + values[4]  # idle + iowait
    steal = values[7]
    total = sum(values[:8])  # user nice system idle iowait irq softirq steal
    return MachineTicks(total - idle - steal, steal, total)


@dataclass
class Sample:
    at: float
    ticks: dict[str, dict[int, int]]  # component -> pid -> ticks
    busy: int
    total: int
    steal: int
    children: float  # RUSAGE_CHILDREN of this process, seconds
    own: float  # RUSAGE_SELF of this process, seconds

    def minus(self, before: Sample) -> Usage:
        """CPU seconds per component between ``before`` and this sample."""
        seconds: dict[str, float] = {}
        for name, pids in self.ticks.items():
            old = before.ticks.get(name, {})
            used = 0
            for pid, t in pids.items():
                used += t - old[pid] if pid in old and t >= old[pid] else t
            seconds[name] = used / CLK_TCK
        seconds["wrk"] = max(0.0, self.children - before.children)
        seconds["bench"] = max(0.0, self.own - before.own)
        wall = self.at - before.at
        # /proc/stat: all CPUs together (2 cores busy for 1 s = 2 s)
        box = (self.busy - before.busy) / CLK_TCK
        return Usage(wall, seconds, box, (self.steal - before.steal) / CLK_TCK)


@dataclass
class Usage:
    wall: float
    seconds: dict[str, float] = field(default_factory=dict)
    box: float = 0.0  # CPU seconds of the whole machine (every process, kernel included; steal left out)
    steal: float = 0.0  # CPU seconds the hypervisor gave this machine's CPUs to other guests

    @property
    def components(self) -> float:
        return sum(self.seconds.values())

    @property
    def others(self) -> float:
        """CPU seconds of everything this meter does not know (other processes on the machine, the kernel)."""
        return max(0.0, self.box - self.components)

    def per_event_ms(self, events: int) -> dict[str, float | None]:
        if events <= 0:
            return {k: None for k in (*self.seconds, "total")}
        out: dict[str, float | None] = {k: v * 1000 / events for k, v in self.seconds.items()}
        out["total"] = self.components * 1000 / events
        out["box"] = self.box * 1000 / events
        return out

    def core_pct(self) -> dict[str, float]:
        if self.wall <= 0:
            return {}
        out = {k: 100 * v / self.wall for k, v in self.seconds.items()}
        out["total"] = 100 * self.components / self.wall
        out["box"] = 100 * self.box / self.wall
        out["others"] = 100 * self.others / self.wall
        out["steal"] = 100 * self.steal / self.wall
        return out

    def as_dict(self, events: int) -> dict[str, Any]:
        return {
            "wall_s": round(self.wall, 3),
            "events": events,
            "cpu_s": {k: round(v, 3) for k, v in sorted(self.seconds.items(), key=_order)},
            "box_cpu_s": round(self.box, 3),
            "others_cpu_s": round(self.others, 3),
            "steal_cpu_s": round(self.steal, 3),
            "ms_per_event": {k: _r(v) for k, v in self.per_event_ms(events).items()},
            "pct_of_a_core": {k: round(v, 1) for k, v in self.core_pct().items()},
            "cores": NCPU,
        }


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def _order(item: tuple[str, Any]) -> tuple[int, str]:
    name = item[0]
    return (ORDER.index(name) if name in ORDER else len(ORDER), name)


class CpuMeter:
    """``groups``: component name -> process group ids (a component may span several, e.g. processors)."""

    def __init__(self, groups: Mapping[str, Iterable[int]]) -> None:
        self.groups = {name: list(pgids) for name, pgids in groups.items()}

    @classmethod
    def for_stack(cls, stack: Any) -> CpuMeter:
        """Envoy, ingest, query, control, every processor (one component), every delivery worker (one component),
        the local trace receiver, RabbitMQ and Cassandra of a ``Stack``."""
        groups: dict[str, list[int]] = {}
        for name, proc in (
            ("envoy", stack.envoy),
            ("ingest", stack.ingest),
            ("rabbitmq", stack.rabbit),
            ("cassandra", stack.cassandra),
            ("query", stack.query),
            ("control", stack.control),
            ("traces", stack.trace_sink),
        ):
            if proc is not None and proc.pid is not None:
                groups[name] = [proc.pid]
        groups["processor"] = [p.pid for p in stack.processor_procs if p.pid is not None]
        groups["delivery"] = [p.pid for p in stack.delivery_procs if p.pid is not None]
        return cls(groups)

    def sample(self) -> Sample:
        by_group: dict[int, str] = {pgid: name for name, pgids in self.groups.items() for pgid in pgids}
        ticks: dict[str, dict[int, int]] = {name: {} for name in self.groups}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            st = _proc_stat(entry)
            if st is None:
                continue
            name = by_group.get(st[0])
            if name is not None:
                ticks[name][int(entry)] = st[1]
        m = machine_busy_ticks()
        ch = resource.getrusage(resource.RUSAGE_CHILDREN)
        me = resource.getrusage(resource.RUSAGE_SELF)
        return Sample(
            time.monotonic(), ticks, m.busy, m.total, m.steal, ch.ru_utime + ch.ru_stime, me.ru_utime + me.ru_stime
        )

    def group_seconds(self, name: str) -> float:
        """CPU seconds used so far by the live members of one component (for idle detection)."""
        pgids = set(self.groups.get(name, ()))
        used = 0
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                st = _proc_stat(entry)
                if st is not None and st[0] in pgids:
                    used += st[1]
        return used / CLK_TCK


def reference_ms(rounds: int = 5) -> float:
    """Milliseconds this machine takes, at best of ``rounds``, for a fixed pure-Python loop (``sum`` over ten
    million integers, one core): a yardstick for comparing benchmark runs made on different days or machines.
    It says how fast one core is while the box idles, not how the box behaves with both cores busy: on a
    shared host the CPU per event can move while this figure does not."""
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        sum(range(10_000_000))
        best = min(best, time.perf_counter() - started)
    return best * 1000
