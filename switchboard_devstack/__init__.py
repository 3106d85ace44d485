"""Launchers for the local infrastructure: a project-owned RabbitMQ node, a Cassandra node and Envoy, each a
``ManagedProcess`` in its own process group with its data and logs under a base directory."""

from switchboard_devstack.cassandra import CassandraNode
from switchboard_devstack.envoy import EnvoyProcess
from switchboard_devstack.ports import free_port, wait_port
from switchboard_devstack.process import ManagedProcess
from switchboard_devstack.rabbitmq import RabbitNode

__all__ = ["CassandraNode", "EnvoyProcess", "ManagedProcess", "RabbitNode", "free_port", "wait_port"]
