"""``build_verifier``: scheme choice, secret resolution, option validation, and the ``sign`` dispatcher."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from switchboard.config import SourceConfig, parse_config
from switchboard.errors import ConfigError, SignatureError
from switchboard.secrets import SecretRef
from switchboard.signatures import SCHEMES, Verified, Verifier, build_verifier, sign
from switchboard.signatures.github import GitHubVerifier
from switchboard.signatures.hmac import HmacVerifier
from switchboard.signatures.shopify import ShopifyVerifier
from switchboard.signatures.standard_webhooks import StandardWebhooksVerifier
from switchboard.signatures.stripe import StripeVerifier

NOW = 1_700_000_000.0
WHSEC = "whsec_" + base64.b64encode(b"k" * 32).decode()
WHSEC_2 = "whsec_" + base64.b64encode(b"j" * 32).decode()
OPTIONS: dict[str, dict[str, Any]] = {"hmac": {"header": "X-Sig"}}
CLASSES: dict[str, type[Verifier]] = {
    "stripe": StripeVerifier,
    "github": GitHubVerifier,
    "shopify": ShopifyVerifier,
    "standard_webhooks": StandardWebhooksVerifier,
    "hmac": HmacVerifier,
}


def source(scheme: str, *refs: SecretRef, **options: Any) -> SourceConfig:
    return SourceConfig(name="src-1", scheme=scheme, secrets=refs, options=options or OPTIONS.get(scheme, {}))


@pytest.fixture
def env_secrets(monkeypatch: pytest.MonkeyPatch) -> tuple[SecretRef, SecretRef]:
    monkeypatch.setenv("SB_TEST_SECRET_A", WHSEC)
    monkeypatch.setenv("SB_TEST_SECRET_B", WHSEC_2)
    return SecretRef(env="SB_TEST_SECRET_A"), SecretRef(env="SB_TEST_SECRET_B")


def test_the_configuration_accepts_exactly_the_schemes_that_have_a_verifier() -> None:
    assert set(SCHEMES) == set(CLASSES)
    for scheme in SCHEMES:
        raw = {"sources": [{"name": "s", "scheme": scheme, "secrets": [{"env": "X"}]}]}
        assert parse_config(raw, Path("/tmp/switchboard.toml")).sources[0].scheme == scheme
    with pytest.raises(ConfigError, match="unknown"):
        parse_config({"sources": [{"name": "s", "scheme": "svix", "secrets": [{"env": "X"}]}]}, Path("/tmp/x.toml"))


@pytest.mark.parametrize("scheme", sorted(CLASSES))
def test_builds_and_verifies_each_scheme(scheme: str, env_secrets: tuple[SecretRef, SecretRef]) -> None:
    verifier = build_verifier(source(scheme, *env_secrets))
    assert isinstance(verifier, CLASSES[scheme])
    assert verifier.scheme == scheme
    assert verifier.source == "src-1"
    body = b'{"id": "evt_1", "type": "t.x"}'
    for secret in (WHSEC, WHSEC_2):
        headers = sign(scheme, secret, body, now=NOW, options=OPTIONS.get(scheme), event_id="e-1", event_type="t")
        assert isinstance(verifier.verify(headers, body, NOW), Verified)
    headers = sign(scheme, "whsec_" + base64.b64encode(b"z" * 32).decode(), body, now=NOW, options=OPTIONS.get(scheme))
    with pytest.raises(SignatureError) as exc:
        verifier.verify(headers, body, NOW)
    assert exc.value.reason == "SIGNATURE_MISMATCH"
    assert WHSEC not in repr(verifier) and WHSEC_2 not in repr(verifier)


@pytest.mark.parametrize("scheme", sorted(CLASSES))
def test_each_scheme_names_the_headers_that_carry_its_signature(
    scheme: str, env_secrets: tuple[SecretRef, SecretRef]
) -> None:
    """Ingest stores none of them with the event: without them the stored request does not verify."""
    verifier = build_verifier(source(scheme, *env_secrets))
    body = b'{"id": "evt_1", "type": "t.x"}'
    headers = sign(scheme, WHSEC, body, now=NOW, options=OPTIONS.get(scheme), event_id="e-1", event_type="t")
    assert verifier.signature_headers & set(headers)
    kept = {k: v for k, v in headers.items() if k not in verifier.signature_headers}
    with pytest.raises(SignatureError) as exc:
        verifier.verify(kept, body, NOW)
    assert exc.value.reason == "SIGNATURE_HEADER_MISSING"


def test_secret_from_file(tmp_path: Path) -> None:
    path = tmp_path / "gh.secret"
    path.write_text("file-secret-of-github-1\n")
    path.chmod(0o600)
    verifier = build_verifier(source("github", SecretRef(file=path)))
    body = b"{}"
    assert (
        verifier.verify(sign("github", "file-secret-of-github-1", body, now=NOW, event_id="d1"), body, NOW).event_id
        == "d1"
    )


def test_generated_secret_file(tmp_path: Path) -> None:
    path = tmp_path / "demo.whsec"
    verifier = build_verifier(source("stripe", SecretRef(file=path, generate="whsec")))
    secret = path.read_text().strip()
    body = b'{"id": "evt_1"}'
    assert verifier.verify(sign("stripe", secret, body, now=NOW), body, NOW).event_id == "evt_1"


def test_unknown_scheme_names_the_source(env_secrets: tuple[SecretRef, SecretRef]) -> None:
    with pytest.raises(ConfigError, match=r"'src-1'.*'paypal'"):
        build_verifier(source("paypal", *env_secrets))


def test_no_secrets_names_the_source() -> None:
    with pytest.raises(ConfigError, match=r"'src-1'.*no secrets"):
        build_verifier(source("stripe"))


def test_unresolvable_secret_names_the_source(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SB_TEST_NOT_SET", raising=False)
    with pytest.raises(ConfigError, match=r"'src-1'.*SB_TEST_NOT_SET"):
        build_verifier(source("stripe", SecretRef(env="SB_TEST_NOT_SET")))
    with pytest.raises(ConfigError, match=r"'src-1'.*cannot read"):
        build_verifier(source("stripe", SecretRef(file=tmp_path / "absent")))


def test_undecodable_secret_file_does_not_leak(tmp_path: Path) -> None:
    path = tmp_path / "bin.secret"
    path.write_bytes(b"abc\xffSECRETPART")
    path.chmod(0o600)
    with pytest.raises(ConfigError) as exc:
        build_verifier(source("github", SecretRef(file=path)))
    assert "'src-1'" in str(exc.value)
    assert "SECRETPART" not in str(exc.value) and "\\xff" not in str(exc.value)
    assert exc.value.__cause__ is None and exc.value.__suppress_context__


@pytest.mark.parametrize("scheme", sorted(CLASSES))
def test_unknown_option_names_source_and_key(scheme: str, env_secrets: tuple[SecretRef, SecretRef]) -> None:
    options = {**OPTIONS.get(scheme, {}), "tolerance_secs": 5}
    with pytest.raises(ConfigError, match=r"'src-1'.*'tolerance_secs'"):
        build_verifier(source(scheme, *env_secrets, **options))


def test_bad_standard_webhooks_secret_is_refused_without_leaking(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SB_TEST_BAD", "whsec_***not-base64-at-all***")
    with pytest.raises(ConfigError) as exc:
        build_verifier(source("standard_webhooks", SecretRef(env="SB_TEST_BAD")))
    assert "'src-1'" in str(exc.value)
    assert "not-base64-at-all" not in str(exc.value)


def test_duplicate_secrets_are_fine(env_secrets: tuple[SecretRef, SecretRef]) -> None:
    verifier = build_verifier(source("stripe", env_secrets[0], env_secrets[0]))
    body = b'{"id": "evt_1"}'
    assert verifier.verify(sign("stripe", WHSEC, body, now=NOW), body, NOW)


def test_sign_unknown_scheme() -> None:
    with pytest.raises(ConfigError):
        sign("paypal", "s", b"", now=NOW)


@pytest.mark.parametrize("value", ["fifteen-chars!!", "whsec_0123456789abcde"])
def test_a_secret_too_short_to_keep_forgeries_out_is_refused_without_showing_it(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only an empty secret was refused: "a" (or whsec_ with a 1-byte key) was taken, and one captured signed
    request let its key be found offline and every webhook of the source forged (found in review)."""
    monkeypatch.setenv("SB_SHORT_SECRET", value)
    with pytest.raises(ConfigError, match=r"secret #1 \(env:SB_SHORT_SECRET\) is shorter than 16") as caught:
        build_verifier(source("github", SecretRef(env="SB_SHORT_SECRET")))
    assert value not in caught.value.message
    monkeypatch.setenv("SB_SHORT_SECRET", value + "x")
    build_verifier(source("github", SecretRef(env="SB_SHORT_SECRET")))  # 16: taken
