from __future__ import annotations

import pytest

from switchboard import errors
from switchboard.wire import decode_inbound, encode_inbound
from tests.unit.factories import event


def test_queue_codec_round_trips_every_field() -> None:
    e = event()
    assert decode_inbound(encode_inbound(e)) == e


def test_undecodable_queue_message_is_an_invalid_request() -> None:
    with pytest.raises(errors.InvalidRequest) as exc:
        decode_inbound(b"\xff\xff\xff not protobuf")
    assert exc.value.reason == "UNDECODABLE_MESSAGE"
