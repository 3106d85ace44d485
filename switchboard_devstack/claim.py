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

from switchboard.config import PlatformConfig
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


def planned_ports(cfg: PlatformConfig, processors: int, deliveries: int) -> list[tuple[str, int]]:
    """(setting, port) of every port the stack will listen on that the configuration names."""
    ports: list[tuple[str, int]] = []
    if cfg.rabbitmq.managed:
        ports.append(("rabbitmq.port", cfg.rabbitmq.port))
    if cfg.cassandra.managed:
        ports += [("cassandra.port", cfg.cassandra.port), ("cassandra.storage_port", cfg.cassandra.storage_port)]
    ports += [
        ("ingest.port", cfg.ingest.port),
        ("query.port", cfg.query.port),
        ("edge.https_port", cfg.edge.https_port),
        ("edge.admin_port", cfg.edge.admin_port),
    ]
    if cfg.delivery.secrets_key is not None:
        ports.append(("control.port", cfg.control.port))
    if cfg.tracing.local:
        ports.append(("tracing.local_port", cfg.tracing.local_port))
    m = cfg.metrics
    if m.enabled:
        counts = {"ingest": 1, "query": 1, "control": 1, "processor": processors, "delivery": deliveries}
        for service, n in counts.items():
            ports += [(f"metrics.{service}_port", m.port(service, i)) for i in range(n) if m.port(service, i)]
        for name in ("rabbitmq", "prometheus"):
            if getattr(m, f"{name}_port"):
                ports.append((f"metrics.{name}_port", getattr(m, f"{name}_port")))
    return ports


def listened_on(port: int) -> bool:
    """Whether a process listens on ``port`` (on 127.0.0.1 or every address). With SO_REUSEADDR, as the
    components bind: the connections an earlier run closed (TIME_WAIT) do not count."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def ports_in_use(cfg: PlatformConfig, processors: int, deliveries: int) -> list[tuple[str, int]]:
    """The planned ports something already listens on."""
    return [(name, port) for name, port in planned_ports(cfg, processors, deliveries) if listened_on(port)]


def check_ports(cfg: PlatformConfig, processors: int, deliveries: int) -> None:
    """``StackError`` naming every planned port in use, before anything starts."""
    taken = ports_in_use(cfg, processors, deliveries)
    if taken:
        listed = ", ".join(f"{port} ({name})" for name, port in taken)
        raise StackError(
            f"in use already: {listed}. A stack still running (an earlier `switchboard stack up` whose "
            "launcher was killed leaves its components behind: `ss -ltnp` names them), or another program"
        )
