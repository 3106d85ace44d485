"""GitHub ``X-Hub-Signature-256`` verification."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from switchboard.errors import ConfigError, InvalidRequest, SignatureError, SwitchboardError
from switchboard.signatures import github
from switchboard.signatures.base import Verified

SECRET = "It's a Secret to Everybody"
OTHER = "another-secret-for-rotation"
THIRD = "not-configured"
NOW = 1_700_000_000.0
BODY = json.dumps({"ref": "refs/heads/main", "repository": {"full_name": "octo/hello"}}).encode()
DELIVERY = "72d3162e-cc78-11e3-81ab-4c9367dc0958"


def verifier(*secrets: str, **options: object) -> github.GitHubVerifier:
    return github.build("gh", list(secrets or (SECRET,)), options)


def signed(secret: str = SECRET, body: bytes = BODY) -> dict[str, str]:
    return github.sign(secret, body, now=NOW, event_id=DELIVERY, event_type="push")


def test_github_documented_example() -> None:
    # From GitHub's "Validating webhook deliveries" documentation.
    headers = github.sign("It's a Secret to Everybody", b"Hello, World!", now=NOW, sha1=False)
    assert headers["x-hub-signature-256"] == ("sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17")


def test_valid_signature_extracts_fields() -> None:
    assert verifier().verify(signed(), BODY, NOW) == Verified(DELIVERY, "push", None, "", 0)


def test_any_body_verifies_without_parsing() -> None:
    body = b"payload=%7B%22zen%22%3A%22Keep+it+logically+awesome.%22%7D"
    assert verifier().verify(signed(body=body), body, NOW).event_id == DELIVERY


def test_no_timestamp_is_checked() -> None:
    assert verifier().verify(signed(), BODY, NOW + 10 * 365 * 86400)


def test_missing_event_header_gives_empty_type() -> None:
    headers = signed()
    del headers["x-github-event"]
    assert verifier().verify(headers, BODY, NOW).event_type == ""


def test_tampered_body() -> None:
    with pytest.raises(SignatureError) as exc:
        verifier().verify(signed(), BODY + b" ", NOW)
    assert exc.value.reason == "SIGNATURE_MISMATCH"
    assert exc.value.metadata == {"header": "x-hub-signature-256"}


def test_wrong_secret() -> None:
    with pytest.raises(SignatureError) as exc:
        verifier().verify(signed(OTHER), BODY, NOW)
    assert exc.value.reason == "SIGNATURE_MISMATCH"


def test_missing_header() -> None:
    headers = {"x-github-delivery": DELIVERY, "x-github-event": "push"}
    with pytest.raises(SignatureError) as exc:
        verifier().verify(headers, BODY, NOW)
    assert exc.value.reason == "SIGNATURE_HEADER_MISSING"
    assert exc.value.metadata == {"header": "x-hub-signature-256"}


@pytest.mark.parametrize(
    "value",
    [
        "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",  # no prefix
        "sha1=" + "a" * 64,
        "sha256=" + "a" * 63,
        "sha256=" + "g" * 64,
        "sha256=" + "a" * 66,
        "sha256 = " + "a" * 64,
        "sha256=" + "٣" * 64,
    ],
)
def test_malformed_header(value: str) -> None:
    headers = signed() | {"x-hub-signature-256": value}
    with pytest.raises(SignatureError) as exc:
        verifier().verify(headers, BODY, NOW)
    assert exc.value.reason == "SIGNATURE_HEADER_MALFORMED"
    assert exc.value.metadata == {"header": "x-hub-signature-256"}


def test_uppercase_prefix_and_hex_accepted() -> None:
    headers = signed()
    headers["x-hub-signature-256"] = headers["x-hub-signature-256"].upper()
    assert verifier().verify(headers, BODY, NOW)


def test_sha1_refused_by_default() -> None:
    headers = signed()
    del headers["x-hub-signature-256"]
    with pytest.raises(SignatureError) as exc:
        verifier().verify(headers, BODY, NOW)
    assert exc.value.reason == "SIGNATURE_SCHEME_REFUSED"
    assert exc.value.metadata == {"header": "x-hub-signature"}


def test_sha1_accepted_when_allowed() -> None:
    headers = signed()
    del headers["x-hub-signature-256"]
    v = verifier(SECRET, allow_sha1=True)
    assert v.verify(headers, BODY, NOW).event_id == DELIVERY
    expected = "sha1=" + hmac.new(SECRET.encode(), BODY, hashlib.sha1).hexdigest()
    assert headers["x-hub-signature"] == expected
    with pytest.raises(SignatureError) as exc:
        v.verify(headers, BODY + b"x", NOW)
    assert exc.value.reason == "SIGNATURE_MISMATCH"
    assert exc.value.metadata == {"header": "x-hub-signature"}
    with pytest.raises(SignatureError) as exc:
        v.verify(headers | {"x-hub-signature": "sha1=abc"}, BODY, NOW)
    assert exc.value.reason == "SIGNATURE_HEADER_MALFORMED"


def test_sha256_wins_over_sha1() -> None:
    # A valid legacy signature cannot rescue a wrong SHA-256 one.
    headers = signed() | {"x-hub-signature-256": "sha256=" + "0" * 64}
    with pytest.raises(SignatureError) as exc:
        verifier(SECRET, allow_sha1=True).verify(headers, BODY, NOW)
    assert exc.value.reason == "SIGNATURE_MISMATCH"


def test_missing_delivery_is_event_id_missing() -> None:
    headers = signed()
    for value in (None, "", "  "):
        if value is None:
            headers.pop("x-github-delivery", None)
        else:
            headers["x-github-delivery"] = value
        with pytest.raises(InvalidRequest) as exc:
            verifier().verify(headers, BODY, NOW)
        assert exc.value.reason == "EVENT_ID_MISSING"


def test_rotation() -> None:
    v = verifier(SECRET, OTHER)
    assert v.verify(signed(SECRET), BODY, NOW)
    assert v.verify(signed(OTHER), BODY, NOW)
    with pytest.raises(SignatureError) as exc:
        v.verify(signed(THIRD), BODY, NOW)
    assert exc.value.reason == "SIGNATURE_MISMATCH"


def test_options() -> None:
    with pytest.raises(ConfigError, match=r"'gh'.*'allow_sha1'"):
        verifier(SECRET, allow_sha1="yes")
    with pytest.raises(ConfigError, match=r"'gh'.*'tolerance_seconds'"):
        verifier(SECRET, tolerance_seconds=300)


def test_secret_never_in_errors_or_repr() -> None:
    v = verifier(SECRET, OTHER)
    cases = [signed(THIRD), {}, signed() | {"x-hub-signature-256": "sha256=zz"}, {"x-hub-signature": "sha1=1"}]
    for headers in cases:
        with pytest.raises(SwitchboardError) as exc:
            v.verify(headers, BODY, NOW)
        for text in (str(exc.value), repr(exc.value), repr(exc.value.metadata)):
            assert SECRET not in text and OTHER not in text
    assert SECRET not in repr(v)
