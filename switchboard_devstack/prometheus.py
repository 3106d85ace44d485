"""Prometheus (Debian's ``prometheus`` package, 2.42) for the local stack, and where the stack's processes serve
their metrics.

* ``write_targets(directory, targets)``: one file per job (``<job>.json``, Prometheus's file discovery format)
  naming every process's metrics endpoint; the stack rewrites them whenever it starts a process, Prometheus
  picks the change up by itself, and ``switchboard status`` reads the same files.
* ``PrometheusProcess``: Prometheus on ``127.0.0.1:<port>`` with its data in ``base_dir/data``, a generated
  ``prometheus.yml`` (the service jobs from those files, Envoy's admin ``/stats/prometheus``, RabbitMQ's
  ``rabbitmq_prometheus``) and the committed alert rules (``prometheus/rules.yml``). Exemplar storage is on,
  so the end-to-end latency's trace ids can be queried (``/api/v1/query_exemplars``). No Alertmanager: alerts
  are read from ``/api/v1/alerts`` (or the UI).
"""

from __future__ import annotations

import http.client
import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from switchboard.config.metrics import SERVICES
from switchboard.errors import StackError
from switchboard.files import atomic_write
from switchboard_devstack.paths import DevPaths
from switchboard_devstack.process import ManagedProcess

__all__ = ["HOST", "PrometheusProcess", "default_rules", "read_targets", "write_targets"]

HOST = "127.0.0.1"
JOBS = SERVICES


def default_rules() -> Path:
    """The committed rules, ``prometheus/rules.yml`` in the checkout."""
    return DevPaths.default().root / "prometheus" / "rules.yml"


def write_targets(directory: Path, targets: Mapping[str, Sequence[tuple[str, str]]]) -> None:
    """Writes ``<job>.json`` for every job (an empty list for a job without process): ``targets`` maps a job to
    its (process name, ``host:port``) pairs. Each target carries its process name as the ``process`` label."""
    for job in JOBS:
        groups = [{"targets": [address], "labels": {"process": name}} for name, address in targets.get(job, ())]
        atomic_write(directory / f"{job}.json", json.dumps(groups, indent=1) + "\n")


def read_targets(directory: Path) -> dict[str, list[tuple[str, str]]]:
    """What ``write_targets`` wrote: job -> [(process name, address)] (jobs without a file are left out)."""
    out: dict[str, list[tuple[str, str]]] = {}
    for job in JOBS:
        try:
            groups = json.loads((directory / f"{job}.json").read_text())
        except (OSError, ValueError):
            continue
        out[job] = [
            (str(g.get("labels", {}).get("process", address)), str(address))
            for g in groups
            for address in g.get("targets", [])
        ]
    return out


def _duration(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


class PrometheusProcess(ManagedProcess):
    """``prometheus`` on ``127.0.0.1:port``; ready when ``GET /-/ready`` answers 200."""

    def __init__(
        self,
        base_dir: Path,
        port: int,
        *,
        targets_dir: Path,
        rules: Path | None = None,
        envoy_admin_port: int | None = None,
        rabbitmq_port: int | None = None,
        interval_seconds: float = 5.0,
        retention: str = "7d",
        binary: str | None = None,
    ) -> None:
        super().__init__("prometheus", base_dir)
        self.port = port
        self.targets_dir = Path(targets_dir).absolute()
        self.rules = Path(rules or default_rules()).absolute()
        self.envoy_admin_port = envoy_admin_port
        self.rabbitmq_port = rabbitmq_port
        self.interval = interval_seconds
        self.retention = retention
        self.binary = binary or shutil.which("prometheus") or "/usr/bin/prometheus"

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def config_file(self) -> Path:
        return self.base_dir / "prometheus.yml"

    def scrape_config(self) -> dict[str, Any]:
        """The configuration (JSON is YAML): every job, the rules, intervals."""
        interval = _duration(self.interval)
        jobs: list[dict[str, Any]] = [
            {"job_name": job, "file_sd_configs": [{"files": [str(self.targets_dir / f"{job}.json")]}]} for job in JOBS
        ]
        if self.envoy_admin_port:
            jobs.append(
                {
                    "job_name": "envoy",
                    "metrics_path": "/stats/prometheus",
                    "params": {"usedonly": [""]},  # only the stats that were ever touched (~half)
                    "static_configs": [{"targets": [f"{HOST}:{self.envoy_admin_port}"]}],
                }
            )
        if self.rabbitmq_port:
            jobs.append({"job_name": "rabbitmq", "static_configs": [{"targets": [f"{HOST}:{self.rabbitmq_port}"]}]})
        jobs.append({"job_name": "prometheus", "static_configs": [{"targets": [f"{HOST}:{self.port}"]}]})
        return {
            "global": {
                "scrape_interval": interval,
                "scrape_timeout": _duration(min(self.interval, 10.0)),
                "evaluation_interval": interval,
            },
            "rule_files": [str(self.rules)],
            "scrape_configs": jobs,
        }

    # -- ManagedProcess --------------------------------------------------------------------------------
    def prepare(self) -> None:
        if not Path(self.binary).exists():
            raise StackError(f"prometheus not found ({self.binary}); run `make setup` (Debian package prometheus)")
        if not self.rules.exists():
            raise StackError(f"alert rules {self.rules} not found")
        (self.base_dir / "data").mkdir(parents=True, exist_ok=True)
        for job in JOBS:  # file discovery wants the files to exist
            if not (self.targets_dir / f"{job}.json").exists():
                atomic_write(self.targets_dir / f"{job}.json", "[]\n")
        atomic_write(self.config_file, json.dumps(self.scrape_config(), indent=1) + "\n")

    def command(self) -> list[str]:
        return [
            self.binary,
            f"--config.file={self.config_file}",
            f"--storage.tsdb.path={self.base_dir / 'data'}",
            f"--storage.tsdb.retention.time={self.retention}",
            f"--web.listen-address={HOST}:{self.port}",
            "--enable-feature=exemplar-storage",
        ]

    def ready(self) -> bool:
        return self.get("/-/ready")[0] == 200

    def get(self, path: str, *, timeout: float = 5.0) -> tuple[int, bytes]:
        """GET on Prometheus's HTTP API; (0, b"") if it does not answer."""
        conn = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        except (OSError, http.client.HTTPException):
            return 0, b""
        finally:
            conn.close()
