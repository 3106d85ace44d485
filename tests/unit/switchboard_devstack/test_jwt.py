"""``switchboard_devstack.jwt`` (the local API signing key and development tokens) and ``switchboard token``."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from edge.envoy_config import ApiEdge
from switchboard.config import parse_config
from switchboard.errors import StackError
from switchboard_cli.token import run_token
from switchboard_devstack import jwt
from switchboard_devstack.jwt import LocalJwks, ensure_local_jwks, local_api_edge, mint_token


def b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def decode(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    head, payload, sig = token.split(".")
    return json.loads(b64decode(head)), json.loads(b64decode(payload)), f"{head}.{payload}".encode(), b64decode(sig)


def verify(jwks: LocalJwks, token: str) -> dict[str, Any]:
    """Verify as a relying party would: the key from the public JWKS by kid, ES256 (raw r||s)."""
    header, claims, signed, sig = decode(token)
    assert header == {"alg": "ES256", "typ": "JWT", "kid": jwks.kid}
    (jwk,) = [k for k in json.loads(jwks.jwks_json)["keys"] if k["kid"] == header["kid"]]
    x, y = (int.from_bytes(b64decode(jwk[c]), "big") for c in ("x", "y"))
    public = ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
    assert len(sig) == 64
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    public.verify(der, signed, ec.ECDSA(hashes.SHA256()))
    return claims


def test_key_pair_is_created_once_private_key_0600(tmp_path: Path) -> None:
    d = tmp_path / "var" / "jwt"
    jwks = ensure_local_jwks(d)
    assert jwks.private_key_path == d / jwt.PRIVATE_KEY_FILE
    assert stat.S_IMODE(jwks.private_key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert (jwks.issuer, jwks.audience) == (jwt.ISSUER, jwt.AUDIENCE) == ("switchboard-local", "webhooks-api")
    key = serialization.load_pem_private_key(jwks.private_key_path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)

    (jwk,) = json.loads(jwks.jwks_json)["keys"]
    assert set(jwk) == {"kty", "crv", "x", "y", "kid", "alg", "use"}  # public only: no "d"
    assert (jwk["kty"], jwk["crv"], jwk["alg"], jwk["use"], jwk["kid"]) == ("EC", "P-256", "ES256", "sig", jwks.kid)
    assert json.loads((d / jwt.JWKS_FILE).read_text()) == json.loads(jwks.jwks_json)
    # kid: the RFC 7638 thumbprint of the public key.
    members = json.dumps({k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"), sort_keys=True)
    assert jwks.kid == base64.urlsafe_b64encode(hashlib.sha256(members.encode()).digest()).rstrip(b"=").decode()

    before = {p.name: p.read_bytes() for p in d.iterdir()}
    assert ensure_local_jwks(d) == jwks
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before


def test_jwks_is_rederived_and_permissions_tightened(tmp_path: Path) -> None:
    jwks = ensure_local_jwks(tmp_path)
    (tmp_path / jwt.JWKS_FILE).write_text('{"keys": []}')
    jwks.private_key_path.chmod(0o644)
    again = ensure_local_jwks(tmp_path)
    assert again == jwks
    assert json.loads((tmp_path / jwt.JWKS_FILE).read_text()) == json.loads(jwks.jwks_json)
    assert stat.S_IMODE(jwks.private_key_path.stat().st_mode) == 0o600
    (tmp_path / jwt.JWKS_FILE).unlink()
    assert ensure_local_jwks(tmp_path) == jwks


@pytest.mark.parametrize("content", ["garbage", "rsa", "p384"])
def test_an_unusable_private_key_is_an_error_never_replaced(tmp_path: Path, content: str) -> None:
    path = tmp_path / jwt.PRIVATE_KEY_FILE
    if content == "garbage":
        data = b"not a key"
    else:
        other: Any = (
            rsa.generate_private_key(public_exponent=65537, key_size=2048)
            if content == "rsa"
            else ec.generate_private_key(ec.SECP384R1())
        )
        data = other.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    path.write_bytes(data)
    with pytest.raises(StackError) as err:
        ensure_local_jwks(tmp_path)
    assert str(path) in str(err.value)
    assert path.read_bytes() == data


def test_token_verifies_with_the_public_jwks(tmp_path: Path) -> None:
    jwks = ensure_local_jwks(tmp_path)
    token = mint_token(jwks, "client_42", ttl_seconds=600, now=1_700_000_000.7)
    assert verify(jwks, token) == {
        "iss": "switchboard-local",
        "sub": "client_42",
        "aud": "webhooks-api",
        "iat": 1_700_000_000,
        "exp": 1_700_000_600,
    }
    # Default: now, one hour.
    claims = verify(jwks, mint_token(jwks, "client_42"))
    assert abs(claims["iat"] - time.time()) < 5
    assert claims["exp"] - claims["iat"] == jwt.DEFAULT_TTL_SECONDS == 3600


def test_a_token_does_not_verify_under_another_key_or_when_altered(tmp_path: Path) -> None:
    jwks = ensure_local_jwks(tmp_path / "a")
    other = ensure_local_jwks(tmp_path / "b")
    assert other.kid != jwks.kid
    with pytest.raises(InvalidSignature):
        verify(jwks, mint_token(LocalJwks(jwks.jwks_json, other.private_key_path, jwks.kid), "client_1"))
    head, _, sig = mint_token(jwks, "client_1").split(".")
    forged = base64.urlsafe_b64encode(json.dumps({"sub": "admin"}).encode()).rstrip(b"=").decode()
    with pytest.raises(InvalidSignature):
        verify(jwks, f"{head}.{forged}.{sig}")


@pytest.mark.parametrize(("client_id", "ttl"), [("", 60), (" padded ", 60), ("ok", 0), ("ok", -5)])
def test_bad_arguments(tmp_path: Path, client_id: str, ttl: int) -> None:
    with pytest.raises(ValueError):
        mint_token(ensure_local_jwks(tmp_path), client_id, ttl_seconds=ttl)


def config(tmp_path: Path) -> Any:
    raw = {
        "platform": {"data_dir": str(tmp_path / "var")},
        "control": {"host": "127.0.0.1", "port": 50999},
        "sources": [{"name": "demo", "scheme": "github", "secrets": [{"env": "UNUSED_SECRET"}]}],
    }
    return parse_config(raw, tmp_path / "switchboard.toml")


def test_local_api_edge(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    jwks = ensure_local_jwks(jwt.jwt_dir(cfg))
    assert jwt.jwt_dir(cfg) == cfg.data_dir / "jwt"
    assert local_api_edge(cfg, jwks) == ApiEdge(
        jwks_json=jwks.jwks_json, issuer=jwt.ISSUER, audience=jwt.AUDIENCE, control_host="127.0.0.1", control_port=50999
    )
    with pytest.raises(ValueError):
        ApiEdge(jwks_json='{"keys": []}', issuer="i", audience="a", control_host="127.0.0.1", control_port=1)
    with pytest.raises(ValueError):
        ApiEdge(jwks_json="not json", issuer="i", audience="a", control_host="127.0.0.1", control_port=1)


def test_switchboard_token_prints_only_the_token(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config(tmp_path)
    assert run_token(cfg, "acme", 120) == 0
    out, err = capsys.readouterr()
    token = out.strip()
    assert out == token + "\n" and token.count(".") == 2
    jwks = ensure_local_jwks(cfg.data_dir / "jwt")  # the keys the command created
    claims = verify(jwks, token)
    assert claims["sub"] == "acme" and claims["exp"] - claims["iat"] == 120
    assert "acme" in err and token not in err

    assert run_token(cfg, "acme", 0) == 2
    assert run_token(cfg, "", 60) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("switchboard:") == 2
