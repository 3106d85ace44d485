"""ReplayEvents names the status it refuses: every refused value was called RECEIVED (found in review)."""

from __future__ import annotations

import pytest
from webhooks.v1 import event_pb2, replay_pb2

from control_service.operations_servicer import ReplayServicer
from switchboard.errors import InvalidRequest


@pytest.mark.parametrize(
    ("status", "said"),
    [(event_pb2.EVENT_STATUS_RECEIVED, "RECEIVED is never stored"), (99, "99 is not an event status")],
)
async def test_a_status_that_is_never_stored_or_unknown_is_refused_by_name(status: int, said: str) -> None:
    servicer = ReplayServicer(None)  # type: ignore[arg-type]  # refused before the manager is asked
    request = replay_pb2.ReplayEventsRequest(source="shop", status=status)
    with pytest.raises(InvalidRequest, match=said) as refused:
        async for _ in servicer.ReplayEvents(request, None):
            pass
    assert refused.value.reason == "STATUS_INVALID"
