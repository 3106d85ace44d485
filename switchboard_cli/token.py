"""``switchboard token --client ID [--ttl SECONDS]``: a development bearer token for the REST API.

Prints only the token on stdout, so that ``TOKEN=$(switchboard token --client acme)`` works; what it is valid
for goes to stderr. The token is signed with the local stack's key (``<data_dir>/jwt``, created if missing),
which Envoy trusts for ``/api/v1/``; ``sub`` is the client id, which owns the subscriptions it creates.
"""

from __future__ import annotations

import sys

from switchboard.addresses import host_port
from switchboard.config import PlatformConfig
from switchboard.errors import StackError
from switchboard_devstack.jwt import ensure_local_jwks, jwt_dir, mint_token

__all__ = ["run_token"]


def run_token(cfg: PlatformConfig, client_id: str, ttl: int) -> int:
    """Print a token for ``client_id`` valid ``ttl`` seconds; 0, or 2 on a bad argument or an unusable key."""
    if ttl <= 0:
        print("switchboard: --ttl must be a positive number of seconds", file=sys.stderr)
        return 2
    try:
        jwks = ensure_local_jwks(jwt_dir(cfg))
        token = mint_token(jwks, client_id, ttl_seconds=ttl)
    except (ValueError, StackError) as exc:
        print(f"switchboard: {exc}", file=sys.stderr)
        return 2
    print(token)
    api = f"https://{host_port(cfg.edge.bind, cfg.edge.https_port)}/api/v1/webhooks"
    print(
        f"switchboard: token for client {client_id!r} (iss {jwks.issuer}, aud {jwks.audience}), valid {ttl} s; "
        f'use it as "Authorization: Bearer <token>" on {api}',
        file=sys.stderr,
    )
    return 0
