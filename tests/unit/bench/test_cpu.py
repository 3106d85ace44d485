"""bench/cpu.py: one process's CPU seconds from /proc."""

from __future__ import annotations

import os
import subprocess
import sys
import time

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
