"""Where a phase's time went, from the services' own Prometheus histograms: a scrape of every service process
of the stack (``ServiceProcess.metrics_port``) before and after the phase, the difference of each histogram's
buckets, and its quantiles interpolated inside the buckets (as PromQL's ``histogram_quantile`` does).

Stages (name → family and labels, summed over the processes that export it):

* ``edge``: Envoy's ``envoy_http_downstream_rq_time`` of the public listener (``webhooks``): from a request's
  first byte to its answer's last, TLS and transcoding included, as Envoy sees it (its admin endpoint,
  ``/stats/prometheus``, in milliseconds). HTTP p99 minus this is the client (wrk) and the kernel. Envoy merges
  its histograms at each stats flush (every 5 s by default), so the last seconds of a phase may count in the
  next phase's line (after a 20 s ingest ceiling, ~700 of its requests showed in the drain's).
* ``upstream``: Envoy's ``envoy_cluster_upstream_rq_time`` of the ``ingest`` cluster: the gRPC call to ingest.
  Minus ``ingest rpc``: gRPC's transport and ingest's event loop before and after the handler.
* ``ingest rpc``: ``grpc_server_handling_seconds`` of ``Ingest/Receive``: the ingest service's own time for a
  request, from the RPC's start to its status (verify, publish, confirm). HTTP p99 minus this is Envoy, the
  network and waiting to be scheduled.
* ``confirm``: ``switchboard_broker_confirm_seconds``, exchanges ``<prefix>.events*``: publish → RabbitMQ's
  confirm (the quorum queue's fsync and replication), inside the ingest RPC (the processors' retry copies to
  the same stream count too; the bench sends none that fail).
* ``batch``: ``switchboard_worker_batch_seconds`` of the processors: deciding a batch (reads, operations,
  commit).
* ``cql read`` / ``cql commit``: ``switchboard_store_statement_seconds``: every prepared statement, and the
  batches (``batch``) that commit, of every service (under the bench's load nearly all the processors').
* ``e2e``: ``switchboard_processor_e2e_latency_seconds``: arrival at ingest → outcome committed.

Buckets are coarse past 50 ms (the services': 0.05, 0.1, 0.25, 0.5 s; Envoy's: 5, 10, 25, 50, 100, 250, 500 ms), so
a p99 reads as "in this bucket", not to the millisecond; the count says how many observations a quantile rests
on.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

# (histogram family, predicate on its labels, seconds per unit of the family)
Selector = tuple[str, Callable[[dict[str, str]], bool], float]
MS = 0.001  # Envoy's histograms are in milliseconds

STAGES: dict[str, Selector] = {
    "edge": ("envoy_http_downstream_rq_time", lambda lb: lb.get("envoy_http_conn_manager_prefix") == "webhooks", MS),
    "upstream": ("envoy_cluster_upstream_rq_time", lambda lb: lb.get("envoy_cluster_name") == "ingest", MS),
    "ingest rpc": ("grpc_server_handling_seconds", lambda lb: lb.get("grpc_method") == "Receive", 1.0),
    "confirm": ("switchboard_broker_confirm_seconds", lambda lb: ".events" in lb.get("exchange", ""), 1.0),
    "batch": ("switchboard_worker_batch_seconds", lambda lb: lb.get("worker", "").startswith("processor"), 1.0),
    "cql read": (
        "switchboard_store_statement_seconds",
        lambda lb: lb.get("statement", "") not in ("batch", "other"),
        1.0,
    ),
    "cql commit": ("switchboard_store_statement_seconds", lambda lb: lb.get("statement") == "batch", 1.0),
    "e2e": ("switchboard_processor_e2e_latency_seconds", lambda lb: True, 1.0),
}


@dataclass
class Histogram:
    """Cumulative bucket counts by upper bound (``le``), and the sum of observations."""

    buckets: dict[float, float] = field(default_factory=dict)
    total: float = 0.0

    @property
    def count(self) -> float:
        return self.buckets.get(float("inf"), 0.0)

    def add(self, other: Histogram, sign: float = 1.0) -> None:
        for le, n in other.buckets.items():
            self.buckets[le] = self.buckets.get(le, 0.0) + sign * n
        self.total += sign * other.total

    def quantile(self, q: float) -> float | None:
        """Linear interpolation inside the bucket that holds rank ``q * count``; the largest finite bound when
        the rank falls in ``+Inf``; None without observations."""
        n = self.count
        if n <= 0:
            return None
        rank = q * n
        lower, below = 0.0, 0.0
        for le in sorted(self.buckets):
            cum = self.buckets[le]
            if cum >= rank:
                if le == float("inf"):
                    return lower
                inside = cum - below
                return lower + (le - lower) * ((rank - below) / inside if inside > 0 else 1.0)
            lower, below = le, cum
        return lower

    def bucket(self, q: float) -> tuple[float, float] | None:
        """The bounds (lower, upper] of the bucket that holds rank ``q * count``: how precisely the histogram
        knows that quantile (upper is ``inf`` past the last finite bound); None without observations."""
        n = self.count
        if n <= 0:
            return None
        lower = 0.0
        for le in sorted(self.buckets):
            if self.buckets[le] >= q * n:
                return lower, le
            lower = le
        return lower, float("inf")


Snapshot = dict[str, Histogram]


def parse(text: str) -> Snapshot:
    """The text exposition of one process → a histogram per stage (stages it does not export are absent)."""
    out: Snapshot = {}
    families = {f.name: f for f in text_string_to_metric_families(text) if f.type == "histogram"}
    for stage, (name, match, unit) in STAGES.items():
        fam = families.get(name)
        if fam is None:
            continue
        h = out.setdefault(stage, Histogram())
        for s in fam.samples:
            labels = {k: v for k, v in s.labels.items() if k != "le"}
            if not match(labels):
                continue
            if s.name.endswith("_bucket"):
                le = float(s.labels["le"]) * unit
                h.buckets[le] = h.buckets.get(le, 0.0) + s.value
            elif s.name.endswith("_sum"):
                h.total += s.value * unit
    return out


Scrape = dict[int, Snapshot]  # by the port scraped
# per stage: count, mean_ms, p50_ms, p99_ms (float or None), p50_bucket_ms and p99_bucket_ms ([lower, upper])
Summary = dict[str, dict[str, Any]]
METRICS = "/metrics"  # the services'
ENVOY_METRICS = "/stats/prometheus"  # Envoy's admin endpoint


def scrape(targets: Iterable[tuple[int, str]], timeout: float = 2.0) -> Scrape:
    """Every stage of each process at ``(port, path)`` on localhost (a service's ``/metrics``, Envoy's
    ``/stats/prometheus``); a process that does not answer (stopped, paused) is left out."""
    out: Scrape = {}
    for port, path in targets:
        text = _exposition(port, path, timeout)
        if text is not None:
            out[port] = parse(text)
    return out


def _exposition(port: int, path: str, timeout: float) -> str | None:
    """The metrics text a process on localhost serves at ``path``; None if it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            text: str = r.read().decode()
    except OSError:
        return None
    return text


def counter_by(port: int, sample: str, label: str, timeout: float = 2.0) -> dict[str, float]:
    """The samples named ``sample`` (a counter's ``..._total``) of the process whose ``/metrics`` is on
    ``port``, summed by the value of ``label``; {} if it does not answer."""
    text = _exposition(port, METRICS, timeout)
    if text is None:
        return {}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == sample:
                key = s.labels.get(label, "")
                out[key] = out.get(key, 0.0) + s.value
    return out


def difference(after: Scrape, before: Scrape) -> Snapshot:
    """What every process in ``after`` observed since ``before``, summed (a process absent from ``before`` counts
    with all it observed)."""
    out: Snapshot = {}
    for port, snap in after.items():
        for stage, h in snap.items():
            d = out.setdefault(stage, Histogram())
            d.add(h)
            if stage in before.get(port, {}):
                d.add(before[port][stage], -1.0)
    return out


def summary(window: Snapshot) -> Summary:
    """Per stage: observations, mean, p50 and p99 in ms, and the bounds of the buckets they fall in (ms)."""
    out: Summary = {}
    for stage in STAGES:
        h = window.get(stage)
        if h is None or h.count <= 0:
            continue
        p50, p99 = h.quantile(0.5), h.quantile(0.99)
        b50, b99 = h.bucket(0.5), h.bucket(0.99)
        out[stage] = {
            "count": h.count,
            "mean_ms": 1000 * h.total / h.count,
            "p50_ms": None if p50 is None else 1000 * p50,
            "p99_ms": None if p99 is None else 1000 * p99,
            # The upper bound past the last finite one is None, not inf: json.dumps wrote Infinity, not JSON.
            "p50_bucket_ms": None if b50 is None else [1000 * b50[0], _finite_ms(b50[1])],
            "p99_bucket_ms": None if b99 is None else [1000 * b99[0], _finite_ms(b99[1])],
        }
    return out


def line(stages: Summary) -> str:
    """``ingest rpc 3/41 ms (n=48000) | confirm ...``: p50/p99 per stage."""
    parts = []
    for stage, s in stages.items():
        p50, p99 = s["p50_ms"], s["p99_ms"]
        parts.append(f"{stage} {p50 or 0:.0f}/{p99 or 0:.0f} ms (n={s['count']:.0f})")
    return " | ".join(parts)


def _finite_ms(seconds: float) -> float | None:
    return None if seconds == float("inf") else 1000 * seconds
