"""Launchers for the local infrastructure: a project-owned RabbitMQ node, a Cassandra node and Envoy, each a
``ManagedProcess`` in its own process group with its data and logs under a base directory."""

from switchboard.infra.cassandra import CassandraNode
from switchboard.infra.envoy import EnvoyProcess
from switchboard.infra.ports import free_port, wait_port
from switchboard.infra.process import ManagedProcess
from switchboard.infra.rabbitmq import RabbitNode

__all__ = ["CassandraNode", "EnvoyProcess", "ManagedProcess", "RabbitNode", "free_port", "wait_port"]
