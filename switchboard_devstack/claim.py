"""What a local stack claims before it starts anything: its data directory, and the ports it will listen on.

Two stacks on one ``data_dir`` corrupt it: a second Cassandra node on the same ``var/cassandra`` recovers the
commit log before it binds its port, recycling the live node's segments (read in Cassandra 2.1.0's
``CassandraDaemon.setup``), and the second stack's readiness checks are answered by the first stack's
processes, so it reports itself up. ``lock_data_dir`` takes an exclusive ``flock`` on
``<data_dir>/.stack.lock``, and ``ports_in_use`` finds a port some other process listens on before anything is
spawned.

The lock lasts as long as the stack's last process: the launcher passes the lock's descriptor to every
component it starts (``ManagedProcess.pass_fds``; their own children inherit it too), and an flock is released
only when every descriptor of it is closed. So a launcher killed by SIGKILL or the OOM killer, whose components
keep running in sessions of their own, leaves the lock held by them: a second launcher is refused, and told
which processes hold it, also while an orphaned Cassandra still replays its commit log and listens on nothing
yet. Once the last of them exits, however it exits, the kernel drops the lock.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from switchboard.addresses import host_port
from switchboard.config import PlatformConfig
from switchboard.config.ports import Listener, listeners
from switchboard.errors import StackError

LOCK_NAME = ".stack.lock"


def lock_data_dir(data_dir: Path) -> int:
    """An exclusive lock on ``data_dir`` held until the returned descriptor and every copy of it a child
    inherited are closed (``unlock`` closes this process's); the file holds the locking launcher's pid.
    ``StackError`` if it is held: naming the launcher's pid while it runs, else the processes that hold it (the
    components a killed launcher left behind) and how to stop them. The descriptor is not inheritable: only
    children given it explicitly (``pass_fds``) hold the lock."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        recorded = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise StackError(_held_message(data_dir, recorded)) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def unlock(fd: int | None) -> None:
    """Closes this process's descriptor of the lock; the lock goes once no child holds a copy either."""
    if fd is not None:
        os.close(fd)


def lock_holders(path: Path) -> list[int]:
    """Pids of the processes with ``path`` open, from ``/proc/<pid>/fd``; only those whose descriptors this user
    may read, and none without a procfs."""
    try:
        st = path.stat()
    except OSError:
        return []
    target = (st.st_dev, st.st_ino)
    holders = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:  # gone, or another user's
            continue
        for fd in fds:
            try:
                opened = os.stat(f"/proc/{entry}/fd/{fd}")
            except OSError:
                continue
            if (opened.st_dev, opened.st_ino) == target:
                holders.append(int(entry))
                break
    return sorted(holders)


def _held_message(data_dir: Path, recorded: str) -> str:
    path = data_dir / LOCK_NAME
    holders = lock_holders(path)
    if recorded.isdigit() and int(recorded) in holders:  # the launcher itself still runs
        return f"another stack runs on {data_dir} (pid {recorded}): stop it first, or give this one another data_dir"
    launcher = f"its launcher, pid {recorded}, is gone" if recorded else "its launcher is gone"
    groups: dict[int, list[str]] = {}
    for pid in holders:
        try:
            pgid = os.getpgid(pid)
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:  # exited meanwhile
            continue
        groups.setdefault(pgid, []).append(f"{pid} {name}")
    if not groups:
        return (
            f"{path} is held by processes of an earlier stack on {data_dir} ({launcher}), or by another "
            f"user's: `fuser -v {path}` names them; stop them first, or give this one another data_dir"
        )
    listed = "; ".join(f"process group {pgid}: {', '.join(members)}" for pgid, members in sorted(groups.items()))
    return (
        f"components of an earlier stack on {data_dir} still run ({launcher}) and hold {path}: {listed}. "
        f"Stop them first (`kill -- {' '.join(f'-{g}' for g in sorted(groups))}`, then -KILL for what does "
        "not exit), or give this one another data_dir"
    )


def listened_on(host: str, port: int) -> bool:
    """Whether a process listens on ``port`` where ``host`` would bind it. With SO_REUSEADDR, as the
    components bind: an earlier run's connections to it (TIME_WAIT) do not count. A live client connection
    whose local port it is does (the component's own bind would fail on it as well); the test stacks' ports
    come from below the kernel's ephemeral range (``switchboard_devstack.ports.free_port``), where no client
    connection gets one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def ports_in_use(
    cfg: PlatformConfig, *, processors: int | None = None, with_prometheus: bool = False
) -> list[Listener]:
    """The listeners the stack will open (``switchboard.config.ports.listeners``, less the control service's
    without outbound delivery and Prometheus' without ``with_prometheus``) whose port something listens on."""
    skip: tuple[str, ...] = ()
    if cfg.delivery.secrets_key is None:  # the stack runs no control service and no delivery worker
        skip += ("control.port", "metrics.control_port", "metrics.delivery_port")
    if not with_prometheus:
        skip += ("metrics.prometheus_port",)
    planned = [x for x in listeners(cfg, processors=processors) if not x.key.startswith(skip)]
    return [x for x in planned if listened_on(x.host, x.port)]


def check_free(cfg: PlatformConfig, *, processors: int | None = None, with_prometheus: bool = False) -> None:
    """``StackError`` naming every listener whose port is in use, before anything starts."""
    taken = ports_in_use(cfg, processors=processors, with_prometheus=with_prometheus)
    if taken:
        listed = ", ".join(f"{host_port(x.host, x.port)} ({x.key})" for x in taken)
        raise StackError(
            f"in use already: {listed}. A stack still running (an earlier `switchboard stack up` whose "
            "launcher was killed leaves its components behind: `ss -ltnp` names them), or another program"
        )
