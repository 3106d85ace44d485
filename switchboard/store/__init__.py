"""Cassandra adapter, one module per concern: ``session`` (connect, prepare, the driver-to-asyncio bridge),
``schema`` (DDL), ``statements`` (every prepared statement, by name), ``batches`` (unlogged batches and the
group commit), ``lookups`` (concurrent callers' reads merged), ``events``, ``entities``, ``subscriptions``,
``deliveries``.

cassandra-driver exceptions never leave this package: they become ``StoreUnavailable``.
"""

from switchboard.store.deliveries import DeliveryStore
from switchboard.store.entities import EntityStore
from switchboard.store.events import Cursor, EventStore
from switchboard.store.operations import OperationsStore
from switchboard.store.session import StoreSession, open_store
from switchboard.store.subscriptions import SubscriptionStore

__all__ = [
    "Cursor",
    "DeliveryStore",
    "EntityStore",
    "EventStore",
    "OperationsStore",
    "StoreSession",
    "SubscriptionStore",
    "open_store",
]
