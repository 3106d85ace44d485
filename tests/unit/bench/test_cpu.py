"""bench/cpu.py: one process's CPU seconds from /proc, and the whole machine's."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import pytest

from bench.cpu import cpu_seconds


def test_cpu_seconds_grows_with_work_and_refuses_a_process_that_is_gone() -> None:
    before = cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:  # burn 50 ms of CPU (5 clock ticks)
        pass
    assert cpu_seconds(os.getpid()) > before
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    pid = child.pid
    child.wait()  # reaped: its /proc entry is gone
    with pytest.raises(ProcessLookupError):
        cpu_seconds(pid)


def test_the_box_leaves_out_the_time_the_hypervisor_stole_and_reports_it_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins
    import io

    from bench import cpu

    # between the samples: 100 ticks of user time, 100 of steal, idle unchanged (fields: user nice system idle
    # iowait irq softirq steal guest guest_nice)
    lines = iter(["cpu  1000 0 0 9000 0 0 0 0 0 0\n", "cpu  1100 0 0 9000 0 0 0 100 0 0\n"])
    real_open = builtins.open

    def fake_open(path: Any, *args: Any, **kwargs: Any) -> Any:
        return io.StringIO(next(lines)) if path == "/proc/stat" else real_open(path, *args, **kwargs)

    monkeypatch.setattr(cpu, "open", fake_open, raising=False)
    a, b = cpu.machine_busy_ticks(), cpu.machine_busy_ticks()
    assert (b.busy - a.busy, b.steal - a.steal, b.total - a.total) == (100, 100, 200)
    before = cpu.Sample(0.0, {}, a.busy, a.total, a.steal, 0.0, 0.0)
    after = cpu.Sample(1.0, {}, b.busy, b.total, b.steal, 0.0, 0.0)
    used = after.minus(before)
    assert used.box == 100 / cpu.CLK_TCK
    assert used.steal == 100 / cpu.CLK_TCK
    assert used.core_pct()["steal"] == 100 * 100 / cpu.CLK_TCK
    assert used.as_dict(1)["steal_cpu_s"] == round(100 / cpu.CLK_TCK, 3)
