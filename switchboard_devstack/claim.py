"""What a local stack claims before it starts anything: its data directory, and the ports it will listen on.

Two stacks on one ``data_dir`` corrupt it: a second Cassandra node on the same ``var/cassandra`` recovers the
commit log before it binds its port, recycling the live node's segments (read in Cassandra 2.1.0's
``CassandraDaemon.setup``), and the second stack's readiness checks are answered by the first stack's
processes, so it reports itself up. ``lock_data_dir`` takes an exclusive ``flock`` on
``<data_dir>/.stack.lock`` for the stack's life (the kernel drops it when the process dies, however it dies),
and ``ports_in_use`` finds a port some other process listens on, such as a component an earlier stack left
behind when its launcher was killed, before anything is spawned.
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
    """An exclusive lock on ``data_dir`` held until the returned descriptor is closed (``unlock``);
    ``StackError`` naming the holder's pid if another process holds it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise StackError(
            f"another stack runs on {data_dir} (pid {holder}): stop it first, or give this one another data_dir"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def unlock(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)  # closing the descriptor releases the flock


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
