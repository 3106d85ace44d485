"""The sender checks each callback URL's text once per process and never remembers a refusal."""

from __future__ import annotations

import ipaddress

import pytest

from switchboard.delivery.sender import Sender
from switchboard.delivery.urls import ForbiddenDestination


def test_a_url_is_checked_once_and_a_refused_one_every_time() -> None:
    sender = Sender(allow_networks=("127.0.0.0/8",))
    assert sender.allow_networks == (ipaddress.ip_network("127.0.0.0/8"),)  # parsed once, not per request
    first = sender._checked("https://127.0.0.1:8443/hooks/a")
    again = sender._checked("https://127.0.0.1:8443/hooks/a")
    assert again is first and first.url == "https://127.0.0.1:8443/hooks/a"
    assert sender._checked.cache_info().hits == 1
    for _ in range(2):
        with pytest.raises(ForbiddenDestination):
            sender._checked("https://10.0.0.7/hook")
    assert sender._checked.cache_info().currsize == 1
