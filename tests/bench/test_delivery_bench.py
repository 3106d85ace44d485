"""The delivery benchmark's own parts: the receiver Envoy really answers and logs each webhook-id, and a
round's accounting (missing, duplicates, unexpected arrivals, rate) is right."""

from __future__ import annotations

import ssl
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from bench.delivery import Round, parse_args
from bench.pipeline import Phase
from bench.receiver import Arrival, ReceiverEnvoy, parse_arrival
from switchboard_devstack.tls import ensure_local_tls


def test_the_receiver_answers_200_and_logs_every_webhook_id(tmp_path: Path) -> None:
    tls_dir = tmp_path / "tls"
    ca, _, _ = ensure_local_tls(tls_dir)
    receiver = ReceiverEnvoy(tmp_path / "rx", tls_dir, flush_ms=50)
    receiver.start().wait_ready(30)
    try:
        with httpx.Client(verify=ssl.create_default_context(cafile=str(ca)), timeout=10) as client:
            for i in range(3):
                resp = client.post(
                    receiver.url(f"/hooks/s{i}"), content=b"x" * 5000, headers={"webhook-id": f"msg_{i}"}
                )
                assert resp.status_code == 200 and resp.text == "ok"
            resp = client.post(receiver.url("/hooks/none"), content=b"{}")
            assert resp.status_code == 200
        started = time.time()
        arrivals: list[Arrival] = []
        deadline = time.monotonic() + 10
        while len(arrivals) < 4 and time.monotonic() < deadline:
            arrivals += list(receiver.arrivals())
            time.sleep(0.05)
    finally:
        receiver.stop()
    assert [(a.path, a.webhook_id, a.status) for a in arrivals] == [
        ("/hooks/s0", "msg_0", 200),
        ("/hooks/s1", "msg_1", 200),
        ("/hooks/s2", "msg_2", 200),
        ("/hooks/none", "", 200),
    ]
    assert all(a.bytes_received >= 5000 for a in arrivals[:3])
    assert all(started - 30 < a.at <= started for a in arrivals)  # epoch seconds, with microseconds
    assert list(receiver.arrivals()) == []  # read once


def test_parse_arrival_takes_envoy_json_lines() -> None:
    a = parse_arrival(b'{"t":"1700000000.123456","path":"/hooks/s1","id":"msg_x","status":"200","bytes":"5120"}')
    assert (a.at, a.path, a.webhook_id, a.status, a.bytes_received) == (
        1700000000.123456,
        "/hooks/s1",
        "msg_x",
        200,
        5120,
    )
    assert parse_arrival(b'{"t":"1.5","path":"/","id":null,"status":200,"bytes":0}').webhook_id == ""


def test_round_accounting() -> None:
    phase = Phase("fan3", "open 200/s", "open", 200, 10, 128, 2000)
    phase.start_wall, phase.end_wall = 1000.0, 1010.0
    rnd = Round(3, phase, [("sub_a", "/a"), ("sub_b", "/b")])
    rnd.expected = {"w1": ("e1", "/a"), "w2": ("e1", "/b"), "w3": ("e2", "/a"), "w4": ("e2", "/b")}
    rnd.arrived = Counter({"w1": 1, "w2": 3, "w3": 1})
    rnd.last_arrival = 1012.0
    assert rnd.delivered == 3
    assert rnd.missing == 1
    assert rnd.duplicates == 2
    assert rnd.deliveries_per_s == pytest.approx(3 / 12)
    assert rnd.drained_after_s == pytest.approx(2.0)
    assert rnd.as_json()["missing_ids"] == ["w4"]


def test_fanouts_must_grow() -> None:
    assert parse_args(["--fanout", "0,1,3,10"]).fanouts == [0, 1, 3, 10]
    for bad in ("3,1", "-1,2", "a"):
        with pytest.raises(SystemExit):
            parse_args(["--fanout", bad])
