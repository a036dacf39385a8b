"""Which projects this replica polls: the config's, those discovery lists, and of all those,
this shard's.

By job: :mod:`.replica` (the discovery loop, applied through the poller), :mod:`.discovery`
(listed items read into projects, a replica's list), :mod:`.sharding` (which shard owns a
project).
"""

from __future__ import annotations

from .replica import Targets, replica_config

__all__ = [
    "Targets",
    "replica_config",
]
