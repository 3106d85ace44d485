"""Signing keys and development tokens for the REST API (``/api/v1/webhooks``) of the local stack.

Envoy verifies the API's bearer tokens (``jwt_authn``) against a local JWKS: :func:`ensure_local_jwks`
creates, only if missing, an ES256 (ECDSA P-256) key pair under the directory it is given (the stack and
``switchboard token`` use ``<data_dir>/jwt``): the private key (PKCS#8 PEM, mode 0600, never logged) and the
public JWKS beside it. :func:`mint_token` signs a token for a client id (its ``sub``, which Envoy passes to
the control service as ``x-switchboard-client``). Signing uses ``cryptography`` directly (a JWS compact
serialisation is three base64url parts); no JWT library is needed.

These keys are for development only: a deployment takes its JWKS from its identity provider.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from edge.envoy_config import ApiEdge
from switchboard.config import PlatformConfig
from switchboard.errors import StackError
from switchboard.files import atomic_write

__all__ = [
    "ALGORITHM",
    "AUDIENCE",
    "DEFAULT_TTL_SECONDS",
    "ISSUER",
    "JWKS_FILE",
    "JWT_DIR",
    "PRIVATE_KEY_FILE",
    "LocalJwks",
    "ensure_local_jwks",
    "jwt_dir",
    "local_api_edge",
    "mint_token",
    "public_jwk",
]

ISSUER = "switchboard-local"
AUDIENCE = "webhooks-api"
ALGORITHM = "ES256"
DEFAULT_TTL_SECONDS = 3600

JWT_DIR = "jwt"  # under the platform's data_dir
PRIVATE_KEY_FILE = "signing-key.pem"
JWKS_FILE = "jwks.json"

_COORDINATE_BYTES = 32  # P-256


@dataclass(frozen=True)
class LocalJwks:
    """The local signing key: the public JWKS (what Envoy verifies with) and where the private key is."""

    jwks_json: str
    private_key_path: Path
    kid: str
    issuer: str = ISSUER
    audience: str = AUDIENCE


def jwt_dir(cfg: PlatformConfig) -> Path:
    """Where the local stack keeps its API signing key: ``<data_dir>/jwt``."""
    return cfg.data_dir / JWT_DIR


def ensure_local_jwks(directory: Path) -> LocalJwks:
    """Return the local key pair under ``directory``, creating the private key only if it is missing.

    The public JWKS (``jwks.json``) is derived from the private key and rewritten when it is missing or does
    not match. A private key file that exists but is not a P-256 key is an error, never silently replaced
    (tokens already handed out would stop verifying). A private key readable by others is made 0600.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_path = directory / PRIVATE_KEY_FILE
    if key_path.exists():
        key = _load_private_key(key_path)
        if stat.S_IMODE(key_path.stat().st_mode) & 0o077:
            os.chmod(key_path, 0o600)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        atomic_write(key_path, pem, private=True)
    jwk = public_jwk(key.public_key())
    jwks_json = json.dumps({"keys": [jwk]}, separators=(",", ":"), sort_keys=True)
    jwks_path = directory / JWKS_FILE
    try:
        current = jwks_path.read_text()
    except OSError:
        current = None
    if current != jwks_json + "\n":
        atomic_write(jwks_path, jwks_json + "\n")
    return LocalJwks(jwks_json=jwks_json, private_key_path=key_path, kid=jwk["kid"])


def mint_token(
    jwks: LocalJwks, client_id: str, *, ttl_seconds: int = DEFAULT_TTL_SECONDS, now: float | None = None
) -> str:
    """An ES256 JWT for ``client_id`` (``sub``), with ``jwks``'s issuer and audience, valid ``ttl_seconds``
    from ``now`` (Unix seconds; default: the current time)."""
    if not client_id or client_id != client_id.strip():
        raise ValueError("the client id must be a non-empty string without surrounding spaces")
    if ttl_seconds <= 0:
        raise ValueError("the token's lifetime must be positive")
    issued = math.floor(time.time() if now is None else now)
    header = {"alg": ALGORITHM, "typ": "JWT", "kid": jwks.kid}
    claims = {
        "iss": jwks.issuer,
        "sub": client_id,
        "aud": jwks.audience,
        "iat": issued,
        "exp": issued + ttl_seconds,
    }
    signing_input = f"{_b64_json(header)}.{_b64_json(claims)}".encode("ascii")
    key = _load_private_key(jwks.private_key_path)
    r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
    signature = r.to_bytes(_COORDINATE_BYTES, "big") + s.to_bytes(_COORDINATE_BYTES, "big")
    return f"{signing_input.decode('ascii')}.{_b64(signature)}"


def local_api_edge(cfg: PlatformConfig, jwks: LocalJwks) -> ApiEdge:
    """The REST API at the edge for the local stack: these keys, in front of ``cfg.control``."""
    return ApiEdge(
        jwks_json=jwks.jwks_json,
        issuer=jwks.issuer,
        audience=jwks.audience,
        control_host=cfg.control.host,
        control_port=cfg.control.port,
    )


def public_jwk(key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    """The public JWK of a P-256 key; ``kid`` is its RFC 7638 thumbprint."""
    if not isinstance(key.curve, ec.SECP256R1):
        raise ValueError(f"expected a P-256 key, got {key.curve.name}")
    numbers = key.public_numbers()
    members = {
        "crv": "P-256",
        "kty": "EC",
        "x": _b64(numbers.x.to_bytes(_COORDINATE_BYTES, "big")),
        "y": _b64(numbers.y.to_bytes(_COORDINATE_BYTES, "big")),
    }
    thumbprint = hashlib.sha256(json.dumps(members, separators=(",", ":"), sort_keys=True).encode()).digest()
    return {**members, "kid": _b64(thumbprint), "alg": ALGORITHM, "use": "sig"}


def _load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise StackError(f"{path}: not a readable unencrypted PEM private key ({type(exc).__name__})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise StackError(f"{path}: not an ECDSA P-256 private key (ES256); remove it to create a new one")
    return key


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64_json(obj: dict[str, Any]) -> str:
    return _b64(json.dumps(obj, separators=(",", ":")).encode())
