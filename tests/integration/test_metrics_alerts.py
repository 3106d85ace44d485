"""Metrics and alerts, for real: the whole stack with Prometheus (``Stack(with_prometheus=True)``, scraping every
second), events sent through Envoy, the metrics read back through Prometheus's HTTP API, ``switchboard status``
on the same stack, and alerts evaluated from the committed rules (``prometheus/rules.yml``, with every ``for:``
cut to a few seconds): a poisoned event makes the dead-letter alert fire, a SIGKILLed processor its down alert.

The stack is this module's own: a processor is killed here.
"""

from __future__ import annotations

import json
import re
import secrets
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from switchboard.config import PlatformConfig
from switchboard_cli import status
from switchboard_devstack.prometheus import default_rules
from switchboard_devstack.stack import Stack
from tests.e2e.helpers import edge_client, stripe_event, stripe_headers, wait_for_event
from tests.stack_fixture import MAX_ATTEMPTS, STRIPE_SECRET, write_test_config

pytestmark = pytest.mark.integration

FOR = "3s"


def short_rules(directory: Path) -> Path:
    """The committed rules with every ``for:`` cut to ``FOR`` (and nothing else changed)."""
    text, changed = re.subn(r"(?m)^(\s+for:) \S+$", rf"\1 {FOR}", default_rules().read_text())
    assert changed >= 6
    path = directory / "rules.yml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def metrics_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = Path(tmp_path_factory.mktemp("metrics-stack"))
    cfg = write_test_config(root, processors=2, scrape_interval=1.0)
    stack = Stack(cfg, with_prometheus=True, prometheus_rules=short_rules(root))
    stack.up(timeout=240)
    try:
        yield stack
    finally:
        stack.down()


def api(stack: Stack, path: str, **params: str) -> Any:
    assert stack.prometheus is not None
    code, raw = stack.prometheus.get(f"{path}?{urllib.parse.urlencode(params)}", timeout=10)
    assert code == 200, (path, params, code, raw[:300])
    body = json.loads(raw)
    assert body["status"] == "success", body
    return body["data"]


def query(stack: Stack, promql: str) -> list[tuple[dict[str, str], float]]:
    data = api(stack, "/api/v1/query", query=promql)
    return [(r["metric"], float(r["value"][1])) for r in data["result"]]


def scalar(stack: Stack, promql: str) -> float:
    result = query(stack, promql)
    assert len(result) == 1, (promql, result)
    return result[0][1]


def eventually(check: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except AssertionError as exc:
            last = exc
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout:g} s (last: {last!r})")


def at_least(stack: Stack, promql: str, n: float) -> None:
    """``promql`` reaches ``n`` (Prometheus scrapes each target at its own moment within the interval: a later
    process's counter may be seen before an earlier one's)."""
    eventually(lambda: scalar(stack, promql) >= n, f"{promql} >= {n}", timeout=20)


def p99(stack: Stack, buckets: str) -> float:
    """The p99 over 5 minutes of the histogram ``buckets`` (a selector of ``_bucket`` series), once it is a
    number (a rate needs two samples of the series)."""
    promql = f"histogram_quantile(0.99, sum by (le) (rate({buckets}[5m])))"

    def number() -> float | None:
        result = query(stack, promql)
        return result[0][1] if result and result[0][1] == result[0][1] else None  # NaN: no observation yet

    value: float = eventually(number, promql, timeout=30)
    return value


def send(cfg: PlatformConfig, event_id: str, event_type: str = "invoice.paid", **extra: str) -> int:
    body = stripe_event(event_id, event_type)
    with edge_client(cfg) as client:
        resp = client.post("/webhook/shop", content=body, headers={**stripe_headers(STRIPE_SECRET, body), **extra})
    return resp.status_code


def alerts(stack: Stack, name: str) -> list[dict[str, Any]]:
    return [a for a in api(stack, "/api/v1/alerts")["alerts"] if a["labels"]["alertname"] == name]


def test_metrics_reach_prometheus_with_sane_values(metrics_stack: Stack) -> None:
    cfg = metrics_stack.cfg
    # Every target scraped at least once before the events, so that rates see them.
    eventually(lambda: len(query(metrics_stack, "up == 1")) >= 9, "every target up")
    ids = [f"evt_metrics_{secrets.token_hex(4)}_{i}" for i in range(8)]
    for event_id in ids:
        assert send(cfg, event_id) == 200
    bad = stripe_event("evt_bad_signature")
    with edge_client(cfg) as client:
        headers = {**stripe_headers("whsec_" + "0" * 32, bad)}
        assert client.post("/webhook/shop", content=bad, headers=headers).status_code == 401
    for event_id in ids:
        wait_for_event(cfg, "shop", event_id)

    n = len(ids)
    at_least(metrics_stack, 'sum(switchboard_processor_events_total{outcome="processed"})', n)
    # Every process, Envoy and RabbitMQ are scraped.
    up = {(m["job"], m.get("process", "")): v for m, v in query(metrics_stack, "up")}
    jobs = {job for job, _ in up}
    assert {"ingest", "query", "control", "processor", "delivery", "envoy", "rabbitmq", "prometheus"} <= jobs, up
    assert all(v == 1 for v in up.values()), up
    assert len([p for job, p in up if job == "processor"]) == 2
    assert scalar(metrics_stack, "envoy_server_live") == 1
    assert scalar(metrics_stack, "sum(rabbitmq_queues)") > 0

    # Ingest: accepted by source, rejected by reason; the RPC counters agree (status code label).
    at_least(metrics_stack, 'sum(switchboard_ingest_accepted_total{source="shop"})', n)
    at_least(metrics_stack, 'sum(switchboard_ingest_rejected_total{reason="SIGNATURE_MISMATCH"})', 1)
    receive = 'grpc_server_handled_total{grpc_service="webhooks.v1.Ingest", grpc_method="Receive"'
    at_least(metrics_stack, f'sum({receive}, grpc_code="OK"}})', n)
    at_least(metrics_stack, f'sum({receive}, grpc_code="UNAUTHENTICATED"}})', 1)
    assert 0 < p99(metrics_stack, 'grpc_server_handling_seconds_bucket{grpc_method="Receive"}') < 5

    # Processing: end-to-end latency, operations, the store and the broker are timed.
    at_least(metrics_stack, "sum(switchboard_processor_e2e_latency_seconds_count)", n)
    assert 0 < p99(metrics_stack, "switchboard_processor_e2e_latency_seconds_bucket") < 10
    at_least(metrics_stack, 'sum(switchboard_operation_duration_seconds_count{operation="log", outcome="ok"})', n)
    at_least(metrics_stack, 'sum(switchboard_store_statement_seconds_count{statement="events.priors"})', 1)
    at_least(metrics_stack, 'sum(switchboard_broker_confirm_seconds_count{exchange="switchboard.events"})', n)
    at_least(metrics_stack, 'sum(switchboard_worker_batch_seconds_count{worker="processor"})', 1)

    # Queue depths from each processor and the delivery worker (work, retry, dead queues of both streams).
    depths = query(metrics_stack, "switchboard_queue_ready_messages")
    kinds = {(m["stream"], m["kind"]) for m, _ in depths}
    assert {("events", "work"), ("events", "retry"), ("events", "dead"), ("deliveries", "work")} <= kinds
    assert all(v >= 0 for _, v in depths)
    dead = query(metrics_stack, "switchboard_dead_letter_messages")
    assert {m["stream"] for m, _ in dead} == {"events", "deliveries"}

    # The trace id of an event (the trace Envoy started for it, kept with the event) is an exemplar of the
    # end-to-end latency (each bucket keeps its latest exemplar: the event goes last).
    traced = f"evt_traced_{secrets.token_hex(4)}"
    assert send(cfg, traced) == 200
    trace_id = wait_for_event(cfg, "shop", traced).traceparent[3:35]

    def exemplar_trace_ids() -> set[str]:
        data = api(
            metrics_stack,
            "/api/v1/query_exemplars",
            query="switchboard_processor_e2e_latency_seconds_bucket",
            start=str(time.time() - 600),
            end=str(time.time() + 60),
        )
        return {e["labels"].get("trace_id", "") for series in data for e in series["exemplars"]}

    assert trace_id in eventually(lambda: trace_id in exemplar_trace_ids() and exemplar_trace_ids(), "exemplar")


def test_status_shows_health_rates_and_alerts(metrics_stack: Stack) -> None:
    cfg = metrics_stack.cfg
    snap = status.collect(cfg, window=1.0)
    names = {c["name"]: c for c in snap["components"]}
    assert {
        "ingest",
        "query",
        "control",
        "processor-0",
        "processor-1",
        "delivery-0",
        "envoy",
        "rabbitmq",
        "cassandra",
    } <= set(names), names
    assert all(c["ok"] for c in snap["components"]), snap["components"]
    assert names["ingest"]["health"] == "SERVING" and names["processor-0"]["metrics"] == "up"
    assert set(snap["queues"]) == {"events", "deliveries"}
    assert snap["alerts"] is not None and snap["prometheus"] == metrics_stack.prometheus.url  # type: ignore[union-attr]
    assert "Ingest/Receive" in snap["rpc"]
    screen = status.render(snap)
    assert "components" in screen and "end-to-end" in screen and "alerts (" in screen


def test_a_dead_letter_fires_its_alert(metrics_stack: Stack) -> None:
    cfg = metrics_stack.cfg
    assert send(cfg, f"evt_poison_{secrets.token_hex(4)}", "test.poison") == 200
    eventually(
        lambda: scalar(metrics_stack, 'sum(switchboard_dead_letters_total{stream="events", reason="failed"})') >= 1,
        f"the poisoned event dead-lettered after {MAX_ATTEMPTS} attempts and recorded",
    )
    at_least(metrics_stack, 'sum(switchboard_processor_events_total{outcome="retried"})', MAX_ATTEMPTS - 1)
    firing = eventually(
        lambda: [a for a in alerts(metrics_stack, "SwitchboardDeadLettersGrowing") if a["state"] == "firing"],
        "SwitchboardDeadLettersGrowing firing",
    )
    assert firing[0]["labels"]["stream"] == "events"


def test_a_killed_processor_raises_its_alert(metrics_stack: Stack) -> None:
    victim = metrics_stack.processor_procs[-1]
    address = f"{metrics_stack.cfg.metrics.host}:{victim.metrics_port}"
    assert not alerts(metrics_stack, "SwitchboardProcessorDown")
    victim.kill()
    seen = eventually(
        lambda: [a for a in alerts(metrics_stack, "SwitchboardProcessorDown") if a["labels"]["instance"] == address],
        "SwitchboardProcessorDown pending or firing",
        timeout=30,
    )
    assert seen[0]["state"] in ("pending", "firing")
    assert seen[0]["labels"]["process"] == victim.name and seen[0]["labels"]["severity"] == "critical"
    eventually(
        lambda: [a for a in alerts(metrics_stack, "SwitchboardProcessorDown") if a["state"] == "firing"],
        "SwitchboardProcessorDown firing",
        timeout=30,
    )
    # The other processor keeps working and no other component is reported down. (Warnings such as the
    # end-to-end latency alert may fire on a busy test box: the earlier tests' retried events count.)
    down = [a for a in api(metrics_stack, "/api/v1/alerts")["alerts"] if a["labels"]["alertname"].endswith("Down")]
    assert down and {(a["labels"]["alertname"], a["labels"]["instance"]) for a in down} == {
        ("SwitchboardProcessorDown", address)
    }, down
    metrics_stack.forget_processor(victim)
