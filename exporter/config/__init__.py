"""YAML in, frozen settings out: the config file and its keys, secrets, and the settings
of discovery, sharding and detail.

By job: :mod:`.load` (read, expand ``${VAR}``, validate, build), :mod:`.schema` (every key
of the file, declared once), :mod:`.fields` (what the schemas are built of: every problem with
its key path), :mod:`.settings`, :mod:`.project`, :mod:`.discovery` and :mod:`.sharding` (the
frozen objects), :mod:`.files` (bounded reads of the files a config names), :mod:`.secret`
(keys that never print).
"""

from __future__ import annotations

from .discovery import DiscoveryConfig
from .load import load_config, parse_config
from .project import ProjectConfig
from .secret import Secret, redact
from .settings import (
    DEFAULT_LISTEN_ADDRESS,
    DEFAULT_MAX_RESPONSE_BYTES,
    Config,
    ConfigError,
    split_listen_address,
)
from .sharding import UNSHARDED, Shard, parse_shard, shard_from_hostname

__all__ = [
    "DEFAULT_LISTEN_ADDRESS",
    "DEFAULT_MAX_RESPONSE_BYTES",
    "UNSHARDED",
    "Config",
    "ConfigError",
    "DiscoveryConfig",
    "ProjectConfig",
    "Secret",
    "Shard",
    "load_config",
    "parse_config",
    "parse_shard",
    "redact",
    "shard_from_hostname",
    "split_listen_address",
]
