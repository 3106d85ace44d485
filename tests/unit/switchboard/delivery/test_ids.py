"""Deterministic delivery ids."""

from __future__ import annotations

import base64
import hashlib
import re
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switchboard.delivery.ids import delivery_id
from switchboard.errors import SwitchboardError

ID_SHAPE = re.compile(r"msg_[a-z2-7]{26}")


def test_known_answer() -> None:
    # Pinned: changing the derivation would re-deliver every in-flight event under a new webhook-id.
    assert delivery_id("demo", "evt_1", "sub_1") == "msg_64ksswnxgn4sda4imbfssbxx3y"
    digest = hashlib.sha256(b"switchboard.delivery.v1\0demo\0evt_1\0sub_1").digest()[:16]
    assert delivery_id("demo", "evt_1", "sub_1") == "msg_" + base64.b32encode(digest).decode().rstrip("=").lower()


def test_stable_across_processes() -> None:
    code = "from switchboard.delivery.ids import delivery_id; print(delivery_id('stripe', 'evt_é', 'sub_9'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == delivery_id("stripe", "evt_é", "sub_9")
    assert ID_SHAPE.fullmatch(out)


def test_each_part_changes_the_id() -> None:
    base = delivery_id("s", "e", "sub")
    assert len({base, delivery_id("s2", "e", "sub"), delivery_id("s", "e2", "sub"), delivery_id("s", "e", "sub2")}) == 4
    # Moving text across the separators never collides: NUL is refused where it could.
    assert delivery_id("ab", "c", "d") != delivery_id("a", "bc", "d")
    # ("a", "b\0c", "d") would otherwise be encoded like ("a", "b", "c\0d"), which is refused.
    assert ID_SHAPE.fullmatch(delivery_id("a", "b\0c", "d"))
    with pytest.raises(SwitchboardError):
        delivery_id("a", "b", "c\0d")


@pytest.mark.parametrize(
    ("source", "event_id", "subscription_id"),
    [("", "e", "s"), ("a\0b", "e", "s"), ("a", "", "s"), ("a", "e", ""), ("a", "e", "s\0")],
)
def test_bad_inputs_are_refused(source: str, event_id: str, subscription_id: str) -> None:
    with pytest.raises(SwitchboardError) as info:
        delivery_id(source, event_id, subscription_id)
    assert info.value.reason == "DELIVERY_ID_INVALID"


@settings(max_examples=500, deadline=None)
@given(
    source=st.text(st.characters(exclude_characters="\0"), min_size=1, max_size=20),
    event_id=st.text(st.characters(exclude_categories=()), min_size=1, max_size=40),
    subscription_id=st.text(st.characters(exclude_characters="\0"), min_size=1, max_size=20),
)
def test_any_text_gives_a_well_formed_deterministic_id(source: str, event_id: str, subscription_id: str) -> None:
    first = delivery_id(source, event_id, subscription_id)
    assert ID_SHAPE.fullmatch(first)
    assert delivery_id(source, event_id, subscription_id) == first
