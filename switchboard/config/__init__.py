"""The platform configuration, one module per section (``[edge]``, ``[processor]``, ``[[sources]]``, ...).

``load_config(path)`` reads the TOML file once into frozen dataclasses; each default is stated once, on its
dataclass field, and the parsers read it from there (``switchboard.config._table``).
"""

from switchboard.config.broker import RabbitConfig
from switchboard.config.delivery import ControlConfig, DeliveryConfig
from switchboard.config.edge import EdgeConfig, RateLimit
from switchboard.config.metrics import MetricsConfig
from switchboard.config.platform import PlatformConfig, default_config_path, load_config, parse_config
from switchboard.config.processor import OperationConfig, ProcessorConfig, RetryConfig
from switchboard.config.services import IngestConfig, QueryConfig
from switchboard.config.sources import SourceConfig
from switchboard.config.store import CassandraConfig
from switchboard.config.tracing import TracingConfig

__all__ = [
    "CassandraConfig",
    "ControlConfig",
    "DeliveryConfig",
    "EdgeConfig",
    "IngestConfig",
    "MetricsConfig",
    "OperationConfig",
    "PlatformConfig",
    "ProcessorConfig",
    "QueryConfig",
    "RabbitConfig",
    "RateLimit",
    "RetryConfig",
    "SourceConfig",
    "TracingConfig",
    "default_config_path",
    "load_config",
    "parse_config",
]
