"""The deferral of a task whose subscription (or its host) has as many requests in flight as a worker sends it:
how long, read from the copy's retry headers, doubling from 1 s to 30 s; what a callback URL's host is."""

from __future__ import annotations

import itertools
import random

from delivery_service.pipeline import SATURATED, host_of, saturated_hold, saturated_wait
from switchboard.queue import QueueMessage


def copy(headers: dict[str, object]) -> QueueMessage:
    return QueueMessage(body=b"", message_id="dlv_1", headers=headers, redelivered=False, queue="q")


def test_a_copy_deferred_for_the_limit_says_how_long_it_waited_and_others_say_nothing() -> None:
    reason = f"{SATURATED} 32 requests in flight, as many as a worker sends it at once"
    assert saturated_wait(copy({"x-last-error": reason, "x-retry-delay-ms": 2400})) == 2.4
    # A retry after a failed attempt, a deferral for an open circuit, a first delivery: not this deferral.
    assert saturated_wait(copy({"x-last-error": "http_status: 503", "x-retry-delay-ms": 5000})) == 0.0
    circuit = "deferred: the endpoint's circuit is open (sending again in 30.0 s)"
    assert saturated_wait(copy({"x-last-error": circuit, "x-retry-delay-ms": 30000})) == 0.0
    assert saturated_wait(copy({})) == 0.0
    assert saturated_wait(copy({"x-last-error": reason, "x-retry-delay-ms": "soon"})) == 0.0


def test_the_wait_doubles_from_one_second_up_to_thirty_with_jitter() -> None:
    rng = random.Random(7)
    waited = 0.0
    waits = []
    for _ in range(9):
        waited = saturated_hold(waited, rng)
        waits.append(waited)
    assert 0.8 <= waits[0] <= 1.2
    for before, after in itertools.pairwise(waits):
        assert after <= 30.0  # never past the 30 s delay queue
        if before < 12:
            assert after >= 1.6 * before  # twice, ±20%
    assert all(24.0 <= w <= 30.0 for w in waits[-3:])


def test_a_callback_url_counts_against_its_host_and_port() -> None:
    assert host_of("https://Hooks.Example.com/a?token=x") == "hooks.example.com:443"
    assert host_of("https://hooks.example.com:8443/b") == "hooks.example.com:8443"
    assert host_of("http://127.0.0.1/c") == "127.0.0.1:80"
    assert host_of("https://[::1]:9000/d") == "::1:9000"
    assert host_of("https://hooks.example.com:99999/e") == "hooks.example.com:443"  # refused by the sender
