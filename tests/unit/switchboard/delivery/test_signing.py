"""Outbound Standard Webhooks signing, checked against the spec's example and two independent verifiers'
APIs (standardwebhooks, svix), plus rotation and the secrets."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

import pytest
import standardwebhooks
import svix.webhooks

from switchboard.delivery.signing import USER_AGENT, check_secret, delivery_headers, new_secret
from switchboard.errors import InvalidRequest, SignatureError, SwitchboardError
from switchboard.signatures.standard_webhooks import StandardWebhooksVerifier

# The example of the Standard Webhooks specification (and Svix's documentation).
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

BODY = b'{"type":"invoice.paid","data":{"object":{"id":"in_1","amount_due":1500}},"note":"caf\xc3\xa9"}'


def test_spec_known_answer() -> None:
    headers = delivery_headers(SPEC_ID, SPEC_BODY, [SPEC_SECRET], SPEC_TIMESTAMP)
    assert headers == {
        "webhook-id": SPEC_ID,
        "webhook-timestamp": str(SPEC_TIMESTAMP),
        "webhook-signature": SPEC_SIGNATURE,
    }


def test_signature_is_hmac_sha256_of_id_timestamp_body() -> None:
    secret = new_secret()
    headers = delivery_headers("msg_abc", BODY, [secret], 1_700_000_000.9)
    assert headers["webhook-timestamp"] == "1700000000"  # whole seconds
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, b"msg_abc.1700000000." + BODY, hashlib.sha256).digest()
    assert headers["webhook-signature"] == "v1," + base64.b64encode(mac).decode()


def test_user_agent_names_the_version() -> None:
    assert USER_AGENT.startswith("Switchboard-Webhooks/")
    assert USER_AGENT != "Switchboard-Webhooks/"
    assert "user-agent" not in delivery_headers("msg_1", b"{}", [new_secret()], time.time())  # the sender's


def test_verifies_with_the_standardwebhooks_library() -> None:
    secret = new_secret()
    headers = delivery_headers("msg_std", BODY, [secret], time.time())
    assert standardwebhooks.Webhook(secret).verify(BODY, headers)["data"]["object"]["amount_due"] == 1500
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(new_secret()).verify(BODY, headers)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(secret).verify(BODY + b" ", headers)


def test_verifies_with_svix() -> None:
    secret = new_secret()
    headers = delivery_headers("msg_svix", BODY, [secret], time.time())
    svix.webhooks.Webhook(secret).verify(BODY, headers)
    # svix also takes the svix-* header names.
    svix.webhooks.Webhook(secret).verify(
        BODY,
        {
            "svix-id": headers["webhook-id"],
            "svix-timestamp": headers["webhook-timestamp"],
            "svix-signature": headers["webhook-signature"],
        },
    )
    with pytest.raises(svix.webhooks.WebhookVerificationError):
        svix.webhooks.Webhook(new_secret()).verify(BODY, headers)


def test_rotation_signs_with_every_secret_and_either_verifies() -> None:
    new, old, stranger = new_secret(), new_secret(), new_secret()
    headers = delivery_headers("msg_rot", BODY, [new, old], time.time())
    entries = headers["webhook-signature"].split(" ")
    assert len(entries) == 2 and all(e.startswith("v1,") for e in entries)
    for secret in (new, old):
        standardwebhooks.Webhook(secret).verify(BODY, headers)
        svix.webhooks.Webhook(secret).verify(BODY, headers)
        StandardWebhooksVerifier("s", [secret]).verify(headers, BODY, float(headers["webhook-timestamp"]))
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(stranger).verify(BODY, headers)
    with pytest.raises(svix.webhooks.WebhookVerificationError):
        svix.webhooks.Webhook(stranger).verify(BODY, headers)
    with pytest.raises(SignatureError):
        StandardWebhooksVerifier("s", [stranger]).verify(headers, BODY, float(headers["webhook-timestamp"]))


def test_a_secret_listed_twice_signs_once() -> None:
    secret = new_secret()
    assert len(delivery_headers("msg_1", b"{}", [secret, secret], 1.0)["webhook-signature"].split()) == 1


def test_stale_timestamps_fail_verification() -> None:
    secret = new_secret()
    headers = delivery_headers("msg_old", BODY, [secret], time.time() - 3600)
    with pytest.raises(standardwebhooks.WebhookVerificationError, match="too old"):
        standardwebhooks.Webhook(secret).verify(BODY, headers)


def test_new_secret_format() -> None:
    secrets = {new_secret() for _ in range(50)}
    assert len(secrets) == 50
    for secret in secrets:
        assert secret.startswith("whsec_")
        assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 32
        assert check_secret(secret) == secret


@pytest.mark.parametrize(
    "secret",
    [
        "",
        "whsec_",
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",  # no prefix
        "whsec_not base64!",
        "whsec_" + base64.b64encode(b"x" * 23).decode(),  # too short
        "whsec_" + base64.b64encode(b"x" * 65).decode(),  # too long
    ],
)
def test_check_secret_refuses_bad_secrets_without_echoing_them(secret: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        check_secret(secret)
    assert info.value.reason == "SIGNING_SECRET_INVALID"
    assert info.value.metadata == {"field": "secret"}
    if secret.removeprefix("whsec_"):
        assert secret.removeprefix("whsec_") not in info.value.message


def test_check_secret_accepts_the_limits() -> None:
    for size in (24, 64):
        secret = "whsec_" + base64.b64encode(b"k" * size).decode()
        assert check_secret(secret) == secret


@pytest.mark.parametrize(
    ("delivery_id", "secrets", "now", "words"),
    [
        ("", ["whsec_" + "A" * 44], 1.0, "delivery id"),  # sign() would invent a random id
        ("msg 1", ["whsec_" + "A" * 44], 1.0, "delivery id"),
        ("msg\r\n1", ["whsec_" + "A" * 44], 1.0, "delivery id"),
        ("msg_1", [], 1.0, "no signing secret"),
        ("msg_1", "whsec_" + "A" * 44, 1.0, "not one string"),
        ("msg_1", ["whsec_%%%"], 1.0, "not base64"),
        ("msg_1", ["whsec_" + "A" * 44], float("nan"), "finite"),
        ("msg_1", ["whsec_" + "A" * 44], float("inf"), "finite"),
        ("msg_1", ["whsec_" + "A" * 44], -1.0, "finite"),
        ("msg_1", [new_secret() for _ in range(33)], 1.0, "more than 32"),
    ],
)
def test_delivery_headers_refuses_what_it_cannot_sign(
    delivery_id: str, secrets: list[str], now: float, words: str
) -> None:
    with pytest.raises(SwitchboardError) as info:
        delivery_headers(delivery_id, b"{}", secrets, now)
    assert info.value.reason == "SIGNING_FAILED"
    assert words in info.value.message
    assert "%%%" not in info.value.message
