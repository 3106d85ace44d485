"""Stored payloads: tagged, zstd when it pays, every encoding decodable, damage reported and never guessed."""

from __future__ import annotations

import json
import os

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from bench.presign import make_body
from switchboard.errors import CorruptData
from switchboard.store.payloads import MIN_BYTES, RAW, ZSTD, Encoder, decode, decode_or, encode


def test_a_json_event_is_stored_compressed_and_decodes_to_the_same_bytes() -> None:
    _, body = make_body(5000, 1_700_000_000, "p")
    stored = encode(body)
    assert stored[0] == ZSTD
    assert len(stored) < len(body) / 3  # a realistic invoice event: ~3.8x
    assert decode(stored) == body
    assert json.loads(decode(stored)) == json.loads(body)


def test_small_or_incompressible_payloads_and_compression_off_are_stored_as_received() -> None:
    small = b'{"id":"evt_1"}'
    assert len(small) < MIN_BYTES
    noise = os.urandom(2000)  # random bytes: a zstd frame of them is larger than they are
    _, body = make_body(5000, 1_700_000_000, "p")
    for data, compress in [(small, True), (noise, True), (body, False), (b"", True)]:
        stored = encode(data, compress=compress)
        assert stored == bytes((RAW,)) + data
        assert decode(stored) == data


@given(st.binary(max_size=4096), st.booleans())
def test_every_payload_round_trips(data: bytes, compress: bool) -> None:
    assert decode(encode(data, compress=compress)) == data


@given(st.text(max_size=3000))
def test_text_round_trips_compressed_whenever_that_is_smaller(text: str) -> None:
    data = (text * 3).encode()
    stored = encode(data)
    assert decode(stored) == data
    assert len(stored) <= len(data) + 1
    if stored[0] == RAW:
        assert len(data) < MIN_BYTES or len(zstandard.ZstdCompressor(level=1).compress(data)) >= len(data)


@pytest.mark.parametrize(
    ("value", "what"),
    [
        (b"", "empty"),
        (b"\x02{}", "unknown encoding tag 0x02"),
        (bytes((ZSTD,)) + b"not a zstd frame", "does not decompress"),
    ],
)
def test_a_damaged_value_is_reported_not_guessed(value: bytes, what: str) -> None:
    with pytest.raises(CorruptData, match=what) as info:
        decode(value)
    assert info.value.reason == "DATA_CORRUPT"


def test_a_truncated_frame_is_reported() -> None:
    _, body = make_body(5000, 1_700_000_000, "p")
    stored = encode(body)
    with pytest.raises(CorruptData):
        decode(stored[:-20])


def test_rows_from_before_encoding_read_their_old_column() -> None:
    assert decode_or(None, b"raw body") == b"raw body"
    assert decode_or(None, None) == b""
    assert decode_or(encode(b"new" * 100), b"old") == b"new" * 100


def test_the_encoder_compresses_each_object_once_and_tells_equal_objects_apart_by_identity() -> None:
    _, body = make_body(5000, 1_700_000_000, "p")
    enc = Encoder(compress=True)
    first = enc(body)
    assert enc(body) is first  # the event's body and the entity state it became: one compression
    copy = bytes(bytearray(body))
    assert copy is not body
    again = enc(copy)
    assert again == first and again is not first
    assert Encoder(compress=False)(body) == bytes((RAW,)) + body
