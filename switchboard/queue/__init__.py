"""RabbitMQ adapter: a stream's topology, a confirming publisher, and the queue worker every consumer runs on.

aio-pika, aiormq and pika exceptions never leave this package: they become ``BrokerUnavailable``.
"""

from switchboard.queue.connection import connect, publish_confirmed
from switchboard.queue.message import Ack, DeadLetter, QueueMessage, Retry, Verdict
from switchboard.queue.publisher import Publisher
from switchboard.queue.stats import StatsHook
from switchboard.queue.topology import Topology
from switchboard.queue.worker import Handler, QueueWorker, WorkerHooks, WorkerSettings

__all__ = [
    "Ack",
    "DeadLetter",
    "Handler",
    "Publisher",
    "QueueMessage",
    "QueueWorker",
    "Retry",
    "StatsHook",
    "Topology",
    "Verdict",
    "WorkerHooks",
    "WorkerSettings",
    "connect",
    "publish_confirmed",
]
