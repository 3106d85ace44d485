"""Where the local stack finds what ``make setup`` installed and ``make proto`` generated: the one place that
knows the checkout's layout.

The checkout is the directory above this package, or ``$SWITCHBOARD_HOME`` when set (an installed copy
pointing at a checkout elsewhere).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DevPaths"]


@dataclass(frozen=True)
class DevPaths:
    root: Path

    @classmethod
    def default(cls) -> DevPaths:
        home = os.environ.get("SWITCHBOARD_HOME")
        return cls(Path(home).resolve() if home else Path(__file__).resolve().parent.parent)

    @property
    def tools(self) -> Path:
        """Tools installed by ``make setup`` (Cassandra, buf)."""
        return self.root / ".tools"

    @property
    def cassandra_home(self) -> Path:
        return self.tools / "cassandra" / "package" / "apache-cassandra-2.1.0"

    @property
    def descriptor_set(self) -> Path:
        """The API's descriptor set for Envoy's gRPC-JSON transcoder (``make proto``)."""
        return self.root / "gen" / "envoy" / "webhooks.pb"

    @property
    def default_config(self) -> Path:
        return self.root / "switchboard.toml"
