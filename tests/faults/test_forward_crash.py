"""The window between publishing a retry copy and acking the original: a processor that dies there leaves two
copies of one receipt (the redelivered original and the retry copy). Both reach the partition's next
processor, which runs them one after the other: every operation ends with exactly one OK run.

The crash is a failpoint (``processor_service.failpoints``, ``exit_after_forward``) armed in every processor
of a stack of the test's own, for the first retry of a ``test.crash_after_forward`` event only.
"""

from __future__ import annotations

import json
import secrets
import time
from collections import Counter

import pytest
from webhooks.v1 import event_pb2

from switchboard_devstack.stack import Stack
from tests.e2e.helpers import edge_client, stripe_headers, wait_for_event
from tests.stack_fixture import STRIPE_SECRET

pytestmark = pytest.mark.integration

OK = event_pb2.OPERATION_OUTCOME_OK
FAILED = event_pb2.OPERATION_OUTCOME_FAILED


def test_a_crash_between_the_retry_copy_and_the_ack_applies_each_operation_once(own_stack: Stack) -> None:
    cfg = own_stack.cfg
    for proc in list(own_stack.processor_procs):  # replace the stack's processors with armed ones
        proc.terminate()
        own_stack.forget_processor(proc)
    armed = {"SWITCHBOARD_FAILPOINTS": "exit_after_forward"}
    procs = [own_stack.start_processor(env=armed) for _ in range(2)]
    own_stack.wait_processors(120)

    event_id = "evt_fwd_" + secrets.token_hex(6)
    body = json.dumps(
        {
            "id": event_id,
            "object": "event",
            "type": "test.crash_after_forward",
            "created": int(time.time()),
            "data": {"object": {"id": "in_fwd_" + event_id[-12:], "object": "invoice"}},
        },
        separators=(",", ":"),
    ).encode()
    with edge_client(cfg) as client:
        resp = client.post("/webhook/shop", content=body, headers=stripe_headers(STRIPE_SECRET, body))
    assert resp.status_code == 200, resp.text

    deadline = time.monotonic() + 60
    while True:
        event = wait_for_event(cfg, "shop", event_id, timeout=60)
        if event.status == event_pb2.EVENT_STATUS_PROCESSED:
            break
        assert time.monotonic() < deadline, f"stayed {event_pb2.EventStatus.Name(event.status)}"
        time.sleep(0.2)

    exited = [p for p in procs if not p.is_running()]
    assert [p.returncode for p in exited] == [137], "no processor crashed after forwarding: the test proved nothing"
    runs = sorted((r.operation, r.attempt, r.outcome) for r in event.results)
    assert runs == [
        ("deliver", 1, OK),
        ("entity", 1, OK),
        ("fail_first", 1, FAILED),
        ("fail_first", 2, OK),
        ("log", 1, OK),
    ]
    # Both copies of the receipt reached the surviving processor and were settled: the redelivered original,
    # behind the stored attempt, ran nothing and was sent back to wait; the retry copy ran attempt 2 (no third
    # run of anything).
    assert Counter(r.operation for r in event.results if r.outcome == OK) == Counter(
        {"deliver": 1, "entity": 1, "fail_first": 1, "log": 1}
    )
