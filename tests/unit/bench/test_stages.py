"""bench/stages.py: histograms from the text exposition, differences between scrapes, quantiles."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from bench import stages

BUCKETS = (0.001, 0.01, 0.1, 1.0)


def exposition(rpc: list[float], confirm: list[float], other_method: tuple[float, ...] | list[float] = ()) -> str:
    reg = CollectorRegistry()
    h = Histogram("grpc_server_handling_seconds", "", ["grpc_service", "grpc_method"], buckets=BUCKETS, registry=reg)
    for v in rpc:
        h.labels("webhooks.v1.Ingest", "Receive").observe(v)
    for v in other_method:
        h.labels("grpc.health.v1.Health", "Check").observe(v)
    c = Histogram("switchboard_broker_confirm_seconds", "", ["exchange"], buckets=BUCKETS, registry=reg)
    for v in confirm:
        c.labels("switchboard.events").observe(v)
    return generate_latest(reg).decode()


def test_parse_selects_by_label_and_sums_buckets() -> None:
    snap = stages.parse(exposition([0.005] * 3, [0.05], other_method=[0.5] * 10))
    rpc = snap["ingest rpc"]
    assert rpc.count == 3  # Health/Check is not the ingest stage
    assert rpc.buckets[0.01] == 3 and rpc.buckets[0.001] == 0
    assert rpc.total == pytest.approx(0.015)
    assert snap["confirm"].count == 1
    assert "batch" not in snap


def test_difference_is_the_window_between_two_scrapes_per_process() -> None:
    before = {1: stages.parse(exposition([0.005] * 4, [])), 2: stages.parse(exposition([0.005] * 50, []))}
    after = {
        1: stages.parse(exposition([0.005] * 4 + [0.5] * 6, [])),
        2: stages.parse(exposition([0.005] * 51, [])),
        3: stages.parse(exposition([0.05] * 2, [])),  # started since: all it observed counts
    }
    window = stages.difference(after, before)["ingest rpc"]
    assert window.count == 6 + 1 + 2
    assert window.buckets[0.01] == 1 and window.buckets[0.1] == 3 and window.buckets[1.0] == 9
    assert window.total == pytest.approx(3.0 + 0.005 + 0.1)


def test_a_process_missing_from_the_later_scrape_is_left_out() -> None:
    before = {1: stages.parse(exposition([0.005], [])), 2: stages.parse(exposition([0.5] * 9, []))}
    after = {1: stages.parse(exposition([0.005] * 3, []))}  # 2 was paused: it did not answer
    assert stages.difference(after, before)["ingest rpc"].count == 2


def test_quantile_interpolates_inside_the_bucket() -> None:
    h = stages.Histogram({0.01: 50.0, 0.1: 100.0, float("inf"): 100.0})
    assert h.quantile(0.5) == pytest.approx(0.01)
    assert h.quantile(0.75) == pytest.approx(0.01 + 0.09 * 0.5)
    assert h.quantile(0.25) == pytest.approx(0.005)


def test_quantile_in_inf_bucket_is_the_largest_bound_and_empty_is_none() -> None:
    h = stages.Histogram({0.1: 1.0, 1.0: 1.0, float("inf"): 10.0})
    assert h.quantile(0.99) == 1.0
    assert stages.Histogram().quantile(0.5) is None


def test_summary_and_line() -> None:
    window = stages.difference({1: stages.parse(exposition([0.005] * 90 + [0.5] * 10, [0.002] * 10))}, {})
    s = stages.summary(window)
    assert list(s) == ["ingest rpc", "confirm"]
    assert s["ingest rpc"]["count"] == 100
    assert 1.0 <= (s["ingest rpc"]["p50_ms"] or 0) <= 10.0
    assert 100.0 < (s["ingest rpc"]["p99_ms"] or 0) <= 1000.0  # the slowest tenth is in the (0.1, 1] bucket
    assert s["ingest rpc"]["mean_ms"] == pytest.approx(54.5)
    assert "ingest rpc" in stages.line(s) and "(n=100)" in stages.line(s)


ENVOY = """\
# TYPE envoy_http_downstream_rq_time histogram
envoy_http_downstream_rq_time_bucket{envoy_http_conn_manager_prefix="admin",le="5"} 7
envoy_http_downstream_rq_time_bucket{envoy_http_conn_manager_prefix="admin",le="+Inf"} 7
envoy_http_downstream_rq_time_sum{envoy_http_conn_manager_prefix="admin"} 14
envoy_http_downstream_rq_time_count{envoy_http_conn_manager_prefix="admin"} 7
envoy_http_downstream_rq_time_bucket{envoy_http_conn_manager_prefix="webhooks",le="5"} 90
envoy_http_downstream_rq_time_bucket{envoy_http_conn_manager_prefix="webhooks",le="250"} 100
envoy_http_downstream_rq_time_bucket{envoy_http_conn_manager_prefix="webhooks",le="+Inf"} 100
envoy_http_downstream_rq_time_sum{envoy_http_conn_manager_prefix="webhooks"} 1500
envoy_http_downstream_rq_time_count{envoy_http_conn_manager_prefix="webhooks"} 100
# TYPE envoy_cluster_upstream_rq_time histogram
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="otlp_collector",le="5"} 3
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="otlp_collector",le="+Inf"} 3
envoy_cluster_upstream_rq_time_sum{envoy_cluster_name="otlp_collector"} 6
envoy_cluster_upstream_rq_time_count{envoy_cluster_name="otlp_collector"} 3
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="ingest",le="5"} 95
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="ingest",le="+Inf"} 100
envoy_cluster_upstream_rq_time_sum{envoy_cluster_name="ingest"} 800
envoy_cluster_upstream_rq_time_count{envoy_cluster_name="ingest"} 100
"""


def test_envoy_histograms_are_read_in_milliseconds_for_the_public_listener_and_the_ingest_cluster() -> None:
    snap = stages.parse(ENVOY)
    edge, upstream = snap["edge"], snap["upstream"]
    assert edge.count == 100  # the admin listener's requests are not the edge's
    assert edge.buckets[0.005] == 90 and edge.buckets[0.25] == 100  # bounds converted to seconds
    assert edge.total == pytest.approx(1.5)
    assert upstream.count == 100 and upstream.total == pytest.approx(0.8)  # the collector's calls left out
    s = stages.summary(stages.difference({9901: snap}, {}))
    assert list(s) == ["edge", "upstream"]
    assert 5.0 < (s["edge"]["p99_ms"] or 0) <= 250.0
