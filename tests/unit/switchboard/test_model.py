from __future__ import annotations

from switchboard.model.events import new_traceparent, valid_traceparent


def test_traceparent_validation() -> None:
    assert valid_traceparent(new_traceparent())
    assert not valid_traceparent("00-" + "0" * 32 + "-" + "1" * 16 + "-01")
    assert not valid_traceparent("garbage")
    assert not valid_traceparent("00-XYZ")
