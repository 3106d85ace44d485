"""The subscriptions REST API through the real edge: JWT verified by Envoy against the local JWKS, the
client id from the token, a client sees and changes only its own subscriptions."""

from __future__ import annotations

import pytest

from switchboard.config import PlatformConfig
from switchboard_devstack.jwt import ensure_local_jwks, jwt_dir, mint_token
from switchboard_devstack.stack import Stack
from tests.e2e.helpers import edge_client
from tests.e2e.receivers import Receiver

pytestmark = pytest.mark.integration


def token(cfg: PlatformConfig, client: str, ttl: int = 600) -> dict[str, str]:
    return {"authorization": "Bearer " + mint_token(ensure_local_jwks(jwt_dir(cfg)), client, ttl_seconds=ttl)}


def test_rest_api_with_and_without_a_token_and_across_clients(stack: Stack, stack_config: PlatformConfig) -> None:
    cfg = stack_config
    alice, bob = token(cfg, "alice"), token(cfg, "bob")
    with Receiver(cfg.tls_dir) as rx, edge_client(cfg) as http:
        body = {"callback_url": rx.url("/api"), "event_types": ["invoice.*"], "description": "from REST"}
        assert http.post("/api/v1/webhooks", json=body).status_code == 401  # no token
        refused = http.post("/api/v1/webhooks", json=body, headers={"authorization": "Bearer not.a.jwt"})
        assert refused.status_code == 401 and refused.json()["details"][0]["reason"] == "UNAUTHENTICATED"
        created = http.post("/api/v1/webhooks", json=body, headers=alice)
        assert created.status_code == 200, created.text
        sub = created.json()["subscription"]
        assert sub["client_id"] == "alice" and created.json()["secret"].startswith("whsec_")
        forged = http.post("/api/v1/webhooks", json=body, headers={**bob, "x-switchboard-client": "alice"}).json()[
            "subscription"
        ]
        assert forged["client_id"] == "bob"  # a client cannot pose as another

        assert http.get(f"/api/v1/webhooks/{sub['id']}", headers=alice).json()["subscription"]["id"] == sub["id"]
        other = http.get(f"/api/v1/webhooks/{sub['id']}", headers=bob)
        assert other.status_code == 404 and other.json()["details"][0]["reason"] == "SUBSCRIPTION_NOT_FOUND"
        assert http.delete(f"/api/v1/webhooks/{sub['id']}", headers=bob).status_code == 404
        mine = http.get("/api/v1/webhooks", headers=alice).json()["subscriptions"]
        assert [s["id"] for s in mine] == [sub["id"]]

        patched = http.patch(
            f"/api/v1/webhooks/{sub['id']}",
            json={"subscription": {"description": "renamed"}, "update_mask": "description"},
            headers=alice,
        )
        assert patched.status_code == 200 and patched.json()["subscription"]["description"] == "renamed"
        limited = http.patch(
            f"/api/v1/webhooks/{sub['id']}",
            json={"subscription": {"max_in_flight": 5}, "update_mask": "max_in_flight"},
            headers=alice,
        )
        assert limited.status_code == 200 and limited.json()["subscription"]["max_in_flight"] == 5
        too_many = http.patch(
            f"/api/v1/webhooks/{sub['id']}",
            json={"subscription": {"max_in_flight": 5000}, "update_mask": "max_in_flight"},
            headers=alice,
        )
        assert too_many.status_code == 400 and too_many.json()["details"][0]["metadata"]["field"] == "max_in_flight"
        bad = http.patch(
            f"/api/v1/webhooks/{sub['id']}", json={"subscription": {"trigger_conditions": "event.x >"}}, headers=alice
        )
        assert bad.status_code == 400 and bad.json()["details"][0]["reason"] == "TRIGGER_CONDITION_INVALID"
        rotated = http.post(f"/api/v1/webhooks/{sub['id']}/rotate-secret", json={}, headers=alice)
        assert rotated.status_code == 200 and rotated.json()["secret"].startswith("whsec_")
        deliveries = http.get(f"/api/v1/webhooks/{sub['id']}/deliveries?page_size=10", headers=alice)
        assert deliveries.status_code == 200
        assert http.delete(f"/api/v1/webhooks/{sub['id']}", headers=alice).status_code == 200
        assert http.get(f"/api/v1/webhooks/{sub['id']}", headers=alice).status_code == 404
