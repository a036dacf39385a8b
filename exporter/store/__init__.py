"""What the exporter knows between polls: the latest snapshot of every project, swapped whole,
and the optional state file that carries the counters over restarts.
"""

from __future__ import annotations

from .snapshots import ProjectState, Store
from .sqlitefile import StateError
from .statefile import SaveJob, StateFile, check_state_path

__all__ = [
    "ProjectState",
    "SaveJob",
    "StateError",
    "StateFile",
    "Store",
    "check_state_path",
]
