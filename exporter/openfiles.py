"""The open-file limit: raised at start as far as the hard limit allows, then shared out so the
process as a whole stays inside it.

Every socket is a file descriptor. The API's connections are bounded by what the poller can
use at once, the web server's by what is left after them and the process's own files (and
by half the limit, as :func:`exporter.web.server.connection_cap` has it), so neither can
starve the other: however many projects or scrapers there are, a poll never fails for want
of a socket and ``/metrics`` still answers. A limit too low for that is refused at start,
not found out in failing polls.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

import structlog

from .web import MAX_CONNECTIONS

log = structlog.get_logger("exporter.openfiles")

# The soft limit is raised to the hard one, but no further than this: far more than the
# exporter can use (512 web connections and 2,001 API ones at max_concurrency 1000).
MAX_OPEN_FILES = 65_536
# What the process holds besides its sockets to the API and to web clients: stdio, two event
# loops (selector and wake-up pair each), the listening socket, the state file (database,
# journal, lock), the config or a certificate being read on reload.
RESERVED_FILES = 32
MIN_WEB_CONNECTIONS = 16  # fewer and a few idle browsers could crowd Prometheus out
MIN_OPEN_FILES = 64  # below this no configuration is served well


class OpenFileLimitError(Exception):
    """The open-file limit, even raised, cannot hold what the configuration needs."""


@dataclass(frozen=True)
class Budget:
    """How the open-file limit is shared out."""

    limit: int  # the soft RLIMIT_NOFILE in force
    api_connections: int  # the most sockets to the API at once
    web_connections: int  # the most web clients connected at once

    @property
    def api_room(self) -> int:
        """The most connections to the API the limit holds beside the web server's: how far a
        reload may raise ``max_concurrency``."""
        return self.limit - RESERVED_FILES - self.web_connections


def raise_limit(cap: int = MAX_OPEN_FILES) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard one, at most to ``cap``, as Go programs do;
    returns (soft, hard) in force after. A refusal leaves the soft limit as it was."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = cap if hard == resource.RLIM_INFINITY else min(hard, cap)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as exc:  # a platform with a lower ceiling (macOS)
            log.debug("open_file_limit_not_raised", soft=soft, hard=hard, error=str(exc))
        else:
            log.debug("open_file_limit_raised", soft_before=soft, soft=target, hard=hard)
            soft = target
    return soft, hard


def needed(api_connections: int) -> int:
    """The least open-file limit that holds ``api_connections`` and a usable web server."""
    return max(MIN_OPEN_FILES, api_connections + RESERVED_FILES + MIN_WEB_CONNECTIONS)


def share(limit: int, api_connections: int, max_concurrency: int, hard: int) -> Budget:
    """Share ``limit`` out; OpenFileLimitError says what to do when it is too low."""
    usable = MAX_OPEN_FILES if limit == resource.RLIM_INFINITY else limit
    least = needed(api_connections)
    if usable < least:
        shown_hard = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
        raise OpenFileLimitError(
            f"the open-file limit is {usable} (hard limit {shown_hard}), too low: with "
            f"max_concurrency {max_concurrency} the exporter needs at least {least} "
            f"({api_connections} connections to the API, {MIN_WEB_CONNECTIONS} for web "
            f"clients, {RESERVED_FILES} for its own files). Raise it (`ulimit -n {least}` "
            "before starting; LimitNOFILE= under systemd; --ulimit nofile= with Docker) "
            "or lower max_concurrency"
        )
    web = min(MAX_CONNECTIONS, usable // 2, usable - api_connections - RESERVED_FILES)
    return Budget(limit=usable, api_connections=api_connections, web_connections=web)


def prepare(api_connections: int, max_concurrency: int) -> Budget:
    """Raise the limit, then share it out (the daemon's start)."""
    soft, hard = raise_limit()
    return share(soft, api_connections, max_concurrency, hard)
