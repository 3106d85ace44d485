"""The platform configuration: one TOML file, parsed once into frozen value objects.

Each service's ``main`` loads it and keeps only the part it needs. Relative paths are resolved against
the directory holding the configuration file. Anything unsafe or unknown raises ``ConfigError`` naming the
key, so that services refuse to start rather than guess.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from switchboard.errors import ConfigError
from switchboard.secrets import SecretRef

SOURCE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
SCHEMES = ("stripe", "github", "shopify", "standard_webhooks", "hmac")
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "switchboard.toml"
MiB = 1024 * 1024


@dataclass(frozen=True)
class RateLimit:
    """Token bucket: ``requests`` per ``per_seconds``, bursting to ``requests``."""

    requests: int
    per_seconds: int = 1


@dataclass(frozen=True)
class SourceConfig:
    name: str
    scheme: str
    secrets: tuple[SecretRef, ...]
    # Scheme-specific settings (header, algorithm, encoding, prefix, tolerance_seconds, ...).
    options: Mapping[str, Any] = field(default_factory=dict)
    max_body_bytes: int = MiB
    # CIDRs allowed to post to this source; empty means any address.
    allow_cidrs: tuple[str, ...] = ()
    rate_limit: RateLimit | None = None


@dataclass(frozen=True)
class EdgeConfig:
    bind: str = "127.0.0.1"
    https_port: int = 8443
    admin_port: int = 9901
    # Empty means a local CA and certificate generated under <data_dir>/tls.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    default_source: str | None = None
    # Per client IP, across all sources.
    per_ip_rate_limit: RateLimit | None = None
    # Generous cap before per-source limits.
    max_body_bytes: int = MiB


@dataclass(frozen=True)
class IngestConfig:
    host: str = "127.0.0.1"
    port: int = 50051
    # How long Receive waits for the broker's confirm before answering UNAVAILABLE.
    confirm_timeout_seconds: float = 2.0


@dataclass(frozen=True)
class QueryConfig:
    host: str = "127.0.0.1"
    port: int = 50052


@dataclass(frozen=True)
class OperationConfig:
    """An operation the processor runs for matching events: ``call`` is ``module:function``."""

    name: str
    call: str
    event_types: tuple[str, ...] = ("*",)
    sources: tuple[str, ...] = ()  # empty: every source
    timeout_seconds: float = 10.0


@dataclass(frozen=True)
class RetryConfig:
    """Retries of failed operations: exponential backoff with jitter through delay queues.

    Attempt ``n`` (1-based) that fails waits ``min_backoff * 2**(n-1)`` seconds, capped at ``max_backoff``,
    jittered down to between half and all of it; attempt ``max_attempts`` that fails marks the event FAILED
    and dead-letters its message.
    """

    max_attempts: int = 8
    min_backoff_seconds: float = 1.0
    max_backoff_seconds: float = 600.0

    def levels_ms(self) -> tuple[int, ...]:
        """The delay queues' TTLs: ``min_backoff * 2**k`` up to and including ``max_backoff``."""
        out: list[int] = []
        delay = self.min_backoff_seconds
        while True:
            ms = round(min(delay, self.max_backoff_seconds) * 1000)
            if out and ms == out[-1]:
                break
            out.append(ms)
            if delay >= self.max_backoff_seconds:
                break
            delay *= 2
        return tuple(out)

    def level_for(self, attempt: int) -> int:
        """The delay queue (its TTL in ms) that a message waits in after failed attempt ``attempt``."""
        levels = self.levels_ms()
        return levels[min(max(attempt, 1), len(levels)) - 1]


@dataclass(frozen=True)
class ProcessorConfig:
    count: int = 1
    prefetch: int = 256
    operations: tuple[OperationConfig, ...] = ()
    retry: RetryConfig = RetryConfig()
    # Directories put in front of sys.path before the operations are imported (a team's own modules).
    python_path: tuple[Path, ...] = ()


@dataclass(frozen=True)
class RabbitConfig:
    # managed: the stack starts its own node; otherwise `url` points at an existing broker.
    managed: bool = True
    host: str = "127.0.0.1"
    port: int = 5682
    nodename: str = "switchboard"
    url: str | None = None
    queue_prefix: str = "switchboard"

    @property
    def amqp_url(self) -> str:
        return self.url or f"amqp://guest:guest@{self.host}:{self.port}/"


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
    # Consistency of the Paxos phase of the idempotency claim (LOCAL_SERIAL on a multi-DC cluster).
    serial_consistency: str = "SERIAL"
    # Size of the time buckets of the per-source listing table.
    bucket_seconds: int = 3600
    ttl_seconds: int = 30 * 24 * 3600


@dataclass(frozen=True)
class PlatformConfig:
    path: Path
    data_dir: Path
    log_level: str
    edge: EdgeConfig
    ingest: IngestConfig
    query: QueryConfig
    processor: ProcessorConfig
    rabbitmq: RabbitConfig
    cassandra: CassandraConfig
    sources: tuple[SourceConfig, ...]

    def source(self, name: str) -> SourceConfig | None:
        for src in self.sources:
            if src.name == name:
                return src
        return None

    @property
    def tls_dir(self) -> Path:
        return self.data_dir / "tls"


def load_config(path: Path | str | None = None) -> PlatformConfig:
    cfg_path = Path(path) if path else DEFAULT_CONFIG
    try:
        raw = tomllib.loads(cfg_path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"configuration file {cfg_path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{cfg_path}: {exc}") from None
    return parse_config(raw, cfg_path.resolve())


def parse_config(raw: Mapping[str, Any], path: Path) -> PlatformConfig:
    base = path.parent
    _known(raw, "", {"platform", "edge", "ingest", "query", "processor", "rabbitmq", "cassandra", "sources"})
    plat = _table(raw, "platform")
    _known(plat, "platform", {"data_dir", "log_level"})
    data_dir = _path(base, plat.get("data_dir", "var"))
    log_level = str(plat.get("log_level", "INFO")).upper()
    if log_level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ConfigError(f"platform.log_level: unknown level {log_level!r}")

    e = _table(raw, "edge")
    _known(
        e,
        "edge",
        {
            "bind",
            "https_port",
            "admin_port",
            "tls_cert",
            "tls_key",
            "default_source",
            "per_ip_rate_limit",
            "max_body_bytes",
        },
    )
    edge = EdgeConfig(
        bind=_ip(e.get("bind", "127.0.0.1"), "edge.bind"),
        https_port=_port(e, "edge.https_port", 8443),
        admin_port=_port(e, "edge.admin_port", 9901),
        tls_cert=_path(base, e["tls_cert"]) if e.get("tls_cert") else None,
        tls_key=_path(base, e["tls_key"]) if e.get("tls_key") else None,
        default_source=e.get("default_source") or None,
        per_ip_rate_limit=_rate_limit(e.get("per_ip_rate_limit"), "edge.per_ip_rate_limit"),
        max_body_bytes=_pos_int(e, "edge.max_body_bytes", MiB),
    )
    if bool(edge.tls_cert) != bool(edge.tls_key):
        raise ConfigError("edge.tls_cert and edge.tls_key must be set together")

    i = _table(raw, "ingest")
    _known(i, "ingest", {"host", "port", "confirm_timeout_seconds"})
    ingest = IngestConfig(
        host=_ip(i.get("host", "127.0.0.1"), "ingest.host"),
        port=_port(i, "ingest.port", 50051),
        confirm_timeout_seconds=_pos_float(i, "ingest.confirm_timeout_seconds", 2.0),
    )
    q = _table(raw, "query")
    _known(q, "query", {"host", "port"})
    query = QueryConfig(host=_ip(q.get("host", "127.0.0.1"), "query.host"), port=_port(q, "query.port", 50052))
    p = _table(raw, "processor")
    _known(p, "processor", {"count", "prefetch", "operations", "retry", "python_path"})
    rt = _table(p, "retry")
    _known(rt, "processor.retry", {"max_attempts", "min_backoff_seconds", "max_backoff_seconds"})
    retry = RetryConfig(
        max_attempts=_pos_int(rt, "processor.retry.max_attempts", 8),
        min_backoff_seconds=_pos_float(rt, "processor.retry.min_backoff_seconds", 1.0),
        max_backoff_seconds=_pos_float(rt, "processor.retry.max_backoff_seconds", 600.0),
    )
    if retry.max_backoff_seconds < retry.min_backoff_seconds:
        raise ConfigError("processor.retry.max_backoff_seconds must not be less than min_backoff_seconds")
    if len(retry.levels_ms()) > 24:
        raise ConfigError("processor.retry: more than 24 delay levels; raise min_backoff_seconds")
    processor = ProcessorConfig(
        count=_pos_int(p, "processor.count", 1),
        prefetch=_pos_int(p, "processor.prefetch", 256),
        operations=tuple(_operation(o, j) for j, o in enumerate(p.get("operations", []))),
        retry=retry,
        python_path=tuple(_path(base, d) for d in p.get("python_path", [])),
    )
    op_names = [o.name for o in processor.operations]
    if len(set(op_names)) != len(op_names):
        raise ConfigError(f"processor.operations: duplicate operation names in {op_names}")

    r = _table(raw, "rabbitmq")
    _known(r, "rabbitmq", {"managed", "host", "port", "nodename", "url", "queue_prefix"})
    rabbit = RabbitConfig(
        managed=bool(r.get("managed", not r.get("url"))),
        host=_ip(r.get("host", "127.0.0.1"), "rabbitmq.host"),
        port=_port(r, "rabbitmq.port", 5682),
        nodename=str(r.get("nodename", "switchboard")),
        url=r.get("url") or None,
        queue_prefix=str(r.get("queue_prefix", "switchboard")),
    )
    c = _table(raw, "cassandra")
    _known(
        c,
        "cassandra",
        {
            "managed",
            "hosts",
            "port",
            "storage_port",
            "keyspace",
            "replication_factor",
            "heap",
            "protocol_version",
            "consistency",
            "serial_consistency",
            "bucket_seconds",
            "ttl_seconds",
        },
    )
    keyspace = str(c.get("keyspace", "switchboard"))
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,47}", keyspace):
        raise ConfigError(f"cassandra.keyspace: {keyspace!r} is not a valid keyspace name")
    consistency = str(c.get("consistency", "ONE")).upper()
    if consistency not in {"ONE", "LOCAL_ONE", "QUORUM", "LOCAL_QUORUM", "ALL"}:
        raise ConfigError(f"cassandra.consistency: unsupported level {consistency!r}")
    serial = str(c.get("serial_consistency", "SERIAL")).upper()
    if serial not in {"SERIAL", "LOCAL_SERIAL"}:
        raise ConfigError(f"cassandra.serial_consistency: must be SERIAL or LOCAL_SERIAL, got {serial!r}")
    cass = CassandraConfig(
        managed=bool(c.get("managed", True)),
        hosts=tuple(str(h) for h in c.get("hosts", ["127.0.0.1"])),
        port=_port(c, "cassandra.port", 9142),
        storage_port=_port(c, "cassandra.storage_port", 7100),
        keyspace=keyspace,
        replication_factor=_pos_int(c, "cassandra.replication_factor", 1),
        heap=str(c.get("heap", "1g")),
        protocol_version=c.get("protocol_version", 3) or None,
        consistency=consistency,
        serial_consistency=serial,
        bucket_seconds=_pos_int(c, "cassandra.bucket_seconds", 3600),
        ttl_seconds=_pos_int(c, "cassandra.ttl_seconds", 30 * 24 * 3600),
    )
    if cass.ttl_seconds < 24 * 3600:
        raise ConfigError("cassandra.ttl_seconds: must be at least one day (events are kept for audit and replay)")

    sources = tuple(_source(s, idx, base, edge.max_body_bytes) for idx, s in enumerate(raw.get("sources", [])))
    names = [s.name for s in sources]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ConfigError(f"sources: duplicate source name(s) {sorted(dupes)}")
    if edge.default_source and edge.default_source not in names:
        raise ConfigError(f"edge.default_source: no source named {edge.default_source!r}")
    return PlatformConfig(
        path=path,
        data_dir=data_dir,
        log_level=log_level,
        edge=edge,
        ingest=ingest,
        query=query,
        processor=processor,
        rabbitmq=rabbit,
        cassandra=cass,
        sources=sources,
    )


def _source(s: Any, idx: int, base: Path, edge_max: int) -> SourceConfig:
    where = f"sources[{idx}]"
    if not isinstance(s, Mapping):
        raise ConfigError(f"{where}: must be a table")
    _known(s, where, {"name", "scheme", "secrets", "options", "max_body_bytes", "allow_cidrs", "rate_limit"})
    name = s.get("name")
    if not isinstance(name, str) or not SOURCE_NAME.match(name):
        raise ConfigError(f"{where}.name: {name!r} must match {SOURCE_NAME.pattern}")
    where = f"source {name!r}"
    scheme = s.get("scheme")
    if scheme not in SCHEMES:
        raise ConfigError(f"{where}: scheme {scheme!r} is unknown (one of {', '.join(SCHEMES)}); refusing to start")
    refs = s.get("secrets")
    if not isinstance(refs, list) or not refs:
        raise ConfigError(f"{where}: no secrets configured; a source is never accepted unverified")
    secrets = tuple(_secret_ref(ref, f"{where}.secrets[{j}]", base) for j, ref in enumerate(refs))
    options = s.get("options", {})
    if not isinstance(options, Mapping):
        raise ConfigError(f"{where}.options: must be a table")
    cidrs = s.get("allow_cidrs", [])
    for cidr in cidrs:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ConfigError(f"{where}.allow_cidrs: {cidr!r} is not a CIDR") from None
    max_body = _pos_int(s, f"{where}.max_body_bytes", edge_max)
    return SourceConfig(
        name=name,
        scheme=scheme,
        secrets=secrets,
        options=dict(options),
        max_body_bytes=max_body,
        allow_cidrs=tuple(str(c) for c in cidrs),
        rate_limit=_rate_limit(s.get("rate_limit"), f"{where}.rate_limit"),
    )


def _operation(o: Any, idx: int) -> OperationConfig:
    where = f"processor.operations[{idx}]"
    if not isinstance(o, Mapping):
        raise ConfigError(f"{where}: must be a table")
    _known(o, where, {"name", "call", "event_types", "sources", "timeout_seconds"})
    name, call = o.get("name"), o.get("call")
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]{0,62}", name):
        raise ConfigError(f"{where}.name: {name!r} must be a lower_snake_case name")
    if not isinstance(call, str) or not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", call):
        raise ConfigError(f"{where}.call: {call!r} must be 'package.module:function'")
    return OperationConfig(
        name=name,
        call=call,
        event_types=tuple(str(t) for t in o.get("event_types", ["*"])),
        sources=tuple(str(t) for t in o.get("sources", [])),
        timeout_seconds=_pos_float(o, f"{where}.timeout_seconds", 10.0),
    )


def _secret_ref(ref: Any, where: str, base: Path) -> SecretRef:
    if not isinstance(ref, Mapping):
        raise ConfigError(f'{where}: a secret is referenced as {{ env = "VAR" }} or {{ file = "path" }}')
    _known(ref, where, {"env", "file", "generate"})
    if bool(ref.get("env")) == bool(ref.get("file")):
        raise ConfigError(f"{where}: give exactly one of env or file (literal secrets are not accepted)")
    if ref.get("generate") not in (None, "whsec", "hex"):
        raise ConfigError(f"{where}.generate: must be 'whsec' or 'hex'")
    if ref.get("env"):
        return SecretRef(env=str(ref["env"]))
    return SecretRef(file=_path(base, ref["file"]), generate=ref.get("generate"))


def _rate_limit(v: Any, where: str) -> RateLimit | None:
    if v is None:
        return None
    if not isinstance(v, Mapping):
        raise ConfigError(f"{where}: must be a table {{ requests = N, per_seconds = S }}")
    _known(v, where, {"requests", "per_seconds"})
    return RateLimit(requests=_pos_int(v, f"{where}.requests", 0), per_seconds=_pos_int(v, f"{where}.per_seconds", 1))


def _table(raw: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    v = raw.get(key, {})
    if not isinstance(v, Mapping):
        raise ConfigError(f"[{key}] must be a table")
    return v


def _known(t: Mapping[str, Any], where: str, keys: set[str]) -> None:
    unknown = set(t) - keys
    if unknown:
        raise ConfigError(f"{where or 'top level'}: unknown key(s) {sorted(unknown)}")


def _path(base: Path, v: Any) -> Path:
    p = Path(str(v)).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def _ip(v: Any, where: str) -> str:
    try:
        ipaddress.ip_address(str(v))
    except ValueError:
        raise ConfigError(f"{where}: {v!r} is not an IP address") from None
    return str(v)


def _port(t: Mapping[str, Any], where: str, default: int) -> int:
    v = t.get(where.rsplit(".", 1)[-1], default)
    if not isinstance(v, int) or not 0 < v < 65536:
        raise ConfigError(f"{where}: {v!r} is not a TCP port")
    return v


def _pos_int(t: Mapping[str, Any], where: str, default: int) -> int:
    v = t.get(where.rsplit(".", 1)[-1], default)
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise ConfigError(f"{where}: must be a positive integer, got {v!r}")
    return v


def _pos_float(t: Mapping[str, Any], where: str, default: float) -> float:
    v = t.get(where.rsplit(".", 1)[-1], default)
    if not isinstance(v, int | float) or isinstance(v, bool) or v <= 0:
        raise ConfigError(f"{where}: must be a positive number, got {v!r}")
    return float(v)
