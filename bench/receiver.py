"""A native webhook receiver for the delivery benchmark: a second Envoy with an HTTPS listener (the local
stack's server certificate, so the delivery workers verify it against the local CA) that answers every
request ``200 ok`` itself (``direct_response``, once the whole body is read) and writes one JSON access-log
line per request: when it arrived (``%START_TIME%``, microseconds), the path (one per subscription) and the
Standard Webhooks ``webhook-id`` (the delivery id). A Python receiver would compete with the platform for
the two cores and slow down before the delivery workers do; Envoy answers a 5 KB POST in a few tens of
microseconds of CPU. With ``slow_ms``, paths under ``/slow/`` are answered that much later (Envoy's fault
filter delays the request before the answer): a slow endpoint beside fast ones.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from switchboard_devstack.envoy import EnvoyProcess
from switchboard_devstack.ports import free_port
from switchboard_devstack.tls import ensure_local_tls

__all__ = ["SLOW_PREFIX", "Arrival", "ReceiverEnvoy", "receiver_config"]

HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


@dataclass(frozen=True)
class Arrival:
    at: float  # epoch seconds, when the request's first byte arrived
    path: str
    webhook_id: str
    status: int
    bytes_received: int


FAULT_TYPE = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
SLOW_PREFIX = "/slow/"


def receiver_config(
    port: int, admin_port: int, cert: Path, key: Path, access_log: Path, slow_ms: int = 0
) -> dict[str, Any]:
    fields = {
        "t": "%START_TIME(%s.%6f)%",
        "path": "%REQ(:PATH)%",
        "id": "%REQ(WEBHOOK-ID)%",
        "status": "%RESPONSE_CODE%",
        "bytes": "%BYTES_RECEIVED%",
    }
    answer = {"status": 200, "body": {"inline_string": "ok"}}
    routes: list[dict[str, Any]] = [{"match": {"prefix": "/"}, "direct_response": answer}]
    filters: list[dict[str, Any]] = []
    if slow_ms > 0:
        delay = {"fixed_delay": f"{slow_ms / 1000:.3f}s", "percentage": {"numerator": 100, "denominator": "HUNDRED"}}
        slow = {"envoy.filters.http.fault": {"@type": FAULT_TYPE, "delay": delay}}
        routes.insert(0, {"match": {"prefix": SLOW_PREFIX}, "direct_response": answer, "typed_per_filter_config": slow})
        filters.append({"name": "envoy.filters.http.fault", "typed_config": {"@type": FAULT_TYPE}})
    hcm = {
        "@type": HCM_TYPE,
        "stat_prefix": "receiver",
        "codec_type": "AUTO",
        "access_log": [
            {
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                    "path": str(access_log),
                    "log_format": {"json_format": fields},
                },
            }
        ],
        "route_config": {"virtual_hosts": [{"name": "any", "domains": ["*"], "routes": routes}]},
        "http_filters": [
            *filters,
            {  # the whole body is read before the answer, as a real receiver does (and keep-alive holds)
                "name": "envoy.filters.http.buffer",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
                    "max_request_bytes": 4194304,
                },
            },
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
            },
        ],
    }
    tls = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "common_tls_context": {
                "alpn_protocols": ["h2", "http/1.1"],
                "tls_certificates": [
                    {"certificate_chain": {"filename": str(cert)}, "private_key": {"filename": str(key)}}
                ],
            },
        },
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "receiver",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [
                        {
                            "transport_socket": tls,
                            "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}],
                        }
                    ],
                }
            ]
        },
    }


class ReceiverEnvoy(EnvoyProcess):
    """The receiver on a free port; ``arrivals()`` reads the access log from where the last call stopped.
    Envoy flushes its access log every ``flush_ms`` (``--file-flush-interval-msec``; its default is 10 s)."""

    def __init__(
        self, base_dir: Path, tls_dir: Path, *, flush_ms: int = 200, concurrency: int = 1, slow_ms: int = 0
    ) -> None:
        self.port = free_port()
        self.slow_ms = slow_ms
        admin_port = free_port()
        self.access_log = Path(base_dir).absolute() / "receiver-access.log"
        self.tls_dir = tls_dir
        self.flush_ms = flush_ms
        super().__init__(Path(base_dir) / "receiver.json", base_dir, admin_port, concurrency=concurrency)
        self.name = "receiver-envoy"
        self._offset = 0

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def prepare(self) -> None:
        _, cert, key = ensure_local_tls(self.tls_dir)
        config = receiver_config(self.port, self.admin_port, cert, key, self.access_log, self.slow_ms)
        self.config_path.write_text(json.dumps(config, indent=1))

    def command(self) -> list[str]:
        return [*super().command(), "--file-flush-interval-msec", str(self.flush_ms)]

    def arrivals(self) -> Iterator[Arrival]:
        """The requests logged since the previous call (complete lines only)."""
        if not self.access_log.exists():
            return
        with open(self.access_log, "rb") as fh:
            fh.seek(self._offset)
            chunk = fh.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self._offset += len(complete)
        for line in complete.splitlines():
            yield parse_arrival(line)


def parse_arrival(line: bytes) -> Arrival:
    row = json.loads(line)
    return Arrival(
        at=float(row["t"]),
        path=str(row["path"]),
        webhook_id=str(row.get("id") or ""),
        status=int(row.get("status") or 0),
        bytes_received=int(row.get("bytes") or 0),
    )
