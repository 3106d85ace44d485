"""``switchboard stack up`` (what ``make run`` runs) against its own data: a second launcher on the same data
directory is refused before it starts anything, also while the components of a killed launcher still run, and a
stop signal while the stack starts stops everything it started at once (it used to be noticed only once the whole
stack was up)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from switchboard.errors import StackError
from switchboard_devstack.claim import lock_data_dir, lock_holders, unlock
from tests.stack_fixture import REPO, write_test_config

pytestmark = pytest.mark.integration


def processes_under(root: Path, but: set[int]) -> dict[int, str]:
    """The processes (other than ``but``) that name a path under ``root``: pid -> its command line."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in but:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(root) in cmdline:
            found[int(entry.name)] = cmdline
    return found


def stop_everything(launcher: subprocess.Popen[str], root: Path) -> None:
    """Cleanup for a test that failed half-way: the launcher stops what it started (SIGINT, as Ctrl-C), else is
    killed; then every process group with a process under ``root`` is killed. The components run in sessions of
    their own, so killing the launcher's group alone left them running."""
    if launcher.poll() is None:
        launcher.send_signal(signal.SIGINT)
        try:
            launcher.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.communicate()
    ours = os.getpgrp()
    for pid in processes_under(root, set()):
        with contextlib.suppress(ProcessLookupError):
            pgid = os.getpgid(pid)
            if pgid != ours:
                os.killpg(pgid, signal.SIGKILL)


def wait_until(condition: object, what: str, within: float) -> None:
    deadline = time.monotonic() + within
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_a_second_launcher_is_refused_and_a_signal_while_starting_stops_what_started(tmp_path: Path) -> None:
    cfg = write_test_config(tmp_path)
    cmd = [sys.executable, "-m", "switchboard_cli.main", "--config", str(cfg.path), "stack", "up"]
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'gen'}"}
    first = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        lock = cfg.data_dir / ".stack.lock"
        wait_until(lambda: lock.exists() and lock.read_text().strip() == str(first.pid), "the first one's lock", 60)
        wait_until(lambda: processes_under(tmp_path, {first.pid}), "a component started", 60)

        second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 1, second.stdout + second.stderr
        assert f"another stack runs on {cfg.data_dir} (pid {first.pid})" in second.stderr

        assert first.poll() is None, "the first stack is still starting"
        started = time.monotonic()
        first.send_signal(signal.SIGINT)
        output, _ = first.communicate(timeout=120)
        assert first.returncode == 130, output
        assert "SIGINT while starting" in output and "Switchboard is up." not in output
        assert time.monotonic() - started < 60, "stopping took as long as starting"
        wait_until(lambda: not processes_under(tmp_path, {first.pid}), "every component gone", 30)
    finally:
        stop_everything(first, tmp_path)


def test_the_components_of_a_killed_launcher_keep_a_second_one_off_their_data(tmp_path: Path) -> None:
    """SIGKILL (or the OOM killer) gives the launcher no chance to stop its components, which run on in sessions
    of their own. The lock used to go with the launcher: a second ``stack up`` while the orphaned Cassandra still
    replayed its commit log (no port open yet to be named) started a second Cassandra on the same files."""
    cfg = write_test_config(tmp_path)
    cmd = [sys.executable, "-m", "switchboard_cli.main", "--config", str(cfg.path), "stack", "up"]
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'gen'}"}
    first = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    lock = cfg.data_dir / ".stack.lock"

    def nodes() -> list[int]:
        """The Cassandra and RabbitMQ VMs of this test's stack (not the short-lived ``erl`` the broker runs to
        make sure epmd is up: spawned through erl_child_setup, which closes every inherited descriptor)."""
        found = processes_under(tmp_path, {first.pid})
        return [pid for pid, cmdline in found.items() if "CassandraDaemon" in cmdline or "-s rabbit boot" in cmdline]

    try:
        wait_until(lambda: len(nodes()) == 2, "Cassandra and RabbitMQ started", 60)
        os.kill(first.pid, signal.SIGKILL)  # the launcher only: no cleanup runs
        first.communicate(timeout=30)
        assert set(nodes()) <= set(lock_holders(lock)), "every node holds the data directory's lock"

        second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 1, second.stdout + second.stderr
        assert f"components of an earlier stack on {cfg.data_dir} still run" in second.stderr
        assert f"its launcher, pid {first.pid}, is gone" in second.stderr
        for pid in nodes():  # named with their process groups (RabbitMQ's is its start script's)
            assert f"process group {os.getpgid(pid)}: " in second.stderr, second.stderr
            assert f"{pid} {Path(f'/proc/{pid}/comm').read_text().strip()}" in second.stderr, second.stderr
        assert len(nodes()) == 2, "the orphans run on, untouched"
    finally:
        stop_everything(first, tmp_path)
    deadline = time.monotonic() + 30
    while True:  # their lock goes with the last of them
        try:
            unlock(lock_data_dir(cfg.data_dir))
            break
        except StackError:
            assert time.monotonic() < deadline, f"the lock outlived every component: {lock_holders(lock)}"
            time.sleep(0.2)
