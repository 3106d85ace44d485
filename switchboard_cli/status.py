"""``switchboard status``: one screen on the running platform.

Read from every process's metrics endpoint (twice, ``--window`` seconds apart: rates and p99s are over that
window; a p99 marked ``*`` is since the process started, when the window saw no event), gRPC health checks of
the gRPC services, Envoy's ``/ready``, an AMQP handshake with RabbitMQ and a TCP connect to Cassandra. When
Prometheus runs (``stack up --with-prometheus``) its pending and firing alerts are listed too.

The processes' metrics addresses come from ``<data_dir>/metrics/<job>.json``, written by the local stack,
else from the ``[metrics]`` ports of the configuration.
"""

from __future__ import annotations

import argparse
import json
import math
import socket
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from switchboard.addresses import host_port
from switchboard.config import PlatformConfig
from switchboard_cli.args import number
from switchboard_devstack.prometheus import read_targets
from switchboard_devstack.rabbitmq import amqp_handshake

TIMEOUT = 2.0
Labels = Mapping[str, str]


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "status", help="one screen: health, rates, queue depths, dead letters, p99s, alerts", parents=[common]
    )
    p.add_argument(
        "--window",
        type=number(0, 3600, above_low=True),
        default=2.0,
        help="seconds between the two reads of the metrics",
    )
    p.add_argument("--prometheus", default=None, help="Prometheus URL for alerts (default: the stack's, if any)")
    p.add_argument("--json", action="store_true", help="print the snapshot as JSON")


def run(cfg: PlatformConfig, args: argparse.Namespace) -> int:
    snap = collect(cfg, window=args.window, prometheus=args.prometheus)
    print(json.dumps(snap, indent=2) if args.json else render(snap))
    return 0 if all(c["ok"] for c in snap["components"]) else 1


# -- reading metrics -------------------------------------------------------------------------------------------
@dataclass
class Samples:
    """Every sample of every process read at one moment: (name, labels, value)."""

    rows: list[tuple[str, dict[str, str], float]] = field(default_factory=list)

    def add(self, text: str, process: str) -> None:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                self.rows.append((s.name, {**s.labels, "process": process}, float(s.value)))

    def select(self, name: str, **match: str) -> Iterable[tuple[dict[str, str], float]]:
        for n, labels, value in self.rows:
            if n == name and all(labels.get(k) == v for k, v in match.items()):
                yield labels, value

    def total(self, name: str, **match: str) -> float:
        return sum(v for _, v in self.select(name, **match))

    def by(self, name: str, label: str, **match: str) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for labels, v in self.select(name, **match):
            out[labels.get(label, "")] += v
        return dict(out)

    def buckets(self, name: str, **match: str) -> dict[float, float]:
        """Cumulative counts by upper bound, summed over processes and other labels."""
        out: dict[float, float] = defaultdict(float)
        for labels, v in self.select(f"{name}_bucket", **match):
            out[float(labels["le"])] += v
        return dict(out)


def increase(
    first: Samples, second: Samples, both: Collection[str], name: str, label: str, **match: str
) -> dict[str, float]:
    """Per value of ``label``: how much a counter grew between the two reads, process by process, over the
    processes read both times (``both``); a series lower the second time (its process restarted) counts from
    zero. Totals summed over processes first and differenced after gave a process missing one read, or
    restarted, as millions per second or as a negative rate made zero (found in review)."""
    before = {
        (labels["process"], tuple(sorted(labels.items()))): v
        for labels, v in first.select(name, **match)
        if labels["process"] in both
    }
    out: dict[str, float] = defaultdict(float)
    for labels, v in second.select(name, **match):
        if labels["process"] not in both:
            continue
        then = before.get((labels["process"], tuple(sorted(labels.items()))), 0.0)
        out[labels.get(label, "")] += v - then if v >= then else v
    return dict(out)


def quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """``histogram_quantile`` over cumulative buckets (linear within a bucket); None without observations."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for le in bounds:
        count = buckets[le]
        if count >= rank:
            if math.isinf(le):
                return lower
            return lower + (le - lower) * ((rank - below) / (count - below) if count > below else 1.0)
        lower, below = le, count
    return lower


def scrape(address: str) -> str | None:
    try:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=TIMEOUT) as resp:
            return str(resp.read().decode())
    except (OSError, urllib.error.URLError):
        return None


def metrics_targets(cfg: PlatformConfig) -> dict[str, list[tuple[str, str]]]:
    """job -> [(process, address)]: what the stack wrote, else the configured fixed ports."""
    written = read_targets(cfg.data_dir / "metrics")
    if written:
        return written
    m = cfg.metrics
    out: dict[str, list[tuple[str, str]]] = {}
    for job, count in (("ingest", 1), ("query", 1), ("control", 1), ("processor", cfg.processor.count)):
        for i in range(count):
            if m.port(job, i):
                name = f"{job}-{i}" if job == "processor" else job
                out.setdefault(job, []).append((name, host_port(m.host, m.port(job, i))))
    for i in range(cfg.delivery.count):
        if m.port("delivery", i):
            out.setdefault("delivery", []).append((f"delivery-{i}", host_port(m.host, m.port("delivery", i))))
    return out


# -- health ----------------------------------------------------------------------------------------------------
def grpc_health(address: str, service: str) -> str:
    try:
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT
            )
            return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
    except grpc.RpcError as exc:
        return "UNREACHABLE" if exc.code() == grpc.StatusCode.UNAVAILABLE else str(exc.code().name)


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as resp:  # noqa: S310 - loopback http only
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except (OSError, urllib.error.URLError):
        return 0, b""


def tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT):
            return True
    except OSError:
        return False


def prometheus_url(cfg: PlatformConfig) -> str | None:
    """The stack's Prometheus: the configured port, else the one its generated configuration scrapes itself on."""
    if cfg.metrics.prometheus_port:
        return f"http://127.0.0.1:{cfg.metrics.prometheus_port}"
    try:
        conf = json.loads((cfg.data_dir / "prometheus" / "prometheus.yml").read_text())
        for job in conf["scrape_configs"]:
            if job["job_name"] == "prometheus":
                return f"http://{job['static_configs'][0]['targets'][0]}"
    except (OSError, ValueError, KeyError, IndexError):
        pass
    return None


# -- the snapshot ----------------------------------------------------------------------------------------------
def collect(cfg: PlatformConfig, *, window: float = 2.0, prometheus: str | None = None) -> dict[str, Any]:
    targets = metrics_targets(cfg)
    processes = [(job, name, address) for job, procs in targets.items() for name, address in procs]
    first, second = Samples(), Samples()
    seen: dict[str, bool] = {}
    for _job, name, address in processes:
        text = scrape(address)
        seen[name] = text is not None
        if text is not None:
            first.add(text, name)
    started = time.monotonic()
    time.sleep(window)
    for _job, name, address in processes:
        text = scrape(address)
        seen[name] = seen[name] and text is not None
        if text is not None:
            second.add(text, name)
    elapsed = max(time.monotonic() - started, 1e-3)
    both = {name for name, ok in seen.items() if ok}

    def rate(name: str, **match: str) -> float:
        return sum(increase(first, second, both, name, "", **match).values()) / elapsed

    def rates_by(name: str, label: str, **match: str) -> dict[str, float]:
        return {k: round(v / elapsed, 2) for k, v in increase(first, second, both, name, label, **match).items()}

    def counts_by(name: str, label: str) -> dict[str, dict[str, float]]:
        """Per value of ``label``: the rate over the window and the total since the processes started."""
        rates = rates_by(name, label)
        return {k: {"per_second": rates.get(k, 0.0), "total": v} for k, v in second.by(name, label).items()}

    def p99(name: str, **match: str) -> dict[str, Any]:
        now = second.buckets(name, **match)
        delta = {float(le): v for le, v in increase(first, second, both, f"{name}_bucket", "le", **match).items()}
        q = quantile(0.99, delta)
        if q is not None:
            return {"seconds": q, "since_start": False}
        return {"seconds": quantile(0.99, now), "since_start": True}

    components = _components(cfg, targets, seen, second)
    depths: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    per_queue: dict[tuple[str, str, str], float] = {}
    for labels, v in second.select("switchboard_queue_ready_messages"):
        key = (labels["stream"], labels["queue"], labels["kind"])
        per_queue[key] = max(per_queue.get(key, 0.0), v)  # every consumer of a stream reports its queues
    for (stream, _queue, kind), v in per_queue.items():
        depths[stream][kind] += v
    rpc: dict[str, dict[str, Any]] = {}
    for labels, count in second.select("grpc_server_handling_seconds_count"):
        method = f"{labels['grpc_service'].rsplit('.', 1)[-1]}/{labels['grpc_method']}"
        if method.startswith("Health/") or method in rpc or count == 0:  # methods never called are left out
            continue
        m = {"grpc_service": labels["grpc_service"], "grpc_method": labels["grpc_method"]}
        rpc[method] = {
            "per_second": round(rate("grpc_server_handled_total", **m), 2),
            "errors_per_second": round(
                sum(v for k, v in rates_by("grpc_server_handled_total", "grpc_code", **m).items() if k != "OK"), 2
            ),
            "total": second.total("grpc_server_handled_total", **m),
            "errors": sum(v for k, v in second.by("grpc_server_handled_total", "grpc_code", **m).items() if k != "OK"),
            "p99": p99("grpc_server_handling_seconds", **m),
        }
    snap: dict[str, Any] = {
        "window_seconds": round(elapsed, 2),
        "components": components,
        "ingest": {
            "accepted": counts_by("switchboard_ingest_accepted_total", "source"),
            "rejected": counts_by("switchboard_ingest_rejected_total", "reason"),
        },
        "processor": counts_by("switchboard_processor_events_total", "outcome"),
        "delivery": counts_by("switchboard_delivery_deliveries_total", "outcome"),
        "rpc": rpc,
        "p99": {
            "end_to_end": p99("switchboard_processor_e2e_latency_seconds"),
            "delivery": p99("switchboard_delivery_latency_seconds"),
            "store_statement": p99("switchboard_store_statement_seconds"),
            "broker_confirm": p99("switchboard_broker_confirm_seconds"),
            "operation": p99("switchboard_operation_duration_seconds"),
        },
        "queues": {stream: dict(kinds) for stream, kinds in depths.items()},
        "dead_letters_recorded": second.by("switchboard_dead_letters_total", "stream"),
        "in_flight": second.by("switchboard_worker_in_flight", "worker"),
        "alerts": None,
    }
    url = prometheus or prometheus_url(cfg)
    if url:
        status, body = http_get(f"{url.rstrip('/')}/api/v1/alerts")
        if status == 200:
            try:
                snap["alerts"] = [
                    {"name": a["labels"].get("alertname", "?"), "state": a["state"], "labels": a["labels"]}
                    for a in json.loads(body)["data"]["alerts"]
                ]
                snap["prometheus"] = url
            except (ValueError, KeyError, TypeError, AttributeError):  # not Prometheus' alerts API
                snap["prometheus_error"] = f"{url} answered something that is not Prometheus' alerts list"
    return snap


def _components(
    cfg: PlatformConfig, targets: Mapping[str, list[tuple[str, str]]], seen: Mapping[str, bool], samples: Samples
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    grpc_services = {
        "ingest": (cfg.ingest.host, cfg.ingest.port, "webhooks.v1.Ingest"),
        "query": (cfg.query.host, cfg.query.port, "webhooks.v1.Query"),
        "control": (cfg.control.host, cfg.control.port, "webhooks.v1.Subscriptions"),
    }
    for job in ("ingest", "query", "control", "processor", "delivery"):
        procs = targets.get(job, [])
        grpc_target = grpc_services.get(job)
        health = grpc_health(host_port(grpc_target[0], grpc_target[1]), grpc_target[2]) if grpc_target else None
        if not procs and grpc_target:
            if job == "control" and health == "UNREACHABLE":
                continue  # outbound delivery not set up
            out.append(
                {
                    "name": job,
                    "address": host_port(grpc_target[0], grpc_target[1]),
                    "health": health,
                    "metrics": None,
                    "ok": health == "SERVING",
                }
            )
        for name, address in procs:
            up = seen.get(name, False)
            ok = up and (health in (None, "SERVING"))
            detail = health or ("up" if up else "DOWN")
            out.append(
                {"name": name, "address": address, "health": detail, "metrics": "up" if up else "down", "ok": ok}
            )
    status, body = http_get(f"http://127.0.0.1:{cfg.edge.admin_port}/ready")
    live = status == 200 and body.strip() == b"LIVE"
    out.append(
        {
            "name": "envoy",
            "address": f"127.0.0.1:{cfg.edge.admin_port}",
            "health": "LIVE" if live else "DOWN",
            "metrics": None,
            "ok": live,
        }
    )
    r = cfg.rabbitmq
    # An existing broker is probed where the services connect (its url), not on the managed node's host:port.
    host, port = r.endpoint()
    amqp = amqp_handshake(host, port, "guest", "guest") if r.url is None else tcp_open(host, port)
    out.append(
        {
            "name": "rabbitmq",
            "address": host_port(host, port),
            "health": "up" if amqp else "DOWN",
            "metrics": None,
            "ok": amqp,
        }
    )
    c = cfg.cassandra
    cql = tcp_open(c.hosts[0], c.port)
    out.append(
        {
            "name": "cassandra",
            "address": host_port(c.hosts[0], c.port),
            "health": "up" if cql else "DOWN",
            "metrics": None,
            "ok": cql,
        }
    )
    return out


# -- rendering -------------------------------------------------------------------------------------------------
def _ms(p: Mapping[str, Any]) -> str:
    s = p.get("seconds")
    if s is None:
        return "-"
    return f"{s * 1000:.1f} ms{'*' if p.get('since_start') else ''}"


def _rates(values: Mapping[str, Mapping[str, float]]) -> str:
    """``processed 12.5/s (1,204)``: rate over the window (total since start) of every value seen."""
    shown = [(k, v) for k, v in sorted(values.items()) if v["total"] > 0]
    return "  ".join(f"{k} {v['per_second']:g}/s ({v['total']:,.0f})" for k, v in shown) or "-"


def render(snap: Mapping[str, Any]) -> str:
    lines = [
        f"Switchboard status   (rates and p99 over the last {snap['window_seconds']:g} s; (n) and * = since start)",
        "",
    ]
    lines.append("components")
    for c in snap["components"]:
        mark = "ok " if c["ok"] else "!! "
        metrics = f"metrics {c['metrics']}" if c["metrics"] else ""
        lines.append(f"  {mark}{c['name']:<13} {c['address']:<21} {c['health']:<12} {metrics}")
    ing = snap["ingest"]
    lines += [
        "",
        "rates",
        f"  ingest accepted    {_rates(ing['accepted'])}",
        f"  ingest rejected    {_rates(ing['rejected'])}",
        f"  processor          {_rates(snap['processor'])}",
        f"  delivery           {_rates(snap['delivery'])}",
    ]
    width = max((len(m) for m in snap["rpc"]), default=0)
    for method, r in sorted(snap["rpc"].items()):
        lines.append(
            f"  rpc {method:<{width}}  {r['per_second']:g}/s ({r['total']:,.0f})  "
            f"errors {r['errors_per_second']:g}/s ({r['errors']:,.0f})  p99 {_ms(r['p99'])}"
        )
    p = snap["p99"]
    lines += [
        "",
        "p99",
        f"  end-to-end {_ms(p['end_to_end'])}   operation {_ms(p['operation'])}   store {_ms(p['store_statement'])}"
        f"   broker confirm {_ms(p['broker_confirm'])}   delivery {_ms(p['delivery'])}",
        "",
        "queues (ready messages)",
    ]
    for stream, kinds in sorted(snap["queues"].items()):
        lines.append(
            f"  {stream:<12} work {kinds.get('work', 0):g}   retry {kinds.get('retry', 0):g}   "
            f"dead {kinds.get('dead', 0):g}"
        )
    if not snap["queues"]:
        lines.append("  (no consumer reports them)")
    recorded = snap["dead_letters_recorded"]
    lines.append(
        f"  dead letters recorded since start: {_counts(recorded) or '-'}   in flight: "
        f"{_counts(snap['in_flight']) or '-'}"
    )
    lines.append("")
    if snap["alerts"] is None and snap.get("prometheus_error"):
        lines.append(f"alerts: {snap['prometheus_error']}")
    elif snap["alerts"] is None:
        lines.append("alerts: Prometheus not running (switchboard stack up --with-prometheus)")
    else:
        active = snap["alerts"]
        lines.append(f"alerts ({snap.get('prometheus')}): {'none' if not active else ''}")
        for a in active:
            extra = ", ".join(f"{k}={v}" for k, v in sorted(a["labels"].items()) if k not in ("alertname", "severity"))
            lines.append(f"  {a['state']:<8} {a['name']}  {a['labels'].get('severity', '')}  {extra}")
    return "\n".join(lines)


def _counts(values: Mapping[str, float]) -> str:
    return "  ".join(f"{k} {v:g}" for k, v in sorted(values.items()))
