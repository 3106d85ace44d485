"""``[cassandra]``: the store, managed by the local stack or an existing cluster."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from switchboard.config._table import Table
from switchboard.config.ports import LOOPBACK
from switchboard.errors import ConfigError

CONSISTENCY_LEVELS = frozenset({"ONE", "LOCAL_ONE", "QUORUM", "LOCAL_QUORUM", "ALL"})
MIN_TTL_SECONDS = 24 * 3600
# Cassandra refuses a TTL above 20 years: every write would fail.
MAX_TTL_SECONDS = 630_720_000
# The latest expiry Cassandra before 5.0 (and 5.0 in its default storage compatibility mode) can store,
# 2038-01-19T03:14:06Z in Unix seconds. A write expiring later is refused from 3.0.16 and 3.11.2 on; on 2.1 run
# without assertions, as the local stack runs it, the expiry overflows and the row is dropped at once
# (CASSANDRA-14092).
MAX_EXPIRY_UNIX = 2**31 - 2
MAX_TIMER_SLACK_US = 10_000
# A JVM heap as -Xms and -Xmx take it: a number of bytes, or of KiB, MiB or GiB.
_HEAP = re.compile(r"([0-9]+)([kKmMgG]?)")
_HEAP_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


@dataclass(frozen=True)
class CassandraConfig:
    managed: bool = True
    hosts: tuple[str, ...] = ("127.0.0.1",)
    port: int = 9142
    storage_port: int = 7100
    keyspace: str = "switchboard"
    replication_factor: int = 1
    # Replicas per datacentre (NetworkTopologyStrategy, which places them on distinct racks), e.g.
    # { dc1 = 3 }; empty: SimpleStrategy with replication_factor, which ignores racks and datacentres (the local
    # node). Used when the keyspace is created, never changed after.
    datacenters: tuple[tuple[str, int], ...] = ()
    heap: str = "1g"
    # None: let the driver negotiate; the bundled Cassandra 2.1 needs 3.
    protocol_version: int | None = 3
    # Consistency for reads and writes (ONE locally, LOCAL_QUORUM on a cluster).
    consistency: str = "ONE"
    # Size of the time buckets of the per-source listing table. Fixed when the keyspace is created: a process
    # configured with another size than the keyspace's refuses to start (switchboard.store.session.check_layout).
    bucket_seconds: int = 3600
    ttl_seconds: int = 30 * 24 * 3600
    # Event bodies and entity states stored zstd-compressed where that pays (switchboard.store.payloads);
    # every reader decodes both forms, so this can change at any time.
    compress_payloads: bool = True
    # Write units (an event's rows, an entity's writes) per request of a processor's commit, besides the
    # 40 KB limit (switchboard.store.batches).
    batch_units: int = 32
    # The managed node's timer slack in µs (how late the kernel may wake its threads' timed sleeps; the
    # kernel's default is 50): 1 ms keeps Cassandra 2.1's idle request workers from waking ~16,000 times a
    # second (switchboard_devstack.cassandra).
    timer_slack_us: int = 1000

    @property
    def local_consistency(self) -> bool:
        """A LOCAL_ level: quorums of the local datacentre (its lightweight transactions read at LOCAL_SERIAL)."""
        return self.consistency.startswith("LOCAL_")


def _datacenters(raw: Any) -> tuple[tuple[str, int], ...]:
    if raw is None or raw == ():
        return ()
    if not isinstance(raw, Mapping):
        raise ConfigError("cassandra.datacenters: must be a table of datacentre = replicas, e.g. { dc1 = 3 }")
    out: dict[str, int] = {}
    for name, replicas in raw.items():
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
            raise ConfigError(f"cassandra.datacenters: {str(name)[:40]!r} is not a datacentre name")
        if not isinstance(replicas, int) or isinstance(replicas, bool) or not 1 <= replicas <= 10:
            raise ConfigError(f"cassandra.datacenters.{name}: replicas must be a whole number from 1 to 10")
        out[name] = replicas
    return tuple(sorted(out.items()))


def parse_cassandra(raw: Mapping[str, Any]) -> CassandraConfig:
    t = Table(raw, "cassandra", CassandraConfig)
    keyspace = t.string("keyspace")
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,47}", keyspace):
        raise ConfigError(f"cassandra.keyspace: {keyspace!r} is not a valid keyspace name")
    protocol = t.get("protocol_version")
    if protocol is not None and (not isinstance(protocol, int) or isinstance(protocol, bool) or protocol < 0):
        raise ConfigError(f"cassandra.protocol_version: must be a protocol number, got {protocol!r}")
    managed, hosts = t.boolean("managed"), t.strings("hosts")
    if managed and hosts not in ((LOOPBACK,), ("localhost",)):
        # The stack started a useless local node (on 127.0.0.1 only) and created the schema on the hosts given.
        raise ConfigError(
            f"cassandra.hosts: {list(hosts)}: the local stack runs its node on {LOOPBACK} only; "
            "for a cluster elsewhere set managed = false"
        )
    datacenters = _datacenters(t.get("datacenters"))
    if datacenters and managed:
        # The managed node's datacentre is "datacenter1": a keyspace for other names has no replica at all.
        raise ConfigError("cassandra.datacenters: for a cluster (managed = false); the local node needs none")
    cass = CassandraConfig(
        managed=managed,
        hosts=hosts,
        port=t.port("port"),
        storage_port=t.port("storage_port"),
        keyspace=keyspace,
        replication_factor=t.pos_int("replication_factor"),
        datacenters=datacenters,
        heap=check_heap(t.string("heap")),
        protocol_version=protocol or None,
        consistency=t.string("consistency", choices=CONSISTENCY_LEVELS, upper=True),
        bucket_seconds=t.pos_int("bucket_seconds"),
        ttl_seconds=t.pos_int("ttl_seconds"),
        compress_payloads=t.boolean("compress_payloads"),
        batch_units=t.pos_int("batch_units"),
        timer_slack_us=t.pos_int("timer_slack_us"),
    )
    if cass.local_consistency and not datacenters and not managed:
        # LOCAL_QUORUM on SimpleStrategy: replicas by ring order, racks ignored (two of three in one rack, a
        # commit acknowledged there lost with it), and over two datacentres three replicas in all, not each.
        raise ConfigError(
            "cassandra.consistency: a LOCAL_ level on a cluster needs cassandra.datacenters (replicas per "
            "datacentre, e.g. { dc1 = 3 }): without it the keyspace is created with SimpleStrategy, which ignores "
            "racks and datacentres; refusing to start"
        )
    if cass.timer_slack_us > MAX_TIMER_SLACK_US:
        raise ConfigError(
            f"cassandra.timer_slack_us: at most {MAX_TIMER_SLACK_US} (10 ms), got {cass.timer_slack_us}: "
            "every timed wait of the node, the commit log's sync window included, may run that much late"
        )
    if cass.ttl_seconds < MIN_TTL_SECONDS:
        raise ConfigError("cassandra.ttl_seconds: must be at least one day (events are kept for audit and replay)")
    check_ttl(cass.ttl_seconds, time.time())
    return cass


def check_ttl(ttl_seconds: int, now: float) -> None:
    """``ConfigError`` unless Cassandra stores a row written at ``now`` (Unix seconds) with this TTL: at most
    20 years, and expiring no later than ``MAX_EXPIRY_UNIX``."""
    if ttl_seconds > MAX_TTL_SECONDS:
        raise ConfigError(
            f"cassandra.ttl_seconds: at most {MAX_TTL_SECONDS} (20 years, Cassandra's limit), got {ttl_seconds}: "
            "Cassandra would refuse every write"
        )
    if now + ttl_seconds > MAX_EXPIRY_UNIX:
        raise ConfigError(
            f"cassandra.ttl_seconds: {ttl_seconds} makes rows written now expire after 2038-01-19T03:14:06Z, the "
            "latest expiry Cassandra before 5.0 can store (it refuses such writes, or on 2.1 drops the rows at "
            "once: CASSANDRA-14092)"
        )


def check_heap(heap: str) -> str:
    """``heap`` if the JVM takes it for -Xms and -Xmx (digits, then k, m or g or nothing for bytes; a multiple
    of 1 KiB and more than 2 MiB, as the JVM requires), else ``ConfigError``. The local stack's Cassandra
    node checks its heap with this too."""
    m = _HEAP.fullmatch(heap)
    size = int(m[1]) * _HEAP_UNITS[m[2].lower()] if m else 0
    if not m or size % 1024 or size <= 2 << 20:
        raise ConfigError(
            f"cassandra.heap: {heap!r} is not a JVM heap size of more than 2 MiB (a multiple of 1 KiB: 512m, 1g)"
        )
    return heap
