"""``check_distinct_secrets``: no signing key serves two sources (no scheme signs the source's name)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from switchboard.errors import ConfigError
from switchboard.secrets import SecretRef
from switchboard.signatures import check_distinct_secrets

KEY = "MfKQ9r8GKYqrTNm5Y8NfpZh8xQ2vA7b1cD4eF6gH8iJ0kL2m"


@dataclass
class Spec:
    name: str
    secrets: list[SecretRef] = field(default_factory=list)
    scheme: str = "standard_webhooks"
    options: dict[str, str] = field(default_factory=dict)


def env(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> SecretRef:
    monkeypatch.setenv(name, value)
    return SecretRef(env=name)


@pytest.mark.parametrize(("first", "second"), [(KEY, KEY), (f"whsec_{KEY}==", KEY), (f"whsec_{KEY}", f"{KEY}=")])
def test_one_key_written_two_ways_on_two_sources_is_refused(
    monkeypatch: pytest.MonkeyPatch, first: str, second: str
) -> None:
    """A Standard Webhooks key with and without its ``whsec_`` label (or its padding) is one key: the first
    check compared the text as written and let the two sources share it (found in review)."""
    a, b = Spec("a", [env(monkeypatch, "SB_A", first)]), Spec("b", [env(monkeypatch, "SB_B", second)])
    with pytest.raises(ConfigError) as refused:
        check_distinct_secrets([a, b])
    assert "'a' (secret #1) and 'b' (secret #1) share a signing secret" in refused.value.message
    assert KEY not in refused.value.message


def test_one_source_naming_its_secret_twice_and_distinct_sources_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    same = env(monkeypatch, "SB_A", KEY)
    check_distinct_secrets([Spec("a", [same, same]), Spec("b", [env(monkeypatch, "SB_B", KEY[::-1])])])
