"""The validated configuration: frozen objects, and the error that lists every problem."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from ..aggregate.indexes import Detail
from .discovery import DiscoveryConfig
from .headers import Headers
from .project import ProjectConfig
from .sharding import UNSHARDED, Shard

DEFAULT_LISTEN_ADDRESS = "0.0.0.0:9877"


DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Config:
    projects: tuple[ProjectConfig, ...]
    timeout_seconds: float = 30.0
    max_retries: int = 5
    max_pages: int = 10000
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    full_listing_every: int = 10
    incremental_overlap_seconds: float = 300.0
    max_session_reads_per_poll: int = 100  # per project per poll; 0: no reads (runs: latest)
    max_requests_per_second: float = 0.0  # 0: no limit
    poll_interval_seconds: float = 60.0
    max_concurrency: int = 4
    listen_address: str = DEFAULT_LISTEN_ADDRESS
    state_path: str | None = None
    detail: Detail = field(default_factory=Detail)
    discovery: DiscoveryConfig | None = None
    shard: Shard = UNSHARDED
    # LLAMA_CLOUD_CUSTOM_HEADERS: sent on every request to the API.
    api_headers: Headers = field(default=(), repr=False)

    def with_shard(self, shard: Shard) -> Config:
        """This config on another shard (``--shard``, ``--shard.from-hostname``)."""
        return replace(self, shard=shard)

    def with_listen_address(self, address: str) -> Config:
        problem = listen_address_problem(address)
        if problem:
            raise ConfigError([f"--web.listen-address: {problem}"])
        return replace(self, listen_address=address)


class ConfigError(Exception):
    """Raised with every problem found, each prefixed by its key path.

    A problem never quotes a secret-bearing value, and is always printable: a key name
    holding an unpaired surrogate is shown escaped rather than breaking the output.
    """

    def __init__(self, problems: list[str]) -> None:
        problems = [p.encode("utf-8", "backslashreplace").decode("utf-8") for p in problems]
        problems = list(dict.fromkeys(problems))  # the same line twice says nothing more
        super().__init__("; ".join(problems))
        self.problems = problems


def listen_address_problem(value: Any) -> str | None:
    """What is wrong with a ``HOST:PORT`` to listen on, if anything."""
    if not isinstance(value, str):
        return "must be HOST:PORT"
    host, sep, port = value.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
        return "must be HOST:PORT with a port from 0 to 65535"
    if not _HOST.match(host):
        return "the host must be a name or an IP address"
    return None


_HOST = re.compile(r"^(\[[0-9A-Fa-f:.%a-zA-Z]+\]|[A-Za-z0-9._\-]*|[0-9A-Fa-f:.]+)$")


def split_listen_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)
