"""The REST API at the edge, for real: the rendered configuration with an ``ApiEdge`` in Envoy 1.40, over HTTPS,
in front of a small in-process gRPC ``webhooks.v1.Subscriptions`` (and the fake ingest of
``test_edge_envoy``) that records every call with its metadata and answers as each request asks
(``x-test-answer``). Tokens are minted with the local stack's keys (``switchboard_devstack.jwt``).
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import shutil
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from google.protobuf import timestamp_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from webhooks.v1 import ingest_pb2_grpc, subscriptions_pb2, subscriptions_pb2_grpc

from edge import envoy_config
from edge.envoy_config import render_envoy_config, write_envoy_config
from switchboard.config import PlatformConfig, parse_config
from switchboard_devstack.envoy import EnvoyProcess
from switchboard_devstack.jwt import LocalJwks, ensure_local_jwks, jwt_dir, local_api_edge, mint_token
from switchboard_devstack.ports import free_port
from switchboard_devstack.tls import ensure_local_tls
from tests.integration.test_edge_envoy import (
    DESCRIPTOR_SET,
    ERROR_INFO,
    TEST_ID,
    Edge,
    FakeIngest,
    admin_post,
    assert_error,
    assert_no_grpc_headers,
    curl_h2,
    tagged,
)

pytestmark = pytest.mark.integration

ANSWER = "x-test-answer"
CLIENT = "x-switchboard-client"
VIA_EDGE = "x-switchboard-via-edge"
SUB_ID = "sub_0123"
PB = subscriptions_pb2


# -- the fake control service -----------------------------------------------------------------------------
@dataclass
class Call:
    method: str
    request: Any
    metadata: list[tuple[str, str | bytes]]
    time_remaining: float | None

    def values(self, name: str) -> list[str | bytes]:
        return [v for k, v in self.metadata if k == name]

    def one(self, name: str) -> str | bytes:
        found = self.values(name)
        assert len(found) == 1, f"{name}: {found}"
        return found[0]


def _ts(seconds: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds)


@dataclass
class FakeSubscriptions(subscriptions_pb2_grpc.SubscriptionsServicer):  # type: ignore[misc]
    """Records every call; answers per the request's ``x-test-answer`` header (arrives as metadata)."""

    calls: list[Call] = field(default_factory=list)

    async def _record(self, method: str, request: Any, context: Any) -> dict[str, str | bytes]:
        metadata = list(context.invocation_metadata())
        self.calls.append(Call(method, request, metadata, context.time_remaining()))
        answers = dict(metadata)
        answer = answers.get(ANSWER, "ok")
        if answer == "not_found":
            status = status_pb2.Status(code=code_pb2.NOT_FOUND, message="no subscription sub_missing")
            info = error_details_pb2.ErrorInfo(reason="NOT_FOUND", domain="switchboard", metadata={"id": "sub_missing"})
            status.details.add().Pack(info)
            context.set_trailing_metadata((("grpc-status-details-bin", status.SerializeToString()),))
            await context.abort(grpc.StatusCode.NOT_FOUND, status.message)
        if answer == "permission_denied":
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "not your subscription")
        if answer == "invalid":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "callback_url: not https")
        return answers

    def subscription(self, client: str | bytes, **fields: Any) -> Any:
        return PB.Subscription(
            id=SUB_ID,
            client_id=str(client),
            status=PB.SUBSCRIPTION_STATUS_ENABLED,
            created_at=_ts(1_700_000_000),
            **fields,
        )

    async def CreateSubscription(self, request: Any, context: Any) -> Any:
        md = await self._record("CreateSubscription", request, context)
        sub = self.subscription(md.get(CLIENT, ""), callback_url=request.subscription.callback_url)
        return PB.CreateSubscriptionResponse(subscription=sub, secret="whsec_test")

    async def GetSubscription(self, request: Any, context: Any) -> Any:
        md = await self._record("GetSubscription", request, context)
        return PB.GetSubscriptionResponse(subscription=self.subscription(md.get(CLIENT, "")))

    async def ListSubscriptions(self, request: Any, context: Any) -> Any:
        md = await self._record("ListSubscriptions", request, context)
        return PB.ListSubscriptionsResponse(subscriptions=[self.subscription(md.get(CLIENT, ""))], next_page_token="n")

    async def UpdateSubscription(self, request: Any, context: Any) -> Any:
        md = await self._record("UpdateSubscription", request, context)
        return PB.UpdateSubscriptionResponse(
            subscription=self.subscription(md.get(CLIENT, ""), description=request.subscription.description)
        )

    async def DeleteSubscription(self, request: Any, context: Any) -> Any:
        await self._record("DeleteSubscription", request, context)
        return PB.DeleteSubscriptionResponse()

    async def RotateSubscriptionSecret(self, request: Any, context: Any) -> Any:
        await self._record("RotateSubscriptionSecret", request, context)
        return PB.RotateSubscriptionSecretResponse(secret="whsec_new", previous_secret_expires_at=_ts(1_700_003_600))

    async def ListDeliveries(self, request: Any, context: Any) -> Any:
        await self._record("ListDeliveries", request, context)
        delivery = PB.Delivery(id="msg_1", subscription_id=request.subscription_id, status=PB.DELIVERY_STATUS_FAILED)
        return PB.ListDeliveriesResponse(deliveries=[delivery])

    async def ListDeliveryAttempts(self, request: Any, context: Any) -> Any:
        await self._record("ListDeliveryAttempts", request, context)
        return PB.ListDeliveryAttemptsResponse()

    def by_test_id(self, test_id: str) -> Call:
        found = [c for c in self.calls if dict(c.metadata).get(TEST_ID) == test_id]
        assert len(found) == 1, f"expected one call with {TEST_ID}={test_id}, got {len(found)}"
        return found[0]

    def assert_never_received(self, *test_ids: str) -> None:
        assert test_ids
        reached = [dict(c.metadata).get(TEST_ID) for c in self.calls if dict(c.metadata).get(TEST_ID) in test_ids]
        assert not reached, f"reached the control service although refused at the edge: {TEST_ID} {reached}"


# -- one edge with the API ----------------------------------------------------------------------------------
@dataclass
class ApiStack(Edge):
    control: FakeSubscriptions
    control_server: Any  # grpc.aio.Server
    jwks: LocalJwks

    def token(self, client_id: str = "client_a", **kw: Any) -> str:
        return mint_token(self.jwks, client_id, **kw)

    def auth(self, client_id: str = "client_a", **headers: str) -> tuple[str, dict[str, str]]:
        """A tagged request's headers with a valid bearer token for ``client_id``."""
        return tagged(authorization=f"Bearer {self.token(client_id)}", **headers)


def api_config(tmp: Path) -> PlatformConfig:
    raw = {
        "platform": {"data_dir": str(tmp / "var")},
        "edge": {"https_port": free_port(), "admin_port": free_port()},
        "ingest": {"port": free_port(), "confirm_timeout_seconds": 0.5},
        "control": {"port": free_port()},
        "sources": [
            {"name": name, "scheme": "github", "secrets": [{"env": "SWITCHBOARD_TEST_EDGE_SECRET"}], **extra}
            for name, extra in (("alpha", {}), ("locked", {"allow_cidrs": ["127.0.0.1/32"]}))
        ],
    }
    return parse_config(raw, tmp / "switchboard.toml")


async def start_api(cfg: PlatformConfig) -> ApiStack:
    ingest, control = FakeIngest(), FakeSubscriptions()
    server = grpc.aio.server()
    ingest_pb2_grpc.add_IngestServicer_to_server(ingest, server)
    server.add_insecure_port(f"{cfg.ingest.host}:{cfg.ingest.port}")
    control_server = grpc.aio.server()
    subscriptions_pb2_grpc.add_SubscriptionsServicer_to_server(control, control_server)
    control_server.add_insecure_port(f"{cfg.control.host}:{cfg.control.port}")
    await server.start()
    await control_server.start()
    jwks = ensure_local_jwks(jwt_dir(cfg))
    ca, cert, key = ensure_local_tls(cfg.tls_dir)
    envoy_dir = cfg.data_dir / "envoy"
    path = write_envoy_config(
        cfg,
        envoy_dir / "envoy.json",
        descriptor_set=DESCRIPTOR_SET,
        tls_cert=cert,
        tls_key=key,
        access_log=cfg.data_dir / "envoy-access.log",
        api=local_api_edge(cfg, jwks),
    )
    envoy = EnvoyProcess(path, envoy_dir, cfg.edge.admin_port)
    envoy.start()
    try:
        await asyncio.to_thread(envoy.wait_ready, 30)
    except BaseException:
        envoy.kill()
        await server.stop(0)
        await control_server.stop(0)
        raise
    return ApiStack(
        cfg=cfg, ca=ca, ingest=ingest, server=server, envoy=envoy,
        control=control, control_server=control_server, jwks=jwks,
    )  # fmt: skip


async def stop_api(stack: ApiStack) -> None:
    try:
        stack.envoy.kill()
    finally:
        await stack.server.stop(0)
        await stack.control_server.stop(0)


@pytest.fixture(scope="module")
async def api(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ApiStack]:
    stack = await start_api(api_config(tmp_path_factory.mktemp("api")))
    try:
        yield stack
    finally:
        await stop_api(stack)


def sign_claims(jwks: LocalJwks, claims: dict[str, Any], header: dict[str, Any] | None = None) -> str:
    """A token with exactly these claims (``mint_token`` always sets iss, aud, iat, exp)."""
    key = serialization.load_pem_private_key(jwks.private_key_path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    head = header or {"alg": "ES256", "typ": "JWT", "kid": jwks.kid}
    signing_input = f"{b64(json.dumps(head).encode())}.{b64(json.dumps(claims).encode())}"
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return f"{signing_input}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# -- each RPC through REST, with the caller's identity -----------------------------------------------------
async def test_create_reaches_the_control_service_as_the_tokens_subject(api: ApiStack) -> None:
    test_id, headers = api.auth("client_a", **{"content-type": "application/json"})
    body = {
        "callback_url": "https://hooks.example.test/in",
        "description": "invoices",
        "event_types": ["invoice.*"],
        "sources": ["alpha"],
        "metadata": {"team": "billing"},
        "retry_policy": {"max_attempts": 5, "schedule": ["5s", "300s"]},
        "tier": "TIER_HIGH",
    }
    async with api.client() as client:
        resp = await client.post("/api/v1/webhooks?check_reachable=true", json=body, headers=headers)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/json"
    assert_no_grpc_headers(resp)
    assert resp.json() == {
        "subscription": {
            "id": SUB_ID,
            "callback_url": "https://hooks.example.test/in",
            "status": "SUBSCRIPTION_STATUS_ENABLED",
            "client_id": "client_a",
            "created_at": "2023-11-14T22:13:20Z",
        },
        "secret": "whsec_test",
    }
    call = api.control.by_test_id(test_id)
    assert call.method == "CreateSubscription"
    assert call.one(CLIENT) == "client_a"
    assert call.one(VIA_EDGE) == "1"
    # The credential stops at the edge.
    assert not call.values("authorization")
    sub = call.request.subscription
    assert call.request.check_reachable is True
    assert sub.callback_url == "https://hooks.example.test/in"
    assert list(sub.event_types) == ["invoice.*"] and list(sub.sources) == ["alpha"]
    assert dict(sub.metadata) == {"team": "billing"}
    assert sub.retry_policy.max_attempts == 5
    assert [d.seconds for d in sub.retry_policy.schedule] == [5, 300]
    assert sub.tier == PB.TIER_HIGH
    # The control service gets a deadline a little shorter than the API route's timeout.
    remaining = call.time_remaining
    assert remaining is not None
    assert envoy_config.API_ROUTE_TIMEOUT_SECONDS - 2 < remaining < envoy_config.API_ROUTE_TIMEOUT_SECONDS


async def test_get_list_update_delete_rotate_deliveries(api: ApiStack) -> None:
    async with api.client() as client:
        test_id, headers = api.auth("client_b")
        resp = await client.get(f"/api/v1/webhooks/{SUB_ID}", headers=headers)
        assert resp.status_code == 200, resp.text
        assert resp.json()["subscription"]["client_id"] == "client_b"
        call = api.control.by_test_id(test_id)
        assert (call.method, call.request.id, call.one(CLIENT), call.one(VIA_EDGE)) == (
            "GetSubscription", SUB_ID, "client_b", "1",
        )  # fmt: skip

        # The id comes from the path only: a query parameter of the same name changes nothing.
        test_id, headers = api.auth("client_b")
        resp = await client.get(f"/api/v1/webhooks/{SUB_ID}?id=sub_other", headers=headers)
        assert resp.status_code == 200, resp.text
        assert api.control.by_test_id(test_id).request.id == SUB_ID

        test_id, headers = api.auth("client_b")
        resp = await client.get("/api/v1/webhooks?page_size=5&page_token=abc", headers=headers)
        assert resp.status_code == 200, resp.text
        assert resp.json()["next_page_token"] == "n"
        call = api.control.by_test_id(test_id)
        assert (call.method, call.request.page_size, call.request.page_token) == ("ListSubscriptions", 5, "abc")

        test_id, headers = api.auth("client_b")
        patch = {"subscription": {"description": "renamed"}, "update_mask": "description"}
        resp = await client.patch(f"/api/v1/webhooks/{SUB_ID}", json=patch, headers=headers)
        assert resp.status_code == 200, resp.text
        assert resp.json()["subscription"]["description"] == "renamed"
        call = api.control.by_test_id(test_id)
        assert call.method == "UpdateSubscription"
        assert call.request.id == SUB_ID
        assert call.request.subscription.description == "renamed"
        assert list(call.request.update_mask.paths) == ["description"]
        assert call.one(CLIENT) == "client_b"

        test_id, headers = api.auth("client_b")
        resp = await client.delete(f"/api/v1/webhooks/{SUB_ID}", headers=headers)
        assert resp.status_code == 200, resp.text
        assert resp.json() == {}
        call = api.control.by_test_id(test_id)
        assert (call.method, call.request.id, call.one(CLIENT)) == ("DeleteSubscription", SUB_ID, "client_b")

        test_id, headers = api.auth("client_b")
        resp = await client.post(f"/api/v1/webhooks/{SUB_ID}/rotate-secret", json={"overlap": "3600s"}, headers=headers)
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"secret": "whsec_new", "previous_secret_expires_at": "2023-11-14T23:13:20Z"}
        call = api.control.by_test_id(test_id)
        assert call.method == "RotateSubscriptionSecret"
        assert (call.request.id, call.request.overlap.seconds) == (SUB_ID, 3600)

        test_id, headers = api.auth("client_b")
        resp = await client.get(
            f"/api/v1/webhooks/{SUB_ID}/deliveries?status=DELIVERY_STATUS_FAILED&page_size=10", headers=headers
        )
        assert resp.status_code == 200, resp.text
        assert resp.json() == {
            "deliveries": [{"id": "msg_1", "subscription_id": SUB_ID, "status": "DELIVERY_STATUS_FAILED"}]
        }
        call = api.control.by_test_id(test_id)
        assert call.method == "ListDeliveries"
        assert call.request.subscription_id == SUB_ID
        assert call.request.status == PB.DELIVERY_STATUS_FAILED
        assert call.request.page_size == 10
        assert call.one(CLIENT) == "client_b"

        test_id, headers = api.auth("client_b")
        resp = await client.get(f"/api/v1/webhooks/{SUB_ID}/attempts?delivery_id=msg_1", headers=headers)
        assert resp.status_code == 200, resp.text
        call = api.control.by_test_id(test_id)
        assert (call.method, call.request.subscription_id, call.request.delivery_id) == (
            "ListDeliveryAttempts", SUB_ID, "msg_1",
        )  # fmt: skip


# -- tokens -------------------------------------------------------------------------------------------------
async def test_without_a_token_401_and_nothing_reaches_the_service(api: ApiStack) -> None:
    sent = []
    async with api.client() as client:
        for method, path in (
            ("POST", "/api/v1/webhooks"),
            ("GET", "/api/v1/webhooks"),
            ("GET", f"/api/v1/webhooks/{SUB_ID}"),
            ("DELETE", f"/api/v1/webhooks/{SUB_ID}"),
            ("GET", "/api/v1/nothing-here"),
        ):
            test_id, headers = tagged(**{"content-type": "application/json"})
            sent.append(test_id)
            resp = await client.request(method, path, content=b"{}" if method == "POST" else None, headers=headers)
            body = assert_error(resp, 401, 16, "UNAUTHENTICATED")
            assert body["message"] == "Jwt is missing"
            assert resp.headers["www-authenticate"].startswith("Bearer")
    api.control.assert_never_received(*sent)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("bad_signature", "Jwt verification fails"),
        ("tampered_subject", "Jwt verification fails"),
        ("expired", "Jwt is expired"),
        ("wrong_issuer", "Jwt issuer is not configured"),
        ("no_expiry", "Jwt verification fails"),  # require_expiration
        ("alg_none", "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"),
        ("not_a_jwt", "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"),
        ("basic_scheme", "Jwt is missing"),
    ],
)
async def test_tokens_that_do_not_verify_are_401(api: ApiStack, tmp_path: Path, case: str, message: str) -> None:
    jwks = api.jwks
    other_key = ensure_local_jwks(tmp_path / "other")
    now = time.time()
    if case == "bad_signature":  # signed by another key, under this key's kid
        authorization = f"Bearer {mint_token(replace(other_key, kid=jwks.kid), 'client_a')}"
    elif case == "tampered_subject":
        head, _, sig = mint_token(jwks, "client_a").split(".")
        claims = {"iss": jwks.issuer, "aud": jwks.audience, "sub": "client_admin", "exp": int(now) + 600}
        authorization = f"Bearer {head}.{b64(json.dumps(claims).encode())}.{sig}"
    elif case == "expired":  # well past the accepted clock skew
        authorization = f"Bearer {mint_token(jwks, 'client_a', ttl_seconds=600, now=now - 3600)}"
    elif case == "wrong_issuer":
        authorization = f"Bearer {mint_token(replace(jwks, issuer='someone-else'), 'client_a')}"
    elif case == "no_expiry":
        authorization = f"Bearer {sign_claims(jwks, {'iss': jwks.issuer, 'aud': jwks.audience, 'sub': 'client_a'})}"
    elif case == "alg_none":
        claims = {"iss": jwks.issuer, "aud": jwks.audience, "sub": "client_a", "exp": int(now) + 600}
        unsigned = f"{b64(json.dumps({'alg': 'none', 'typ': 'JWT'}).encode())}.{b64(json.dumps(claims).encode())}"
        authorization = f"Bearer {unsigned}."
    elif case == "not_a_jwt":
        authorization = "Bearer not-a-token"
    else:
        authorization = f"Basic {mint_token(jwks, 'client_a')}"
    test_id, headers = tagged(authorization=authorization)
    async with api.client() as client:
        resp = await client.get(f"/api/v1/webhooks/{SUB_ID}", headers=headers)
    body = assert_error(resp, 401, 16, "UNAUTHENTICATED")
    assert body["message"] == message
    api.control.assert_never_received(test_id)


async def test_token_for_another_audience_is_403(api: ApiStack) -> None:
    test_id, headers = tagged(authorization=f"Bearer {mint_token(replace(api.jwks, audience='other-api'), 'client_a')}")
    async with api.client() as client:
        resp = await client.get("/api/v1/webhooks", headers=headers)
    body = assert_error(resp, 403, 7, "PERMISSION_DENIED")
    assert body["message"] == "Audiences in Jwt are not allowed"
    api.control.assert_never_received(test_id)


async def test_access_token_in_the_query_is_not_accepted(api: ApiStack) -> None:
    token = api.token("client_a")
    async with api.client() as client:
        for query in (f"access_token={token}", f"token={token}", f"jwt={token}"):
            test_id, headers = tagged()
            resp = await client.get(f"/api/v1/webhooks?{query}", headers=headers)
            assert_error(resp, 401, 16, "UNAUTHENTICATED")
            api.control.assert_never_received(test_id)
        # Nor as a cookie.
        test_id, headers = tagged(cookie=f"access_token={token}; jwt={token}")
        resp = await client.get("/api/v1/webhooks", headers=headers)
        assert_error(resp, 401, 16, "UNAUTHENTICATED")
        api.control.assert_never_received(test_id)


async def test_a_client_cannot_choose_its_identity(api: ApiStack) -> None:
    forged = {CLIENT: "client_admin", VIA_EDGE: "0", "X-Switchboard-Client": "client_root"}
    async with api.client() as client:
        # With a valid token: the token's subject only, and the edge's marker only.
        test_id, headers = api.auth("client_a", **forged)
        resp = await client.get(f"/api/v1/webhooks/{SUB_ID}", headers=headers)
        assert resp.status_code == 200, resp.text
        call = api.control.by_test_id(test_id)
        assert call.values(CLIENT) == ["client_a"]
        assert call.values(VIA_EDGE) == ["1"]
        assert resp.json()["subscription"]["client_id"] == "client_a"

        # A token without a subject: no client at all (not the forged one).
        no_sub = sign_claims(api.jwks, {"iss": api.jwks.issuer, "aud": api.jwks.audience, "exp": int(time.time()) + 60})
        test_id, headers = tagged(authorization=f"Bearer {no_sub}", **forged)
        resp = await client.get(f"/api/v1/webhooks/{SUB_ID}", headers=headers)
        assert resp.status_code == 200, resp.text
        call = api.control.by_test_id(test_id)
        assert call.values(CLIENT) == []
        assert call.values(VIA_EDGE) == ["1"]

        # Without a token: refused, and nothing reaches the service.
        test_id, headers = tagged(**forged)
        resp = await client.get(f"/api/v1/webhooks/{SUB_ID}", headers=headers)
        assert_error(resp, 401, 16, "UNAUTHENTICATED")
        api.control.assert_never_received(test_id)

        # The webhook route never forwards them either (and needs no token).
        test_id, headers = tagged(**forged)
        resp = await client.post("/webhook/alpha", content=b"{}", headers=headers)
        assert resp.status_code == 200, resp.text
        md = api.ingest.by_test_id(test_id).metadata
        assert not [k for k in md if k.startswith("x-switchboard-")], md


# -- the rest of the edge's rules on the API ----------------------------------------------------------------
async def test_unknown_api_paths_and_methods_are_json_404(api: ApiStack) -> None:
    sent = []
    async with api.client() as client:
        for method, path in (
            ("GET", "/api/v1/nothing-here"),
            ("PUT", f"/api/v1/webhooks/{SUB_ID}"),
            ("POST", f"/api/v1/webhooks/{SUB_ID}"),
            ("GET", f"/api/v1/webhooks/{SUB_ID}/rotate-secret"),
            ("GET", "/api/v1/webhooks.v1.Subscriptions/GetSubscription"),
            ("POST", "/webhooks.v1.Subscriptions/GetSubscription"),
        ):
            test_id, headers = api.auth("client_a", **{"content-type": "application/json"})
            sent.append(test_id)
            resp = await client.request(method, path, content=b"{}", headers=headers)
            assert_error(resp, 404, 5, "NOT_FOUND")
        # Outside /api/v1/ there is no API (and no token is asked for).
        for path in ("/api/v1", "/api/v2/webhooks", "/api/webhooks"):
            resp = await client.get(path)
            assert_error(resp, 404, 5, "NOT_FOUND")
    api.control.assert_never_received(*sent)


async def test_unknown_query_parameters_and_body_path_collisions_are_400(api: ApiStack) -> None:
    sent = []
    async with api.client() as client:
        for method, path, body in (
            ("GET", "/api/v1/webhooks?page_sise=10", None),  # a typo is not silently dropped
            ("GET", f"/api/v1/webhooks?access_token={api.token()}", None),
            ("GET", f"/api/v1/webhooks/{SUB_ID}/deliveries?status=NOT_A_STATUS", None),
            ("GET", "/api/v1/webhooks?page_size=ten", None),
            ("GET", "/api/v1/webhooks?i%64=x", None),  # percent-encoded names (see test_edge_envoy)
            # The id in the path is the one acted on: the body cannot name another.
            ("PATCH", f"/api/v1/webhooks/{SUB_ID}", {"id": "sub_other", "subscription": {"description": "x"}}),
            ("POST", f"/api/v1/webhooks/{SUB_ID}/rotate-secret", {"id": "sub_other"}),
        ):
            test_id, headers = api.auth("client_a")
            sent.append(test_id)
            resp = await client.request(method, path, json=body, headers=headers)
            assert_error(resp, 400, 3, "BAD_REQUEST")
    api.control.assert_never_received(*sent)


async def test_body_limit_is_413(api: ApiStack) -> None:
    big = {"callback_url": "https://hooks.example.test/in", "description": "d" * envoy_config.API_MAX_BODY_BYTES}
    test_id, headers = api.auth("client_a", **{"content-type": "application/json"})
    async with api.client() as client:
        resp = await client.post("/api/v1/webhooks", json=big, headers=headers)
    assert_error(resp, 413, 3, "PAYLOAD_TOO_LARGE")
    api.control.assert_never_received(test_id)


async def test_malformed_json_is_400(api: ApiStack) -> None:
    test_id, headers = api.auth("client_a", **{"content-type": "application/json"})
    async with api.client() as client:
        resp = await client.post("/api/v1/webhooks", content=b'{"callback_url": ', headers=headers)
    assert resp.status_code == 400, resp.text
    assert_no_grpc_headers(resp)
    api.control.assert_never_received(test_id)


async def test_grpc_typed_requests_to_the_api_are_json_415(api: ApiStack) -> None:
    sent = []
    async with api.client() as client:
        for headers_extra in ({}, {"authorization": f"Bearer {api.token()}"}):
            test_id, headers = tagged(**{"content-type": "application/grpc", **headers_extra})
            sent.append(test_id)
            resp = await client.post("/api/v1/webhooks", content=b"\x00\x00\x00\x00\x00", headers=headers)
            assert_error(resp, 415, 3, "UNSUPPORTED_MEDIA_TYPE")
    api.control.assert_never_received(*sent)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is needed for HTTP/2 (httpx has no h2 here)")
async def test_http2(api: ApiStack) -> None:
    test_id, headers = api.auth("client_h2", **{"content-type": "application/json"})
    resp = await curl_h2(api, "/api/v1/webhooks", b'{"callback_url": "https://hooks.example.test/h2"}', headers)
    assert resp.http_version == "2"
    assert resp.status_code == 200, resp.text
    assert "grpc-" not in resp.verbose.lower()
    assert api.control.by_test_id(test_id).one(CLIENT) == "client_h2"
    # Refusals without a body: Envoy answers from the headers alone, and curl 7.88 now and then reports the
    # stream's reset after a complete answer (Envoy stops an upload it will not read) as an error.
    test_id, headers = tagged(**{"content-type": "application/json"})
    resp = await curl_h2(api, "/api/v1/webhooks", b"", headers)
    assert_error(resp, 401, 16, "UNAUTHENTICATED")
    api.control.assert_never_received(test_id)
    for content_type in ("application/grpc", "application/grpc+proto"):
        test_id, headers = tagged(**{"content-type": content_type})
        resp = await curl_h2(api, "/api/v1/webhooks", b"", headers)
        assert_error(resp, 415, 3, "UNSUPPORTED_MEDIA_TYPE")
        api.control.assert_never_received(test_id)


# -- the service's errors -----------------------------------------------------------------------------------
async def test_service_errors_keep_their_status_and_details(api: ApiStack) -> None:
    async with api.client() as client:
        _, headers = api.auth("client_a", **{ANSWER: "not_found"})
        resp = await client.get("/api/v1/webhooks/sub_missing", headers=headers)
        assert resp.status_code == 404, resp.text
        assert resp.headers["content-type"] == "application/json"
        assert_no_grpc_headers(resp)
        assert resp.json() == {
            "code": 5,
            "message": "no subscription sub_missing",
            "details": [
                {"@type": ERROR_INFO, "reason": "NOT_FOUND", "domain": "switchboard", "metadata": {"id": "sub_missing"}}
            ],
        }

        _, headers = api.auth("client_a", **{ANSWER: "permission_denied"})
        resp = await client.delete(f"/api/v1/webhooks/{SUB_ID}", headers=headers)
        assert resp.status_code == 403, resp.text
        assert_no_grpc_headers(resp)
        assert resp.json() == {"code": 7, "message": "not your subscription"}

        _, headers = api.auth("client_a", **{ANSWER: "invalid"})
        resp = await client.post("/api/v1/webhooks", json={"callback_url": "http://x"}, headers=headers)
        assert resp.status_code == 400, resp.text
        assert resp.json() == {"code": 3, "message": "callback_url: not https"}


async def test_webhooks_still_need_no_token(api: ApiStack) -> None:
    async with api.client() as client:
        test_id, headers = tagged()
        resp = await client.post("/webhook/alpha", content=b'{"id":"evt_1"}', headers=headers)
        assert resp.status_code == 200, resp.text
        assert api.ingest.by_test_id(test_id).source == "alpha"
        # A bearer token on a webhook is neither required nor checked: the provider's signature is.
        test_id, headers = tagged(authorization="Bearer not-a-token")
        resp = await client.post("/webhook/alpha", content=b"{}", headers=headers)
        assert resp.status_code == 200, resp.text
        assert api.ingest.by_test_id(test_id).metadata["authorization"] == "Bearer not-a-token"
        # And the webhook rules hold: only POST, unknown sources are 404.
        assert_error(await client.get("/webhook/alpha"), 405, 12, "METHOD_NOT_ALLOWED")
        assert_error(await client.post("/webhook/nope", content=b"{}"), 404, 5, "NOT_FOUND")
    # An allowlist's 403 keeps its own reason (the API's 403 mapper applies to /api/v1/ paths only).
    test_id, headers = tagged()
    async with api.client("127.0.0.3") as outsider:
        resp = await outsider.post("/webhook/locked", content=b"{}", headers=headers)
    assert_error(resp, 403, 7, "IP_NOT_ALLOWED")
    api.ingest.assert_never_received(test_id)


async def test_path_tricks_do_not_skip_the_token(api: ApiStack) -> None:
    """Envoy normalises the path (merged slashes, dot segments) before routing, and only the API route
    leads to the control service, always with the token required."""
    paths = ("/api//v1/webhooks", "/api/v1//webhooks", "/webhook/../api/v1/webhooks", "/api/v1/./webhooks")
    sent = []
    for path in paths:
        test_id, headers = tagged()
        sent.append(test_id)
        resp = await raw_get(api, path, headers)
        assert resp[0] == 401, (path, resp)
    api.control.assert_never_received(*sent)
    for path in paths:
        test_id, headers = api.auth("client_a")
        resp = await raw_get(api, path, headers)
        assert resp[0] == 200, (path, resp)
        assert api.control.by_test_id(test_id).method == "ListSubscriptions"


async def raw_get(api: ApiStack, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    """GET with the path sent exactly as given (httpx would remove dot segments itself)."""

    def get() -> tuple[int, bytes]:
        ctx = ssl.create_default_context(cafile=str(api.ca))
        conn = http.client.HTTPSConnection("127.0.0.1", api.cfg.edge.https_port, context=ctx, timeout=10)
        try:
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    return await asyncio.to_thread(get)


async def test_the_access_log_never_holds_the_token(api: ApiStack) -> None:
    _, headers = api.auth("client_log")
    async with api.client() as client:
        resp = await client.get("/api/v1/webhooks", headers=headers)
        assert resp.status_code == 200, resp.text
        resp = await client.get(f"/api/v1/webhooks?access_token={api.token('client_log')}")
        assert resp.status_code == 401
    log = api.cfg.data_dir / "envoy-access.log"
    for _ in range(50):
        await asyncio.to_thread(admin_post, api, "/reopen_logs")  # flushes the access log
        text = log.read_text() if log.exists() else ""
        if text.count("/api/v1/webhooks") >= 2:
            break
        await asyncio.sleep(0.1)
    assert text.count("/api/v1/webhooks") >= 2, text
    assert "eyJ" not in text  # no token, neither from the header nor from the query string
    token_id = headers["authorization"].split(".")[-1]
    assert token_id not in text


# -- an edge of its own ---------------------------------------------------------------------------------------
async def test_control_service_down_is_json_503(tmp_path: Path) -> None:
    stack = await start_api(api_config(tmp_path))
    try:
        await stack.control_server.stop(0)
        async with stack.client() as client:
            _, headers = stack.auth("client_a")
            resp = await client.get("/api/v1/webhooks", headers=headers)
            assert_error(resp, 503, 14, "UPSTREAM_UNAVAILABLE")
            # The webhook path does not depend on the control service.
            assert (await client.post("/webhook/alpha", content=b"{}")).status_code == 200
    finally:
        await stop_api(stack)


# -- rendering, without Envoy ---------------------------------------------------------------------------------
def test_rendered_filter_chain_with_the_api(tmp_path: Path) -> None:
    cfg = api_config(tmp_path)
    jwks = ensure_local_jwks(tmp_path / "jwt")
    doc = render_envoy_config(
        cfg, descriptor_set=DESCRIPTOR_SET, tls_cert=tmp_path / "c", tls_key=tmp_path / "k",
        api=local_api_edge(cfg, jwks),
    )  # fmt: skip
    hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    names = [f["name"] for f in hcm["http_filters"]]
    assert names == [
        envoy_config.HEADER_MUTATION,
        envoy_config.GRPC_LOCAL_REPLY,
        envoy_config.STRIP_IDENTITY,
        envoy_config.RBAC,
        envoy_config.JWT_AUTHN,
        envoy_config.TRANSCODER,
        envoy_config.BUFFER,
        envoy_config.ROUTER,
    ]
    jwt = hcm["http_filters"][names.index(envoy_config.JWT_AUTHN)]["typed_config"]
    assert "rules" not in jwt  # required per route: by the API route only
    (provider,) = jwt["providers"].values()
    assert provider["forward"] is False
    assert provider["from_headers"] == [{"name": "Authorization", "value_prefix": "Bearer "}]
    assert "from_params" not in provider and "from_cookies" not in provider
    assert json.loads(provider["local_jwks"]["inline_string"]) == json.loads(jwks.jwks_json)
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    requiring = [r["name"] for r in routes if envoy_config.JWT_AUTHN in r.get("typed_per_filter_config", {})]
    assert requiring == ["api"]
    clusters = {c["name"]: c for c in doc["static_resources"]["clusters"]}
    assert set(clusters) == {envoy_config.INGEST_CLUSTER, envoy_config.CONTROL_CLUSTER}
    address = clusters["control"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address["socket_address"] == {"address": cfg.control.host, "port_value": cfg.control.port}

    # Without an ApiEdge: no API route, filter or cluster.
    plain = render_envoy_config(cfg, descriptor_set=DESCRIPTOR_SET, tls_cert=tmp_path / "c", tls_key=tmp_path / "k")
    text = json.dumps(plain)
    assert "/api/v1/" not in text and "jwt_authn" not in text and '"control"' not in text
