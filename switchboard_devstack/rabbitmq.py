"""A project-owned RabbitMQ node (Debian's rabbitmq-server 3.10), next to any system broker.

Everything the node owns lives under ``base_dir``: configuration, the Erlang cookie, the Mnesia and quorum
queue data (so a restart with the same ``base_dir`` keeps queue contents), the pid file and logs. The node is
``<nodename>@localhost``, listens for AMQP on 127.0.0.1 only and uses its own Erlang distribution port.

The scripts in ``/usr/lib/rabbitmq/bin`` are called directly: the ``/usr/sbin`` wrappers switch to the
``rabbitmq`` user when run as root. ``HOME`` is set to ``base_dir`` for the node and for ``rabbitmqctl``, so
both use the node's own cookie (``base_dir/.erlang.cookie``), whoever runs them, and the system broker's
environment file (``/etc/rabbitmq/rabbitmq-env.conf``) is replaced by the node's own.

Broker behaviour worth knowing for fault tests (3.10.8, Ra 2.2): Ra records a new quorum queue's member in
``names.dets``, saved every 500 ms. A quorum queue declared less than that before a SIGKILL comes back
empty and without a leader: Basic.Get on it hung for 60 s (seen when killed right after the confirm;
not with a 1 s pause). Queues declared earlier recover their confirmed messages.
"""

from __future__ import annotations

import os
import secrets
import socket
import string
import struct
import subprocess
from collections.abc import Collection
from pathlib import Path

from switchboard.config.ports import RABBITMQ_DIST_OFFSET, RABBITMQ_PROMETHEUS_OFFSET
from switchboard.files import create_new
from switchboard_devstack.ports import ephemeral_range, free_port, port_is_free, reserve_port
from switchboard_devstack.process import ManagedProcess

__all__ = ["RABBITMQ_BIN", "RabbitNode"]

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
HOST = "127.0.0.1"
# Partitioned streams hash messages onto their queues with the consistent-hash exchange (ships with 3.10);
# rabbitmq_prometheus serves the broker's metrics (GET /metrics) on a port of the node's own.
PLUGINS = ("rabbitmq_consistent_hash_exchange", "rabbitmq_prometheus")


class RabbitNode(ManagedProcess):
    """``RabbitNode(base_dir, port, nodename="switchboard")``: AMQP on ``127.0.0.1:port``, Prometheus metrics on
    ``127.0.0.1:prometheus_port`` (default: AMQP port + 10000 if free and outside the kernel's ephemeral range,
    else a free port from ``free_port``; never the plugin's 15692, which a system broker may hold)."""

    def __init__(
        self,
        base_dir: Path,
        port: int,
        *,
        nodename: str,
        dist_port: int | None = None,
        bin_dir: Path = RABBITMQ_BIN,
        user: str = "guest",
        password: str = "guest",  # noqa: S107 - RabbitMQ's default user, only allowed from loopback
        plugins: tuple[str, ...] = PLUGINS,
        prometheus_port: int | None = None,
        avoid_ports: Collection[int] = (),
    ) -> None:
        """``avoid_ports``: ports the rest of the platform will listen on, never taken for the node's default
        metrics (AMQP port + 10000) and Erlang distribution (+ 20000) ports: a free port is taken instead, as it
        is for one in use or in the kernel's ephemeral range (``_default_port``)."""
        super().__init__("rabbitmq", base_dir)
        if not nodename or "@" in nodename:
            raise ValueError(f"nodename must be a bare name without '@host': {nodename!r}")
        self.port = port
        self.nodename = nodename
        self.node = f"{nodename}@localhost"
        self.dist_port = dist_port if dist_port is not None else _default_dist_port(port, avoid_ports)
        self.bin_dir = Path(bin_dir)
        self.user = user
        self.password = password
        self.plugins = plugins
        self.prometheus_port = prometheus_port or _default_prometheus_port(port, avoid_ports)

    # -- paths ----------------------------------------------------------------------------------------
    @property
    def mnesia_base(self) -> Path:
        return self.base_dir / "mnesia"

    @property
    def log_base(self) -> Path:
        return self.base_dir / "log"

    @property
    def pid_file(self) -> Path:
        return self.base_dir / f"{self.nodename}.pid"

    @property
    def config_file(self) -> Path:
        return self.base_dir / "rabbitmq.conf"

    @property
    def advanced_config_file(self) -> Path:
        return self.base_dir / "advanced.config"

    @property
    def enabled_plugins_file(self) -> Path:
        return self.base_dir / "enabled_plugins"

    @property
    def env_file(self) -> Path:
        return self.base_dir / "rabbitmq-env.conf"

    @property
    def cookie_file(self) -> Path:
        return self.base_dir / ".erlang.cookie"

    @property
    def amqp_url(self) -> str:
        return f"amqp://{self.user}:{self.password}@{HOST}:{self.port}/"

    # -- ManagedProcess --------------------------------------------------------------------------------
    def prepare(self) -> None:
        for d in (self.mnesia_base, self.log_base):
            d.mkdir(parents=True, exist_ok=True)
        if self.cookie_file.exists() and self.cookie_file.stat().st_size == 0:
            # Left by a start that crashed between creating and writing it (before create_new): no node can
            # have used it.
            self.cookie_file.unlink()
        if not self.cookie_file.exists():
            cookie = "".join(secrets.choice(string.ascii_uppercase) for _ in range(32))
            create_new(self.cookie_file, cookie, mode=0o400)
        # Replaces /etc/rabbitmq/rabbitmq-env.conf (which names the system node); settings come from the
        # environment below.
        self.env_file.write_text("# Settings come from the environment of switchboard_devstack.RabbitNode.\n")
        self.config_file.write_text(
            "\n".join(
                [
                    "# Written by switchboard_devstack.RabbitNode on every start.",
                    # Publishers are blocked below this much free disk: pinned low (3.10's default; newer
                    # releases and production guides use more) so a nearly full dev disk does not stall.
                    "disk_free_limit.absolute = 50MB",
                    f"default_user = {self.user}",
                    f"default_pass = {self.password}",
                    # Smaller quorum-queue WAL: less memory held and a faster recovery after a crash.
                    "raft.wal_max_size_bytes = 67108864",
                    # Logs go to stdout, i.e. to the ManagedProcess log file.
                    "log.file = false",
                    "log.console = true",
                    "log.console.level = info",
                    "log.console.use_colors = off",
                    *(
                        [f"prometheus.tcp.ip = {HOST}", f"prometheus.tcp.port = {self.prometheus_port}"]
                        if "rabbitmq_prometheus" in self.plugins
                        else []
                    ),
                    "",
                ]
            )
        )
        self.advanced_config_file.write_text("[].\n")
        self.enabled_plugins_file.write_text(f"[{','.join(self.plugins)}].\n")

    def command(self) -> list[str]:
        return [str(self.bin_dir / "rabbitmq-server")]

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            {
                "HOME": str(self.base_dir),
                "RABBITMQ_CONF_ENV_FILE": str(self.env_file),
                "RABBITMQ_NODENAME": self.node,
                "RABBITMQ_USE_LONGNAME": "false",
                "RABBITMQ_NODE_IP_ADDRESS": HOST,
                "RABBITMQ_NODE_PORT": str(self.port),
                "RABBITMQ_DIST_PORT": str(self.dist_port),
                "RABBITMQ_MNESIA_BASE": str(self.mnesia_base),
                "RABBITMQ_LOG_BASE": str(self.log_base),
                "RABBITMQ_PID_FILE": str(self.pid_file),
                "RABBITMQ_CONFIG_FILE": str(self.config_file),
                "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.advanced_config_file),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.enabled_plugins_file),
                # Erlang distribution on loopback only (epmd too, should this node have to start it).
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
                "ERL_EPMD_ADDRESS": HOST,
            }
        )
        return env

    def ready(self) -> bool:
        """A full AMQP 0-9-1 handshake (up to Connection.Open-Ok on vhost "/") succeeds."""
        return amqp_handshake(HOST, self.port, self.user, self.password)

    def stop(self, timeout: float = 60.0) -> None:
        """``rabbitmqctl stop`` (waits until the node's OS process exited); SIGTERM/SIGKILL as fallback."""
        if self.is_running():
            try:
                self.rabbitmqctl("stop", str(self.pid_file), timeout=timeout)
            except (subprocess.SubprocessError, OSError) as exc:
                detail = exc.stderr if isinstance(exc, subprocess.CalledProcessError) else ""
                with open(self.log_path, "a") as log:
                    log.write(f"\n===== rabbitmqctl stop failed ({exc}); terminating\n{detail}\n")
        self.terminate(timeout=10.0)

    # -- CLI -------------------------------------------------------------------------------------------
    def rabbitmqctl(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Runs ``rabbitmqctl -n <node> args...`` with this node's cookie; raises CalledProcessError."""
        return subprocess.run(
            [str(self.bin_dir / "rabbitmqctl"), "-n", self.node, *args],
            env=self.environment(),
            cwd=self.base_dir,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )


def _usable_default(candidate: int, avoid: Collection[int]) -> bool:
    """Whether ``candidate`` (the AMQP port + an offset) may be a default listening port of the node: within
    65535, not one the platform lists, free now, and outside the kernel's ephemeral range. A port in that range
    (the test stacks' AMQP ports come from ``free_port``, 20768-32767 by default, so + 20000 always lands in
    32768-60999) can be taken by any outgoing connection between this check and the node's bind
    (``eaddrinuse``); below it only another listener can take it."""
    low, high = ephemeral_range()
    return candidate < 65536 and not low <= candidate <= high and candidate not in avoid and port_is_free(candidate)


def _default_prometheus_port(port: int, avoid: Collection[int] = ()) -> int:
    candidate = port + RABBITMQ_PROMETHEUS_OFFSET
    if _usable_default(candidate, avoid) and reserve_port(candidate):
        return candidate
    return free_port()


def _default_dist_port(port: int, avoid: Collection[int] = ()) -> int:
    candidate = port + RABBITMQ_DIST_OFFSET
    if _usable_default(candidate, avoid):
        reserve_port(candidate)  # keep free_port() from handing it out meanwhile
        return candidate
    return free_port()


# -- a minimal synchronous AMQP 0-9-1 client handshake (readiness probe without threads or a loop) ---------
_FRAME_METHOD = 1
_FRAME_END = b"\xce"


def _shortstr(s: str) -> bytes:
    b = s.encode()
    return struct.pack("!B", len(b)) + b


def _longstr(b: bytes) -> bytes:
    return struct.pack("!I", len(b)) + b


def _method_frame(class_id: int, method_id: int, args: bytes) -> bytes:
    payload = struct.pack("!HH", class_id, method_id) + args
    return struct.pack("!BHI", _FRAME_METHOD, 0, len(payload)) + payload + _FRAME_END


def _read_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by the broker")
        buf += chunk
    return buf


def _read_method(sock: socket.socket) -> tuple[int, int, bytes]:
    """Next method frame on channel 0 as (class_id, method_id, arguments); skips heartbeats."""
    while True:
        ftype, _channel, size = struct.unpack("!BHI", _read_exact(sock, 7))
        payload = _read_exact(sock, size)
        if _read_exact(sock, 1) != _FRAME_END:
            raise ConnectionError("malformed AMQP frame")
        if ftype == _FRAME_METHOD:
            class_id, method_id = struct.unpack("!HH", payload[:4])
            return class_id, method_id, payload[4:]


def amqp_handshake(host: str, port: int, user: str, password: str, *, timeout: float = 2.0) -> bool:
    """Opens and cleanly closes an AMQP connection to vhost "/"; False on any refusal or failure."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"AMQP\x00\x00\x09\x01")
            if _read_method(sock)[:2] != (10, 10):  # Connection.Start
                return False
            response = b"\x00" + user.encode() + b"\x00" + password.encode()
            start_ok = struct.pack("!I", 0) + _shortstr("PLAIN") + _longstr(response) + _shortstr("en_US")
            sock.sendall(_method_frame(10, 11, start_ok))
            class_id, method_id, args = _read_method(sock)
            if (class_id, method_id) != (10, 30):  # Connection.Tune (else Close: refused)
                return False
            channel_max, frame_max, _heartbeat = struct.unpack("!HIH", args[:8])
            sock.sendall(_method_frame(10, 31, struct.pack("!HIH", channel_max, frame_max, 0)))
            sock.sendall(_method_frame(10, 40, _shortstr("/") + _shortstr("") + b"\x00"))
            if _read_method(sock)[:2] != (10, 41):  # Connection.Open-Ok
                return False
            sock.sendall(_method_frame(10, 50, struct.pack("!H", 200) + _shortstr("probe") + b"\0\0\0\0"))
            while _read_method(sock)[:2] != (10, 51):  # Connection.Close-Ok
                pass
            return True
    except (OSError, struct.error):
        return False
