"""The local platform: a project-owned RabbitMQ node, Cassandra, Envoy and the services, started in
order, each waited for until healthy, supervised, and stopped in reverse order.

Used by ``switchboard stack up`` (``make run``) and by the integration tests' session fixture, so that the
tests exercise exactly what a newcomer runs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edge.envoy_config import write_envoy_config
from switchboard.addresses import host_port
from switchboard.config import PlatformConfig
from switchboard.config.ports import check_ports, platform_ports
from switchboard.errors import ConfigError, StackError
from switchboard.observability.hooks import PORT_ENV
from switchboard.queue import Topology
from switchboard.secrets import check_private_file
from switchboard.signatures import build_verifier, check_distinct_secrets
from switchboard.store import StoreSession
from switchboard.streams import deliveries_topology, events_topology
from switchboard_devstack.cassandra import CassandraNode
from switchboard_devstack.claim import check_free, lock_data_dir, unlock
from switchboard_devstack.envoy import EnvoyProcess
from switchboard_devstack.jwt import ensure_local_jwks, jwt_dir, local_api_edge
from switchboard_devstack.paths import DevPaths
from switchboard_devstack.ports import free_port
from switchboard_devstack.process import ManagedProcess
from switchboard_devstack.prometheus import PrometheusProcess, write_targets
from switchboard_devstack.rabbitmq import RabbitNode
from switchboard_devstack.tls import ensure_local_tls
from switchboard_devstack.traces import SERVICE as TRACE_SERVICE

log = logging.getLogger(__name__)


class ServiceProcess(ManagedProcess):
    """One of our Python services (``python -m <module> --config FILE``)."""

    def __init__(
        self,
        name: str,
        module: str,
        config: Path,
        base_dir: Path,
        *extra: str,
        ready: Callable[[], bool] | None = None,
        member: int | None = None,
        env: dict[str, str] | None = None,
        metrics_port: int | None = None,
    ) -> None:
        metrics_env = {PORT_ENV: str(metrics_port)} if metrics_port else {}
        super().__init__(
            name=name,
            argv=[sys.executable, "-m", module, "--config", str(config), *extra],
            base_dir=base_dir,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **metrics_env, **(env or {})},
        )
        self._ready_check = ready
        self.member = member
        self.metrics_port = metrics_port

    def ready(self) -> bool:
        return self._ready_check() if self._ready_check else self.is_running()


def grpc_serving(host: str, port: int, service: str) -> bool:
    try:
        with grpc.insecure_channel(host_port(host, port)) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1.0)
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
    except grpc.RpcError:
        return False


def consumer_counts(amqp_url: str, queues: list[str]) -> dict[str, int]:
    """Consumers on each queue (0 where the queue does not exist yet or the broker is unreachable). A
    single-active-consumer queue counts only its active consumer."""
    import aio_pika

    async def count() -> dict[str, int]:
        out = dict.fromkeys(queues, 0)
        conn = await aio_pika.connect(amqp_url, timeout=3)
        try:
            for name in queues:
                channel = await conn.channel()  # a passive declare of a missing queue closes its channel
                try:
                    q = await channel.declare_queue(name, passive=True)
                    out[name] = int(q.declaration_result.consumer_count or 0)
                    await channel.close()
                except aio_pika.exceptions.ChannelClosed:
                    pass
        finally:
            await conn.close()
        return out

    try:
        return asyncio.run(count())
    except Exception:
        return dict.fromkeys(queues, 0)


@dataclass
class Stack:
    cfg: PlatformConfig
    processors: int | None = None
    # Also run Prometheus (scraping every process, Envoy and RabbitMQ; alert rules from ``prometheus_rules``,
    # default prometheus/rules.yml).
    with_prometheus: bool = False
    prometheus_rules: Path | None = None
    started: list[ManagedProcess] = field(default_factory=list)
    rabbit: RabbitNode | None = None
    cassandra: CassandraNode | None = None
    envoy: EnvoyProcess | None = None
    ingest: ServiceProcess | None = None
    query: ServiceProcess | None = None
    processor_procs: list[ServiceProcess] = field(default_factory=list)
    control: ServiceProcess | None = None
    delivery_procs: list[ServiceProcess] = field(default_factory=list)
    prometheus: PrometheusProcess | None = None
    trace_sink: ServiceProcess | None = None
    ca_cert: Path | None = None
    _processors_started: int = field(default=0, init=False)
    _deliveries_started: int = field(default=0, init=False)
    _lock: int | None = field(default=None, init=False)  # the data directory's lock (claim.lock_data_dir)
    # Set (by a signal handler, say): ``up`` stops waiting for components and raises, and what started is
    # stopped. A signal handler that raised instead could land between a spawn and its being listed.
    stop: threading.Event | None = None

    @property
    def data_dir(self) -> Path:
        return self.cfg.data_dir

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "log"

    # -- start ------------------------------------------------------------------------------------------
    def up(self, *, timeout: float = 180.0) -> None:
        """Starts everything not already provided by the configuration; raises (after stopping what it
        started) if a component does not become healthy in time."""
        try:
            self._up(timeout)
        except BaseException:
            self.down()
            raise

    def _up(self, timeout: float) -> None:
        cfg = self.cfg
        self._lock = lock_data_dir(self.data_dir)  # before anything else touches it
        if self.processors is not None:  # their metrics ports, as load_config checked them for processor.count
            check_ports(cfg, processors=self.processors)
        check_free(cfg, processors=self.processors, with_prometheus=self.with_prometheus)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for source in cfg.sources:  # create generated secrets, and refuse early what ingest would refuse at start
            build_verifier(source)  # (a missing or too short secret, an unknown option): before anything runs
        check_distinct_secrets(cfg.sources)
        if cfg.delivery.secrets_key is not None:
            cfg.delivery.secrets_key.resolve()
        if cfg.edge.tls_cert and cfg.edge.tls_key:
            cert, key = cfg.edge.tls_cert, cfg.edge.tls_key
            try:  # as a secret file: a group- or world-writable edge key was taken without a word
                check_private_file(key, "edge TLS key", str(key))
            except OSError as exc:
                raise ConfigError(f"edge.tls_key: cannot read {key}: {exc.strerror}") from None
        else:
            self.ca_cert, cert, key = ensure_local_tls(cfg.tls_dir)

        t0 = time.monotonic()
        if cfg.tracing.local:  # the OTLP receiver Envoy and the services export spans to
            port = cfg.tracing.local_port
            self.trace_sink = ServiceProcess(
                "traces",
                "switchboard_devstack.traces",
                cfg.path,
                self.log_dir,
                ready=lambda: grpc_serving("127.0.0.1", port, TRACE_SERVICE),
            )
            self._start(self.trace_sink)
        if cfg.rabbitmq.managed:
            self.rabbit = RabbitNode(
                self.data_dir / "rabbitmq",
                cfg.rabbitmq.port,
                nodename=cfg.rabbitmq.nodename,
                prometheus_port=cfg.metrics.rabbitmq_port or None,
                avoid_ports=platform_ports(cfg),
            )
            self._start(self.rabbit)
        if cfg.cassandra.managed:
            self.cassandra = CassandraNode(
                self.data_dir / "cassandra",
                cfg.cassandra.port,
                cfg.cassandra.storage_port,
                heap=cfg.cassandra.heap,
                timer_slack_us=cfg.cassandra.timer_slack_us,
            )
            self._start(self.cassandra)
        if self.rabbit:
            self.rabbit.wait_ready(timeout, stop=self.stop)
            log.info("rabbitmq ready", extra={"url": cfg.rabbitmq.display_url, "s": round(time.monotonic() - t0, 1)})
        if self.cassandra:
            self.cassandra.wait_ready(timeout, stop=self.stop)
            log.info("cassandra ready", extra={"port": cfg.cassandra.port, "s": round(time.monotonic() - t0, 1)})
        if self.trace_sink:
            self.trace_sink.wait_ready(timeout, stop=self.stop)

        StoreSession.connect(cfg.cassandra, wait_seconds=timeout, create_schema=True, stop=self.stop).close()
        self._check_stop()

        self.query = self._grpc_service("query", cfg.query.host, cfg.query.port, "webhooks.v1.Query")
        self._start(self.query)
        if cfg.delivery.secrets_key is not None:  # outbound delivery is set up
            self.control = self._grpc_service(
                "control", cfg.control.host, cfg.control.port, "webhooks.v1.Subscriptions"
            )
            self._start(self.control)
            for _ in range(cfg.delivery.count):
                self.start_delivery()
        n = self.processors or cfg.processor.count
        for _ in range(n):
            self.start_processor()
        self.ingest = self._grpc_service("ingest", cfg.ingest.host, cfg.ingest.port, "webhooks.v1.Ingest")
        self._start(self.ingest)

        envoy_dir = self.data_dir / "envoy"
        envoy_dir.mkdir(parents=True, exist_ok=True)
        envoy_cfg = write_envoy_config(
            cfg,
            envoy_dir / "envoy.json",
            descriptor_set=DevPaths.default().descriptor_set,
            tls_cert=cert,
            tls_key=key,
            access_log=self.log_dir / "envoy-access.log",
            otlp_endpoint=cfg.tracing.target(),
            # The REST API (/api/v1/webhooks, JWT against the local JWKS) when the control service runs.
            api=local_api_edge(cfg, ensure_local_jwks(jwt_dir(cfg))) if self.control is not None else None,
        )
        self.envoy = EnvoyProcess(envoy_cfg, envoy_dir, cfg.edge.admin_port)
        self._start(self.envoy)
        if self.with_prometheus:
            self.prometheus = PrometheusProcess(
                self.data_dir / "prometheus",
                cfg.metrics.prometheus_port or free_port(),
                targets_dir=self.metrics_dir,
                rules=self.prometheus_rules,
                envoy_admin_port=cfg.edge.admin_port,
                rabbitmq_port=self.rabbit.prometheus_port if self.rabbit else None,
                interval_seconds=cfg.metrics.scrape_interval_seconds,
            )
            self._start(self.prometheus)

        self.query.wait_ready(timeout, stop=self.stop)
        if self.control is not None:
            self.control.wait_ready(timeout, stop=self.stop)
            self.wait_deliveries(timeout)
        self.ingest.wait_ready(timeout, stop=self.stop)
        self.wait_processors(timeout)
        self.envoy.wait_ready(timeout, stop=self.stop)
        if self.prometheus is not None:
            self.prometheus.wait_ready(timeout, stop=self.stop)
        log.info("stack ready", extra={"s": round(time.monotonic() - t0, 1)})

    def _grpc_service(self, name: str, host: str, port: int, service: str) -> ServiceProcess:
        """A gRPC service process (``<name>_service``), ready when its health check says SERVING."""
        return ServiceProcess(
            name,
            f"{name}_service",
            self.cfg.path,
            self.log_dir,
            ready=lambda: grpc_serving(host, port, service),
            metrics_port=self._metrics_port(name),
        )

    @property
    def metrics_dir(self) -> Path:
        """Where each process serves its metrics (Prometheus file discovery; read by ``switchboard status``)."""
        return self.data_dir / "metrics"

    def _metrics_port(self, service: str, index: int = 0) -> int | None:
        """The metrics port of a new ``service`` process: the configured one (+ ``index``), else a free one."""
        m = self.cfg.metrics
        return (m.port(service, index) or free_port(m.host)) if m.enabled else None

    def _write_targets(self) -> None:
        targets: dict[str, list[tuple[str, str]]] = {}
        for p in self.started:
            if isinstance(p, ServiceProcess) and p.metrics_port:
                job = p.name.split("-")[0]
                targets.setdefault(job, []).append((p.name, host_port(self.cfg.metrics.host, p.metrics_port)))
        write_targets(self.metrics_dir, targets)

    def start_processor(self, env: dict[str, str] | None = None) -> ServiceProcess:
        """Starts one more processor (``processor-<n>``, logging to ``<n>``'s own file). Its member index, which
        decides the partitions it prefers, is the smallest one no running processor has."""
        proc = self._member_process("processor", self.processor_procs, self._processors_started, env)
        self._processors_started += 1
        return proc

    def start_delivery(self, env: dict[str, str] | None = None) -> ServiceProcess:
        """Starts one more delivery worker (``delivery-<n>``), with ``env`` added to its environment; its member
        index as for processors."""
        proc = self._member_process("delivery", self.delivery_procs, self._deliveries_started, env)
        self._deliveries_started += 1
        return proc

    def _member_process(
        self, service: str, procs: list[ServiceProcess], started: int, env: dict[str, str] | None
    ) -> ServiceProcess:
        """Starts ``<service>-<started>`` with the smallest member index no running one of ``procs`` has."""
        taken = {p.member for p in procs if p.is_running()}
        member = min(i for i in range(len(taken) + 1) if i not in taken)
        proc = ServiceProcess(
            f"{service}-{started}",
            f"{service}_service",
            self.cfg.path,
            self.log_dir,
            "--member",
            str(member),
            member=member,
            env=env,
            metrics_port=self._metrics_port(service, member),
        )
        self._start(proc)
        procs.append(proc)
        return proc

    def wait_deliveries(self, timeout: float) -> None:
        """Waits until every live delivery worker has joined the deliveries stream and every partition has an
        active consumer."""
        self._wait_stream(deliveries_topology(self.cfg), self.delivery_procs, "delivery workers", timeout)

    def ensure_deliveries(self, n: int, timeout: float = 120.0) -> list[ServiceProcess]:
        """Starts delivery workers until ``n`` run, waits until they all consume; returns the running ones."""
        while len(running := [p for p in self.delivery_procs if p.is_running()]) < n:
            self.start_delivery()
        self.wait_deliveries(timeout)
        return running

    def forget_delivery(self, proc: ServiceProcess) -> None:
        """Stops tracking a delivery worker killed on purpose (fault tests)."""
        self.delivery_procs.remove(proc)
        if proc in self.started:
            self.started.remove(proc)

    def ensure_processors(self, n: int, timeout: float = 120.0) -> list[ServiceProcess]:
        """Starts processors until ``n`` run, waits until they all consume; returns the running ones."""
        while len(running := [p for p in self.processor_procs if p.is_running()]) < n:
            self.start_processor()
        self.wait_processors(timeout)
        return running

    def forget_processor(self, proc: ServiceProcess) -> None:
        """Stops tracking a processor that was killed on purpose (fault tests), so waits ignore it."""
        self.processor_procs.remove(proc)
        if proc in self.started:
            self.started.remove(proc)

    def wait_processors(self, timeout: float) -> None:
        """Waits until every live processor has joined the events stream and every partition has an active
        consumer."""
        self._wait_stream(events_topology(self.cfg), self.processor_procs, "processors", timeout)

    def _wait_stream(self, topology: Topology, procs: list[ServiceProcess], what: str, timeout: float) -> None:
        queues = [*topology.work_queues, topology.members_queue] if topology.partitioned else topology.work_queues
        deadline = time.monotonic() + timeout
        want = sum(1 for p in procs if p.is_running())
        while True:
            counts = consumer_counts(self.cfg.rabbitmq.amqp_url, queues)
            joined = counts.get(topology.members_queue, counts[queues[0]])
            if joined >= want and all(counts[q] >= 1 for q in topology.work_queues):
                return
            for p in procs:
                if not p.is_running():
                    raise StackError(f"{p.name} exited during start-up; see {p.log_path}")
            if time.monotonic() > deadline:
                raise StackError(f"{what} did not start consuming within {timeout:g} s")
            self._check_stop()
            time.sleep(0.2)

    def _start(self, proc: ManagedProcess) -> None:
        """Starts ``proc`` and lists it. Every process this stack starts inherits the data directory's lock
        (``pass_fds``, restarts included), so that the lock outlives a killed launcher for as long as any of its
        components runs (``switchboard_devstack.claim``)."""
        self._check_stop()
        if self._lock is not None:
            proc.pass_fds = (self._lock,)
        proc.start()
        self.started.append(proc)
        if isinstance(proc, ServiceProcess) and proc.metrics_port:
            self._write_targets()

    def _check_stop(self) -> None:
        """``StackError`` once ``stop`` is set: nothing more is started."""
        if self.stop is not None and self.stop.is_set():
            raise StackError("stopped while starting")

    # -- stop -------------------------------------------------------------------------------------------
    def down(self) -> None:
        """Stops everything this stack started, newest first, and nothing else; then lets the data directory
        go (the lock stays held by any component that survived its stop)."""
        for proc in reversed(list(self.started)):  # each stays listed until stopped: ``kill`` reaches it
            try:
                proc.stop()
            except Exception as exc:  # keep stopping the rest
                log.warning("stop failed", extra={"component": proc.name, "error": repr(exc)})
            proc.pass_fds = ()  # the lock's descriptor is closed below: a later start() must not pass its number
            self.started.remove(proc)
        unlock(self._lock)
        self._lock = None

    def kill(self) -> None:
        """SIGKILL to every process group this stack started, at once, without waiting (a second Ctrl-C while
        stopping: safe in a signal handler; ``down`` reaps them)."""
        for proc in list(self.started):
            proc.kill_now()

    # -- report -----------------------------------------------------------------------------------------
    def describe(self) -> str:
        cfg = self.cfg
        edge = f"https://{host_port(cfg.edge.bind, cfg.edge.https_port)}"
        lines = [
            "Switchboard is up.",
            f"  edge (HTTPS)      {edge}/webhook/<source>   sources: {', '.join(s.name for s in cfg.sources)}",
            f"  ingest (gRPC)     {host_port(cfg.ingest.host, cfg.ingest.port)}   webhooks.v1.Ingest",
            f"  query (gRPC)      {host_port(cfg.query.host, cfg.query.port)}   webhooks.v1.Query (reflection on)",
            *(
                [f"  control (gRPC)    {host_port(cfg.control.host, cfg.control.port)}   webhooks.v1.Subscriptions"]
                if self.control is not None
                else []
            ),
            f"  envoy admin       http://127.0.0.1:{cfg.edge.admin_port}",
            f"  rabbitmq (AMQP)   {cfg.rabbitmq.display_url}",
            f"  cassandra (CQL)   {','.join(host_port(h, cfg.cassandra.port) for h in cfg.cassandra.hosts)}"
            f"  keyspace {cfg.cassandra.keyspace}",
            f"  processors        {len(self.processor_procs)}   delivery workers {len(self.delivery_procs)}",
            f"  data / logs       {self.data_dir} / {self.log_dir}",
            *(
                [f"  prometheus        {self.prometheus.url}   alerts: {self.prometheus.url}/alerts"]
                if self.prometheus
                else []
            ),
        ]
        if self.trace_sink:
            lines.append(
                f"  traces            {cfg.tracing.sample_percent:g}% of requests, spans in {cfg.traces_db}"
                "  (switchboard trace EVENT_ID)"
            )
        elif cfg.tracing.enabled:
            lines.append(f"  traces            {cfg.tracing.sample_percent:g}% of requests, to {cfg.tracing.target()}")
        if self.ca_cert:
            lines.append(f"  local CA          {self.ca_cert}  (curl --cacert)")
        lines.append(
            "Send a first event:  switchboard send"
            + (f" --config {cfg.path}" if cfg.path.name != "switchboard.toml" else "")
        )
        lines.append("Ctrl-C stops everything this command started.")
        return "\n".join(lines)

    def supervise(self, stop: Callable[[], bool], *, poll: float = 1.0) -> None:
        """Restarts a service that exits on its own (not the infrastructure: that is reported and fatal)."""
        restarts: dict[str, list[float]] = {}
        while not stop():
            time.sleep(poll)
            for proc in list(self.started):
                if proc.is_running() or stop():
                    continue
                if not isinstance(proc, ServiceProcess):
                    raise StackError(f"{proc.name} exited; see {proc.log_path}")
                recent = [t for t in restarts.get(proc.name, []) if time.monotonic() - t < 60]
                if len(recent) >= 5:
                    raise StackError(f"{proc.name} keeps exiting; see {proc.log_path}")
                restarts[proc.name] = [*recent, time.monotonic()]
                log.warning("service exited, restarting", extra={"component": proc.name, "log": str(proc.log_path)})
                proc.start()
