"""A child process in its own process group, with its output in a log file and a readiness check.

Every process is started with ``start_new_session=True``: it leads a new session and process group, so
``terminate()`` and ``kill()`` reach its children too (a JVM's or an Erlang VM's helper processes) and
nothing of it survives a ``kill()``. Processes that deliberately detach into a session of their own (Erlang's
``epmd -daemon``, shared by every Erlang node on the machine) are not part of the group and are left alone.

``pass_fds`` are descriptors the process inherits (``subprocess.Popen``'s): the local stack passes its data
directory's lock (``switchboard_devstack.claim``) to every component, so that the lock lasts as long as any of
them, and whatever they spawn without closing it, lives. Every other descriptor is closed in the child.

``timer_slack_ns`` starts the process with that timer slack (prctl(2) ``PR_SET_TIMERSLACK``): how late the
kernel may fire the timed sleeps of every thread of it, so that they wake together instead of one by one.
The slack is inherited by every thread and child the process creates and is kept across ``execve``, so it is
set on the thread that spawns the child, for the spawn only.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from switchboard.errors import StackError

__all__ = ["ManagedProcess"]

_TAIL_LINES = 40
_PR_SET_TIMERSLACK = 29
_PR_GET_TIMERSLACK = 30


@contextlib.contextmanager
def _timer_slack(ns: int | None) -> Iterator[None]:
    """This thread's timer slack set to ``ns`` inside (children forked here inherit it), restored after."""
    if ns is None:
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    previous = libc.prctl(_PR_GET_TIMERSLACK, 0, 0, 0, 0)
    if previous < 0 or libc.prctl(_PR_SET_TIMERSLACK, ctypes.c_ulong(ns), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise StackError(f"cannot set the timer slack to {ns} ns: {os.strerror(err)}")
    try:
        yield
    finally:
        libc.prctl(_PR_SET_TIMERSLACK, ctypes.c_ulong(previous), 0, 0, 0)


class ManagedProcess:
    """A process started from ``argv`` (or from ``command()`` in a subclass).

    Output (stdout and stderr) is appended to ``<base_dir>/<name>.log``. ``env`` is the complete
    environment of the child (as for ``subprocess.Popen``); ``None`` inherits this process's environment.
    Subclasses override ``command()``, ``environment()``, ``prepare()`` (write configuration before each
    start), ``ready()`` and ``stop()``.
    """

    poll_interval = 0.1

    def __init__(
        self,
        name: str,
        base_dir: Path,
        argv: Sequence[str] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        timer_slack_ns: int | None = None,
        pass_fds: Sequence[int] = (),
    ) -> None:
        if timer_slack_ns is not None and timer_slack_ns < 1:
            raise ValueError(f"timer_slack_ns must be at least 1, not {timer_slack_ns}")
        self.name = name
        self.base_dir = Path(base_dir).absolute()
        self._argv = list(argv) if argv is not None else None
        self._env = dict(env) if env is not None else None
        self._cwd = cwd
        self.timer_slack_ns = timer_slack_ns
        self.pass_fds: tuple[int, ...] = tuple(pass_fds)
        """Descriptors every later ``start()`` passes to the process (they must be open then)."""
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._started_at = 0.0
        self.ready_seconds: float | None = None
        """Seconds from the last ``start()`` until ``wait_ready()`` saw the process ready."""

    # -- what to run (overridable) ---------------------------------------------------------------------
    def command(self) -> list[str]:
        if self._argv is None:
            raise NotImplementedError(f"{type(self).__name__} must pass argv or override command()")
        return list(self._argv)

    def environment(self) -> dict[str, str] | None:
        return dict(self._env) if self._env is not None else None

    def prepare(self) -> None:
        """Called by ``start()`` before the process is spawned (create directories, write config)."""

    def ready(self) -> bool:
        """Whether the process is ready to serve; polled by ``wait_ready()``. Default: it is running."""
        return self.is_running()

    # -- state -----------------------------------------------------------------------------------------
    @property
    def log_path(self) -> Path:
        return self.base_dir / f"{self.name}.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        """The exit status of the last run (negative: killed by that signal); None while running."""
        if self._proc is None:
            return None
        return self._proc.poll()

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> Self:
        """Starts the process (again, after it exited). Raises if it is already running."""
        if self.is_running():
            raise StackError(f"{self.name} is already running (pid {self.pid})")
        if self._proc is not None:
            self._reap_group()  # leftovers of the previous run, if any
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.prepare()
        argv = self.command()
        env = self.environment()
        with open(self.log_path, "ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"\n===== {stamp} starting {self.name}: {shlex.join(argv)}\n".encode())
            log.flush()
            self._log_offset = log.tell()
            with _timer_slack(self.timer_slack_ns):
                self._proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=self._cwd or self.base_dir,
                    start_new_session=True,
                    close_fds=True,
                    pass_fds=self.pass_fds,
                )
        self._started_at = time.monotonic()
        self.ready_seconds = None
        return self

    def wait_ready(self, timeout: float, *, stop: threading.Event | None = None) -> None:
        """Polls ``ready()`` until it is true. Raises ``StackError`` (with the end of the log) if the
        process exits first or ``timeout`` seconds pass, or at once when ``stop`` is set."""
        if self._proc is None:
            raise StackError(f"{self.name} was never started")
        deadline = time.monotonic() + timeout
        last_error = ""
        while True:
            if stop is not None and stop.is_set():
                raise StackError(f"stopped while {self.name} was starting")
            if not self.is_running():
                raise StackError(
                    f"{self.name} exited with status {self.returncode} before it was ready"
                    f"{last_error}; last lines of {self.log_path}:\n{self.log_tail()}"
                )
            try:
                if self.ready():
                    self.ready_seconds = time.monotonic() - self._started_at
                    return
            except OSError as exc:
                last_error = f" (last readiness check: {exc!r})"
            if time.monotonic() >= deadline:
                raise StackError(
                    f"{self.name} (pid {self.pid}) not ready after {timeout:g} s{last_error}; "
                    f"last lines of {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(self.poll_interval)

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful stop; the default is ``terminate(timeout)``."""
        self.terminate(timeout)

    def terminate(self, timeout: float = 10.0) -> int | None:
        """SIGTERM to the whole process group, SIGKILL after ``timeout`` seconds; returns the exit status."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout)
        self.kill()
        return self._proc.returncode

    def kill(self) -> None:
        """SIGKILL to the whole process group; returns once the process and its group are gone."""
        if self._proc is None:
            return
        self._signal_group(signal.SIGKILL)
        self._proc.wait()
        self._reap_group()

    def kill_now(self) -> None:
        """SIGKILL to the whole process group without waiting for it: safe in a signal handler that may have
        interrupted a ``wait`` on this very process (the stop that follows reaps it)."""
        if self._proc is not None:
            self._signal_group(signal.SIGKILL)

    # -- helpers ---------------------------------------------------------------------------------------
    def log_tail(self, lines: int = _TAIL_LINES) -> str:
        """The last ``lines`` lines this run wrote to the log."""
        try:
            with open(self.log_path, "rb") as log:
                size = log.seek(0, os.SEEK_END)
                start = max(self._log_offset, size - 64 * 1024)
                log.seek(start)
                data = log.read()
        except OSError as exc:
            return f"(log unreadable: {exc})"
        text = data.decode("utf-8", "replace")
        return "\n".join(text.splitlines()[-lines:])

    def _signal_group(self, sig: signal.Signals) -> None:
        assert self._proc is not None
        pgid = self._proc.pid
        if self._proc.returncode is not None and not _group_members(pgid):
            # The leader has been reaped and nothing of its group is left: its id may belong to someone
            # else by now, so send nothing.
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)

    def _reap_group(self, timeout: float = 5.0) -> None:
        """SIGKILLs and waits out whatever is left in the process group after the leader exited."""
        assert self._proc is not None
        pgid = self._proc.pid
        deadline = time.monotonic() + timeout
        while _group_members(pgid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
            if time.monotonic() >= deadline:
                raise StackError(f"processes of {self.name}'s group {pgid} survived SIGKILL")
            time.sleep(0.02)

    # -- context manager: stop on exit -----------------------------------------------------------------
    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else f"exited {self.returncode}"
        return f"<{type(self).__name__} {self.name} pid={self.pid} {state}>"


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes in process group ``pgid``."""
    try:
        entries = os.listdir("/proc")
    except OSError:  # no procfs: ask the kernel whether the group exists at all
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        except PermissionError:
            pass
        return [pgid]
    members = []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may contain spaces and parentheses.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) >= 3 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            members.append(int(entry))
    return members
