"""``[cassandra]``: the store, managed by the local stack or an existing cluster."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from switchboard.config._table import Table
from switchboard.errors import ConfigError

CONSISTENCY_LEVELS = frozenset({"ONE", "LOCAL_ONE", "QUORUM", "LOCAL_QUORUM", "ALL"})
MIN_TTL_SECONDS = 24 * 3600
MAX_TIMER_SLACK_US = 10_000


@dataclass(frozen=True)
class CassandraConfig:
    managed: bool = True
    hosts: tuple[str, ...] = ("127.0.0.1",)
    port: int = 9142
    storage_port: int = 7100
    keyspace: str = "switchboard"
    replication_factor: int = 1
    heap: str = "1g"
    # None: let the driver negotiate; the bundled Cassandra 2.1 needs 3.
    protocol_version: int | None = 3
    # Consistency for reads and writes (ONE locally, LOCAL_QUORUM on a cluster).
    consistency: str = "ONE"
    # Size of the time buckets of the per-source listing table.
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


def parse_cassandra(raw: Mapping[str, Any]) -> CassandraConfig:
    t = Table(raw, "cassandra", CassandraConfig)
    keyspace = t.string("keyspace")
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,47}", keyspace):
        raise ConfigError(f"cassandra.keyspace: {keyspace!r} is not a valid keyspace name")
    protocol = t.get("protocol_version")
    if protocol is not None and (not isinstance(protocol, int) or isinstance(protocol, bool) or protocol < 0):
        raise ConfigError(f"cassandra.protocol_version: must be a protocol number, got {protocol!r}")
    cass = CassandraConfig(
        managed=t.boolean("managed"),
        hosts=t.strings("hosts"),
        port=t.port("port"),
        storage_port=t.port("storage_port"),
        keyspace=keyspace,
        replication_factor=t.pos_int("replication_factor"),
        heap=t.string("heap"),
        protocol_version=protocol or None,
        consistency=t.string("consistency", choices=CONSISTENCY_LEVELS, upper=True),
        bucket_seconds=t.pos_int("bucket_seconds"),
        ttl_seconds=t.pos_int("ttl_seconds"),
        compress_payloads=t.boolean("compress_payloads"),
        batch_units=t.pos_int("batch_units"),
        timer_slack_us=t.pos_int("timer_slack_us"),
    )
    if cass.timer_slack_us > MAX_TIMER_SLACK_US:
        raise ConfigError(
            f"cassandra.timer_slack_us: at most {MAX_TIMER_SLACK_US} (10 ms), got {cass.timer_slack_us}: "
            "every timed wait of the node, the commit log's sync window included, may run that much late"
        )
    if cass.ttl_seconds < MIN_TTL_SECONDS:
        raise ConfigError("cassandra.ttl_seconds: must be at least one day (events are kept for audit and replay)")
    return cass
