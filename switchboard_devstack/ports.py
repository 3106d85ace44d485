"""Free TCP ports for local components, and waiting for a port to accept connections.

``free_port`` picks an unused port below the kernel's ephemeral range (``net.ipv4.ip_local_port_range``,
32768-60999 by default). A port from that range (what binding to port 0 returns) can be handed to any
outgoing connection on the machine between the moment it is chosen and the moment the component binds it:
a full test run once lost a RabbitMQ node to ``eaddrinuse`` that way. Ports below the range are never given
to outgoing connections, so only another listener can take them, and that is checked. A short-lived
reservation file per port (in the system temporary directory, shared by every process on the machine) makes
parallel test runs skip ports another run has just been given. ``host`` may be an IPv4 or an IPv6 address (a
``:`` in it, e.g. ``::1``): the socket's family follows it, as the components bind.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import tempfile
import time
from pathlib import Path

from switchboard.addresses import host_port
from switchboard.errors import StackError

__all__ = ["ephemeral_range", "free_port", "port_is_free", "reserve_port", "wait_port"]

# How long a port handed out by free_port() stays reserved for the process that asked for it.
RESERVATION_SECONDS = 300.0
_RESERVATION_DIR = Path(tempfile.gettempdir()) / "switchboard-ports"
_handed_out: set[int] = set()


# Where free_port() looks when the ephemeral range leaves room below it: at most this many ports under it.
SPAN = 12_000
_LOWEST = 10_000


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports (Linux; the usual default elsewhere)."""
    try:
        low, high = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on, outside the kernel's ephemeral range (no outgoing
    connection can take it before the component binds it), and that no other caller of this function on
    this machine has been given in the last few minutes."""
    low, _ = ephemeral_range()
    start = max(_LOWEST, low - SPAN)
    for _ in range(200):
        if low - start >= 1000:
            port = random.randrange(start, low)
            if not port_is_free(port, host):
                continue
        else:  # no room below the range (an unusual kernel setting): let the kernel choose
            with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
                sock.bind((host, 0))
                port = int(sock.getsockname()[1])
        if reserve_port(port):
            return port
    raise StackError(f"could not find a free TCP port on {host}")


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether ``port`` can be bound on ``host`` right now."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _family(host: str) -> socket.AddressFamily:
    """The address family of a socket bound on ``host``: IPv6 for an address with a ``:``, else IPv4."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def reserve_port(port: int) -> bool:
    """Claims ``port`` for this process for a few minutes; False if this process or another one on the
    machine already claimed it recently. Best effort: True if the reservation directory is unusable."""
    if port in _handed_out:
        return False
    try:
        if not _RESERVATION_DIR.is_dir():
            _RESERVATION_DIR.mkdir(exist_ok=True)
            with contextlib.suppress(OSError):  # shared by every user, like /tmp itself
                os.chmod(_RESERVATION_DIR, 0o1777)  # noqa: S103 - sticky, files are only created O_EXCL
        path = _RESERVATION_DIR / str(port)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                age = time.time() - path.stat().st_mtime
            except FileNotFoundError:
                return False
            if age < RESERVATION_SECONDS:
                return False
            os.utime(path)  # stale: take it over
        else:
            os.close(fd)
        _prune_stale()
    except OSError:
        pass
    _handed_out.add(port)
    return True


def _prune_stale() -> None:
    now = time.time()
    with contextlib.suppress(OSError), os.scandir(_RESERVATION_DIR) as entries:
        for entry in entries:
            with contextlib.suppress(OSError):
                if now - entry.stat().st_mtime > 2 * RESERVATION_SECONDS:
                    os.unlink(entry.path)


def wait_port(host: str, port: int, timeout: float) -> None:
    """Blocks until ``host:port`` accepts a TCP connection; raises TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: OSError | None = None
    while True:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{host_port(host, port)} did not accept connections within {timeout:g} s ({last})")
        time.sleep(0.05)
