"""A single local Apache Cassandra 2.1 node from the npm bundle in ``.tools/cassandra``.

The bundle's ``bin/cassandra`` script does not work on Java 17, so the JVM is started directly with the
``--add-opens`` flags Cassandra 2.1 needs there. The node's configuration (``cassandra.yaml``, written as
JSON, which YAML parsers accept), a ``logback.xml``, the data, commit log and saved caches all live under
``base_dir``: a restart with the same ``base_dir`` keeps the data. With ``commitlog_batch`` (the default) every
acknowledged write is synced to the commit log first, so it survives a SIGKILL of the JVM; the stock
``periodic`` mode (10 s) loses acknowledged writes on a crash.

In batch mode Cassandra 2.1.0 syncs the commit log every ``commitlog_window_ms`` (its
``commitlog_sync_batch_window_in_ms``), and a write waits for the next sync. A request's mutations (one per
partition it writes) are applied one after another in the request's own thread, so a batch of N partitions
takes about N sync intervals; requests in flight at once share each sync. Read in the 2.1.0 bytecode
(``javap -c``): ``StorageProxy.insertLocal`` runs the mutation through ``SEPExecutor.maybeExecuteImmediately``
(in the caller's thread while a write permit is free), and ``BatchCommitLogService.maybeWaitForSync`` only
waits (``awaitDiskSync``; it does not wake the sync thread). Hence a 1 ms window, the smallest: the value is
truncated to whole milliseconds and 0 would make the sync thread spin.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
from pathlib import Path
from typing import Any

from switchboard.config.store import check_heap
from switchboard.errors import StackError
from switchboard_devstack.paths import DevPaths
from switchboard_devstack.ports import free_port
from switchboard_devstack.process import ManagedProcess

__all__ = ["DEFAULT_HOME", "CassandraNode", "cql_ready"]

DEFAULT_HOME = DevPaths.default().cassandra_home
HOST = "127.0.0.1"

# All needed on Java 17 (see INFRA.md): without java.io the commit-log thread dies and start-up hangs,
# without java.nio every PREPARE fails.
_ADD_OPENS = (
    "java.base/java.lang",
    "java.base/java.io",
    "java.base/java.nio",
    "java.base/java.util",
    "java.base/java.util.concurrent",
    "java.base/java.util.concurrent.atomic",
    # PREPARE measures statements with jamm's MemoryMeter, which walks into these (seen failing without
    # java.lang.ref: "module java.base does not opens java.lang.ref").
    "java.base/java.lang.ref",
    "java.base/java.lang.reflect",
    "java.base/java.math",
    "java.base/java.net",
    "java.base/java.nio.charset",
    "java.base/java.text",
    "java.base/java.time",
    "java.base/java.util.concurrent.locks",
    "java.base/java.util.regex",
    "java.base/java.security",
    "java.base/sun.nio.ch",
    "java.base/sun.nio.cs",
    "java.base/jdk.internal.ref",
    "java.base/jdk.internal.misc",
)
_ADD_EXPORTS = ("java.base/sun.nio.ch", "java.base/jdk.internal.ref", "java.base/jdk.internal.misc")

_LOGBACK_XML = """<configuration>
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%-5level %date{ISO8601} [%thread] %logger{0} %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="STDOUT"/></root>
  <logger name="com.thinkaurelius.thrift" level="ERROR"/>
</configuration>
"""


class CassandraNode(ManagedProcess):
    """CQL (native protocol v3) on ``127.0.0.1:native_port``, gossip on ``127.0.0.1:storage_port``."""

    def __init__(
        self,
        base_dir: Path,
        native_port: int,
        storage_port: int,
        *,
        home: Path = DEFAULT_HOME,
        heap: str = "1g",
        commitlog_batch: bool = True,
        commitlog_window_ms: int = 1,
        java: str | None = None,
        ssl_storage_port: int | None = None,
        cluster_name: str = "Test Cluster",
        lock_memory: bool = False,
        timer_slack_us: int = 1000,
    ) -> None:
        # Cassandra 2.1's shared request pool keeps an idle worker "spinning": parking 10 µs at a time and
        # looking for work, ~16,000 wake-ups a second at the kernel's 50 µs slack. With 1 ms of slack those
        # parks wake ~1,000 times a second (bench.pipeline, alternating runs, 2026-12-06): the pool's CPU at
        # 300 events/s 0.15 of a core instead of 0.29, drain 1,418-1,443 events/s instead of 1,188-1,210
        # (docs/benchmarks.md).
        super().__init__("cassandra", base_dir, timer_slack_ns=timer_slack_us * 1000)
        check_heap(heap)
        self.native_port = native_port
        self.storage_port = storage_port
        self.home = Path(home).absolute()
        self.heap = heap
        self.commitlog_batch = commitlog_batch
        if commitlog_window_ms < 1:
            raise ValueError(
                f"commitlog_window_ms must be at least 1 (0 makes the sync thread spin), not {commitlog_window_ms}"
            )
        # 1 instead of 2 (bench.pipeline, alternating pairs, 2026-12-06): drain 1,606 and 1,604 events/s against
        # 1,310 and 1,073, Cassandra 0.65-0.73 ms of CPU per event against 0.77-0.92; at 300/s e2e p99 112 and
        # 214 ms against 240 and 348, commit p50 3 ms against 5 (docs/benchmarks.md).
        self.commitlog_window_ms = commitlog_window_ms
        self.java = java or _find_java()
        # Not bound while internode encryption is off, but keep two nodes on one machine apart anyway.
        self.ssl_storage_port = ssl_storage_port if ssl_storage_port is not None else free_port()
        self.rpc_port = free_port()  # Thrift stays off (start_rpc: false); a distinct port all the same
        self.cluster_name = cluster_name
        self.lock_memory = lock_memory

    # -- paths ----------------------------------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        return self.base_dir / "cassandra.yaml"

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def commitlog_dir(self) -> Path:
        return self.base_dir / "commitlog"

    @property
    def saved_caches_dir(self) -> Path:
        return self.base_dir / "saved_caches"

    # -- configuration ---------------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """The node's cassandra.yaml: the bundle's defaults with this node's directories, ports and the
        settings a long-running local node needs (see INFRA.md)."""
        template = self.home.parent / "cassandra.json"
        cfg: dict[str, Any] = _drop_nulls(json.loads(template.read_text()))
        cfg.update(
            {
                "cluster_name": self.cluster_name,
                "data_file_directories": [str(self.data_dir)],
                "commitlog_directory": str(self.commitlog_dir),
                "saved_caches_directory": str(self.saved_caches_dir),
                "listen_address": HOST,
                "rpc_address": HOST,
                "native_transport_port": self.native_port,
                "storage_port": self.storage_port,
                "ssl_storage_port": self.ssl_storage_port,
                "rpc_port": self.rpc_port,
                "start_native_transport": True,
                "start_rpc": False,
                "num_tokens": 1,
                "seed_provider": [
                    {
                        "class_name": "org.apache.cassandra.locator.SimpleSeedProvider",
                        "parameters": [{"seeds": HOST}],
                    }
                ],
                # Verified necessary in a soak (INFRA.md): else leaked mmaps, leftover tmplink sstables
                # and a 2 GB commit log.
                "disk_access_mode": "standard",
                "sstable_preemptive_open_interval_in_mb": -1,
                "commitlog_total_space_in_mb": 1024,
                # The processors write whole batches of ~5 KB events as unlogged batches of up to ~40 KB;
                # 2.1 would log a warning for every batch over 5 KB.
                "batch_size_warn_threshold_in_kb": 64,
                # Memtable cells off the heap: the JVM's young collections no longer copy every cell written
                # since the last flush. Measured at 400 events/s (bench.pipeline, docs/processing.md): 19
                # young pauses instead of 41 in the same run, 1.2-1.5 s of pause instead of 3.4 s.
                "memtable_allocation_type": "offheap_objects",
            }
        )
        if self.commitlog_batch:
            cfg["commitlog_sync"] = "batch"
            cfg["commitlog_sync_batch_window_in_ms"] = self.commitlog_window_ms
            cfg.pop("commitlog_sync_period_in_ms", None)  # 2.1 refuses both together
        return cfg

    def prepare(self) -> None:
        if not (self.home / "lib").is_dir():
            raise StackError(f"no Cassandra at {self.home}; run scripts/setup.sh")
        for d in (self.data_dir, self.commitlog_dir, self.saved_caches_dir, self.base_dir / "tmp"):
            d.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(json.dumps(self.settings(), indent=2) + "\n")
        (self.base_dir / "logback.xml").write_text(_LOGBACK_XML)

    def command(self) -> list[str]:
        jars = sorted(str(p) for p in (self.home / "lib").glob("*.jar"))
        classpath = os.pathsep.join([str(self.home / "conf"), *jars])
        argv = [
            self.java,
            f"-Xms{self.heap}",
            f"-Xmx{self.heap}",
            "-XX:+UseG1GC",
            # G1's default target (200 ms) let young pauses reach 300-500 ms on this 2-core box: every
            # processor commit waits that long, and the GC threads take both cores from ingest. With 20 ms
            # the young generation stays small: more pauses, p50 13-15 ms and max <= 150 ms (G1's default:
            # p50 40-48 ms), about the same time paused in all.
            "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError",
        ]
        for module in _ADD_OPENS:
            argv += ["--add-opens", f"{module}=ALL-UNNAMED"]
        for module in _ADD_EXPORTS:
            argv += ["--add-exports", f"{module}=ALL-UNNAMED"]
        if not self.lock_memory:
            # Cassandra calls mlockall() through JNA, and as root (CAP_IPC_LOCK) that succeeds: the whole
            # committed heap is faulted in and pinned (+2.5 s start-up, ~1.4 GB RSS). Not loading JNA's
            # native part turns that (and the other optional native calls, fadvise) off.
            argv += [
                "-Djna.nosys=true",
                "-Djna.nounpack=true",
                f"-Djna.boot.library.path={self.base_dir / 'no-jna'}",
                "-Dcassandra.boot_without_jna=true",
            ]
        argv += [
            "-Djava.net.preferIPv4Stack=true",
            f"-Djava.io.tmpdir={self.base_dir / 'tmp'}",
            f"-Dcassandra.config={self.config_file.as_uri()}",
            "-Dcassandra-foreground=yes",
            f"-Dcassandra.logdir={self.base_dir}",
            f"-Dcassandra.storagedir={self.base_dir}",
            f"-Dlogback.configurationFile={self.base_dir / 'logback.xml'}",
            "-cp",
            classpath,
            "org.apache.cassandra.service.CassandraDaemon",
        ]
        return argv

    # -- ManagedProcess --------------------------------------------------------------------------------
    def ready(self) -> bool:
        """The native port answers a CQL session (OPTIONS, STARTUP, a query of system.local)."""
        return cql_ready(HOST, self.native_port)

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM (the JVM's shutdown hook stops the node), SIGKILL after ``timeout`` seconds."""
        self.terminate(timeout)


def _find_java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    return shutil.which("java") or "java"


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


# -- a minimal synchronous CQL native protocol v3 probe (no driver threads) --------------------------------
_OP_ERROR, _OP_STARTUP, _OP_READY, _OP_OPTIONS, _OP_SUPPORTED, _OP_QUERY, _OP_RESULT = 0, 1, 2, 5, 6, 7, 8


def _cql_string(s: str) -> bytes:
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def _read_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by Cassandra")
        buf += chunk
    return buf


def _cql_request(sock: socket.socket, stream: int, opcode: int, body: bytes) -> int:
    sock.sendall(struct.pack("!BBhBI", 0x03, 0, stream, opcode, len(body)) + body)
    version, _flags, _stream, op, length = struct.unpack("!BBhBI", _read_exact(sock, 9))
    _read_exact(sock, length)
    if version != 0x83:
        raise ConnectionError(f"unexpected CQL response version {version:#x}")
    return int(op)


def cql_ready(host: str, port: int, *, timeout: float = 2.0) -> bool:
    """Whether ``host:port`` serves CQL: OPTIONS, STARTUP and ``SELECT release_version FROM system.local``
    all answer without error."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if _cql_request(sock, 1, _OP_OPTIONS, b"") != _OP_SUPPORTED:
                return False
            startup = struct.pack("!H", 1) + _cql_string("CQL_VERSION") + _cql_string("3.0.0")
            if _cql_request(sock, 2, _OP_STARTUP, startup) != _OP_READY:
                return False
            query = b"SELECT release_version FROM system.local"
            body = struct.pack("!I", len(query)) + query + struct.pack("!HB", 0x0001, 0)  # ONE, no flags
            return _cql_request(sock, 3, _OP_QUERY, body) == _OP_RESULT
    except (OSError, struct.error):
        return False
