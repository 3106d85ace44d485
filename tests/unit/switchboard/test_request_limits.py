"""What a request may carry back or name: page tokens and their cursors, timestamps, listing ranges. Anything
out of bounds is a clear ``InvalidRequest`` (400 / INVALID_ARGUMENT), never a crash deeper down (500)."""

from __future__ import annotations

import base64
import json

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from webhooks.v1 import query_pb2

from switchboard import pagination
from switchboard.errors import InvalidRequest
from switchboard.pagination import DAY_US, check_range
from switchboard.wire import MAX_REQUEST_SECONDS, request_us


def raw_token(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "token",
    [
        raw_token("[" * 1500 + "]" * 1500),  # nested deeper than the JSON parser's recursion limit
        raw_token('{"c": [' + "[" * 5000 + "]" * 5000 + "]}"),
        "A" * (pagination.MAX_TOKEN_CHARS + 1),
        raw_token("[1, 2]"),  # JSON, not an object
        "%%%not base64",
    ],
)
def test_a_token_that_is_not_ours_is_page_token_invalid(token: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        pagination.decode_token(token)
    assert caught.value.reason == "PAGE_TOKEN_INVALID"


@pytest.mark.parametrize(
    ("value", "kinds"),
    [
        ([1, 2], "ims"),  # too short
        ([1, 2, "x", 4], "ims"),  # too long
        ("1,2,x", "ims"),
        ([True, 2, "x"], "ims"),  # a bool is not a number here
        ([1.5, 2, "x"], "ims"),
        ([float("inf"), 2, "x"], "ims"),
        ([2**70, 2, "x"], "ims"),  # past 64 bits: the driver cannot bind it
        ([1, -1, "x"], "ims"),  # before the epoch
        ([1, pagination.MAX_EPOCH_MS + 1, "x"], "ims"),  # after 9999
        ([1, 2, 3], "ims"),
        ([1, 2, "x" * (pagination.MAX_TEXT + 1)], "ims"),
        ([1, 2, None], "ims"),
    ],
)
def test_a_cursor_whose_parts_are_not_of_their_kind_is_page_token_invalid(value: object, kinds: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        pagination.position(value, kinds)
    assert caught.value.reason == "PAGE_TOKEN_INVALID"


def test_a_cursor_of_the_right_kinds_comes_back_as_a_tuple() -> None:
    token = pagination.encode_token({"c": [20_000, pagination.MAX_EPOCH_MS, "evt_1", -(2**63), ""]})
    raw = pagination.decode_token(token)
    assert pagination.position(raw["c"], "imsis") == (20_000, pagination.MAX_EPOCH_MS, "evt_1", -(2**63), "")
    assert json.loads(base64.urlsafe_b64decode(token + "==")) == raw


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [(-1, 0), (MAX_REQUEST_SECONDS + 1, 0), (253402300800 * 10, 0), (0, -1), (0, 1_000_000_000)],
)
def test_a_time_before_1970_or_after_9999_is_time_invalid_naming_its_field(seconds: int, nanos: int) -> None:
    request = query_pb2.ListEventsRequest(source="s")
    request.end_time.CopyFrom(Timestamp(seconds=seconds, nanos=nanos))
    with pytest.raises(InvalidRequest) as caught:
        request_us(request, "end_time")
    assert caught.value.reason == "TIME_INVALID" and caught.value.metadata == {"field": "end_time"}


def test_a_time_in_range_is_microseconds_and_an_unset_one_is_none() -> None:
    request = query_pb2.ListEventsRequest(source="s")
    assert request_us(request, "start_time") is None
    request.start_time.CopyFrom(Timestamp(seconds=MAX_REQUEST_SECONDS, nanos=999_999_999))
    assert request_us(request, "start_time") == MAX_REQUEST_SECONDS * 1_000_000 + 999_999
    request.start_time.CopyFrom(Timestamp(seconds=0, nanos=0))
    assert request_us(request, "start_time") == 0


def test_a_listing_range_may_span_twice_the_retention_or_thirty_days_and_one_more_day() -> None:
    month = 30 * 86_400
    check_range(0, 61 * DAY_US, month)  # twice 30 days, and one
    with pytest.raises(InvalidRequest) as caught:
        check_range(0, 61 * DAY_US + 1, month)
    assert caught.value.reason == "TIME_RANGE_TOO_LARGE" and "61 days" in caught.value.message
    check_range(0, 31 * DAY_US, 3600)  # a short retention (a test stack's) still lists a month
    with pytest.raises(InvalidRequest):
        check_range(0, 31 * DAY_US + 1, 3600)
    with pytest.raises(InvalidRequest):
        check_range(-62_135_596_800 * 1_000_000, 253_402_300_799 * 1_000_000, month)  # year 1 to 9999
