"""Builds a test configuration on free ports and runs the real stack (RabbitMQ, Cassandra, Envoy and the
services) through the same ``Stack`` that ``switchboard stack up`` uses."""

from __future__ import annotations

import base64
import os
import re
import secrets
import tomllib
from collections.abc import Sequence
from pathlib import Path

from switchboard.config import PlatformConfig, load_config
from switchboard_devstack.ports import free_port

REPO = Path(__file__).resolve().parent.parent
# Retry policy of the test stack: 3 attempts, short delays (levels 200 and 400 ms).
MAX_ATTEMPTS = 3

STRIPE_SECRET = "whsec_" + secrets.token_hex(16)
HMAC_SECRET = secrets.token_hex(32)
GITHUB_SECRET = secrets.token_hex(20)
SHOPIFY_SECRET = secrets.token_hex(24)
STANDARD_SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
# Source name -> (scheme, secret) for the per-provider end-to-end tests.
PROVIDER_SOURCES = {
    "gh": ("github", GITHUB_SECRET),
    "shopify": ("shopify", SHOPIFY_SECRET),
    "stdhooks": ("standard_webhooks", STANDARD_SECRET),
}


def write_test_config(
    root: Path,
    *,
    processors: int = 1,
    bucket_seconds: int = 60,
    scrape_interval: float = 5.0,
    trace_percent: float = 100.0,
    overrides: Sequence[str] = (),
) -> PlatformConfig:
    """A configuration on free ports under ``root``. Metrics: every process on a free port the stack picks (port
    0), RabbitMQ's on a free port of its own, Prometheus (when the test asks for it) scraping every
    ``scrape_interval`` seconds. Traces: the local receiver on a free port, ``trace_percent`` of the requests
    traced (all by default, so that a test can look at any event's trace)."""
    root.mkdir(parents=True, exist_ok=True)
    # Secret files are the owner's only: the services refuse one open to others.
    (root / "stripe.secret").write_text(STRIPE_SECRET + "\n")
    (root / "hmac.secret").write_text(HMAC_SECRET + "\n")
    os.chmod(root / "stripe.secret", 0o600)
    os.chmod(root / "hmac.secret", 0o600)
    provider_sources = ""
    for name, (scheme, secret) in PROVIDER_SOURCES.items():
        (root / f"{name}.secret").write_text(secret + "\n")
        os.chmod(root / f"{name}.secret", 0o600)
        provider_sources += f"""
[[sources]]
name = "{name}"
scheme = "{scheme}"
secrets = [{{ file = "{name}.secret" }}]
"""
    suffix = secrets.token_hex(3)
    text = f"""
[platform]
data_dir = "var"
log_level = "INFO"

[edge]
https_port = {free_port()}
admin_port = {free_port()}
default_source = "shop"
max_body_bytes = 262144

[ingest]
port = {free_port()}
confirm_timeout_seconds = 2.0

[query]
port = {free_port()}

[control]
port = {free_port()}

[delivery]
count = 1
partitions = 4
breaker_failures = 4
breaker_cooldown_seconds = 5
allow_http_hosts = ["127.0.0.1", "localhost"]
allow_networks = ["127.0.0.0/8", "::1/128"]
secrets_key = {{ file = "delivery.key", generate = "fernet" }}
ca_file = "var/tls/ca.pem"

[processor]
count = {processors}
python_path = ["{REPO}"]
stats_interval_seconds = 1

[processor.retry]
max_attempts = {MAX_ATTEMPTS}
min_backoff_seconds = 0.2
max_backoff_seconds = 0.4

[[processor.operations]]
name = "log"
call = "processor_service.builtin:log_event"

[[processor.operations]]
name = "entity"
call = "processor_service.builtin:record_entity"

[[processor.operations]]
name = "deliver"
call = "processor_service.fanout:deliver"

[[processor.operations]]
name = "flaky"
call = "tests.e2e.ops:flaky"
event_types = ["test.flaky"]

[[processor.operations]]
name = "pause"
call = "tests.e2e.ops:pause"
event_types = ["test.slow"]

[[processor.operations]]
name = "fail_first"
call = "tests.e2e.ops:fail_first"
event_types = ["test.crash_after_forward"]

[[processor.operations]]
name = "gated"
call = "tests.e2e.ops:gated"
event_types = ["test.gated"]

[[processor.operations]]
name = "poison"
call = "tests.e2e.ops:poison"
event_types = ["test.poison"]

[rabbitmq]
port = {free_port()}
nodename = "sbtest{suffix}"
queue_prefix = "switchboard"

[metrics]
rabbitmq_port = {free_port()}
scrape_interval_seconds = {scrape_interval}

[tracing]
endpoint = "local"
local_port = {free_port()}
sample_percent = {trace_percent}

[cassandra]
port = {free_port()}
storage_port = {free_port()}
heap = "768m"
bucket_seconds = {bucket_seconds}

[[sources]]
name = "shop"
scheme = "stripe"
secrets = [{{ file = "stripe.secret" }}]
max_body_bytes = 65536
event_types = [
    "invoice.created", "invoice.paid", "invoice.payment_failed", "charge.succeeded", "test.flaky", "test.slow",
    "test.poison", "test.crash_after_forward", "test.delivery", "test.gated",
]

[[sources]]
name = "generic"
scheme = "hmac"
secrets = [{{ file = "hmac.secret" }}]
options = {{ header = "X-Signature", prefix = "sha256=", id_header = "X-Event-Id", type_header = "X-Event-Type" }}
{provider_sources}
"""
    path = root / "switchboard.toml"
    path.write_text(override_toml(text, overrides))
    return load_config(path)


def override_toml(text: str, overrides: Sequence[str]) -> str:
    """``text`` with each ``table.key=value`` (``value`` a TOML literal) set: the key's line in that table is
    replaced, or the key added at the table's top; a table ``text`` lacks is appended. Keys whose value spans
    several lines cannot be replaced. ``ValueError`` for a malformed item or a result that is not TOML."""
    lines = text.split("\n")
    for item in overrides:
        name, eq, value = item.partition("=")
        table, dot, key = name.strip().rpartition(".")
        if not eq or not dot or not table or not key or not value.strip():
            raise ValueError(f"{item!r}: expected table.key=value")
        line = f"{key} = {value.strip()}"
        start = next((i for i, text_line in enumerate(lines) if text_line.strip() == f"[{table}]"), None)
        if start is None:
            lines += ["", f"[{table}]", line]
            continue
        end = next((i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")), len(lines))
        same_key = re.compile(rf"\s*{re.escape(key)}\s*=")
        lines = [text_line for i, text_line in enumerate(lines) if not (start < i < end and same_key.match(text_line))]
        lines.insert(start + 1, line)
    out = "\n".join(lines)
    try:
        tomllib.loads(out)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{list(overrides)}: the configuration is no longer TOML ({exc})") from None
    return out
