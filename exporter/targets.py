"""Which projects this replica polls, kept current: the config's, those discovery lists (on
its own interval), and of all those, this shard's.

It hands the poller a config whose ``projects`` are exactly that list, through the same
:meth:`Poller.apply` a reload uses: a project that appears starts polling, one that vanishes
leaves ``/metrics``. A failed discovery changes nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

import structlog

from .client import ApiClient, PollError, Stopped
from .config import Config
from .discovery import (
    MAX_PAGES,
    MAX_PROJECTS,
    PAGE_SIZE,
    DiscoveryConfig,
    read_projects,
    replica_projects,
)
from .poller import Poller, in_thread
from .store import Store

log = structlog.get_logger("llamacloud_exporter.targets")


def replica_config(config: Config, discovered: list[Any] | None = None) -> Config:
    """``config`` with the projects this replica polls (``discovered``: the last good list)."""
    return replace(config, projects=replica_projects(config.projects, discovered, config.shard))


class Targets:
    """Owns the config as loaded (every static project) and the last discovered list."""

    def __init__(
        self,
        config: Config,
        store: Store,
        client: ApiClient,
        apply: Callable[[Config], Coroutine[Any, Any, list[str]]],
        *,
        clock: Callable[[], float] = time.time,
        forget_unlisted: Callable[[], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        self._config = config
        self._store = store
        self._client = client
        self._apply = apply
        self._clock = clock
        self._forget_unlisted = forget_unlisted
        self._discovered: list[Any] | None = None
        self._wake = asyncio.Event()
        # A discovery and a reload each apply a list: one at a time, or a project could be
        # added twice (Poller.apply awaits half way).
        self._applying = asyncio.Lock()
        self._show(config)

    @classmethod
    def for_poller(cls, config: Config, store: Store, client: ApiClient, poller: Poller) -> Targets:
        return cls(config, store, client, poller.apply, forget_unlisted=poller.forget_unlisted)

    def _show(self, config: Config) -> None:
        self._store.shard = (config.shard.index, config.shard.total)
        self._store.discovery = config.discovery is not None
        if config.discovery is not None:
            self._store.discovery_interval = config.discovery.interval_seconds

    def current(self) -> Config:
        return replica_config(self._config, self._discovered)

    async def discover(self) -> bool:
        """List the projects once and apply them; on failure keep the last list."""
        discovery = self._config.discovery
        if discovery is None:
            return True
        started = time.monotonic()
        try:
            projects, invalid = await in_thread(self._list, discovery)
        except PollError as exc:
            return self._failed(exc.reason, str(exc), started)
        except Stopped:
            return False
        except Exception as exc:  # never the end of the daemon; the log has the traceback
            log.error("discovery_failed", reason="internal", exc_info=exc)
            return self._failed("internal", type(exc).__name__, started)
        if invalid:
            log.warning("discovery_invalid_items", skipped=invalid)
        async with self._applying:
            if discovery is not self._config.discovery:
                # A reload changed the settings while this listed: list again with them.
                log.info("discovery_superseded", reason="reload")
                self._wake.set()
                return False
            first = self._discovered is None
            self._discovered = projects
            self._store.record_discovery(len(projects), self._clock())
            config = self.current()
            await self._apply(config)
            if first and self._forget_unlisted is not None:
                await self._forget_unlisted()
        log.info(
            "discovery_succeeded",
            listed=len(projects),
            polled=len(config.projects),
            shard=str(config.shard),
            duration_seconds=round(time.monotonic() - started, 3),
        )
        return True

    def _failed(self, reason: str, message: str, started: float) -> bool:
        self._store.record_discovery(None, self._clock())
        log.warning(
            "discovery_failed",
            reason=reason,
            error=message,
            kept=len(self._discovered or ()),
            duration_seconds=round(time.monotonic() - started, 3),
        )
        return False

    def _list(self, discovery: DiscoveryConfig) -> tuple[list[Any], int]:
        """The projects listed, read page by page (only what is kept stays in memory), and
        how many items were skipped."""
        projects: list[Any] = []
        seen: set[str] = set()
        invalid = 0
        template = discovery.template
        for page in self._client.projects(
            template.base_url,
            template.api_key,
            discovery.organization_id,
            MAX_PAGES,
            self._config.max_response_bytes,
            PAGE_SIZE,
        ):
            kept, skipped = read_projects(page, discovery, seen)
            projects += kept
            invalid += skipped
            if len(seen) > MAX_PROJECTS:
                raise PollError("too_large", f"more than {MAX_PROJECTS} projects listed")
        return projects, invalid

    async def run(self, stop: asyncio.Event) -> None:
        """Discover on the configured interval until ``stop``; a reload that changes the
        discovery settings discovers at once."""
        while not stop.is_set():
            discovery = self._config.discovery
            self._wake.clear()  # a reload from here on wakes the next wait
            if discovery is not None:
                try:
                    await self.discover()
                except Exception as exc:  # a bug: this discovery fails, the next one runs
                    log.error("discovery_failed", reason="internal", exc_info=exc)
                    self._store.record_discovery(None, self._clock())
            interval = discovery.interval_seconds if discovery is not None else None
            waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
            try:
                await asyncio.wait(waits, timeout=interval, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waits:
                    waiter.cancel()

    async def reload(self, config: Config) -> list[str]:
        """A reloaded config: applied with the last discovered list; discovered again at once
        when its discovery settings changed."""
        async with self._applying:
            old = self._config.discovery
            self._config = config
            self._show(config)
            new = config.discovery
            if new is None:
                self._discovered = None
            elif self._discovered is not None:
                # The last list under the new settings: the new key, region and filters
                # apply at once, not only after the next discovery succeeds.
                self._discovered = [
                    replace(new.template, id=p.id, name=p.name, organization_id=p.organization_id)
                    for p in self._discovered
                    if new.wants(p.name)
                ]
            restart = await self._apply(self.current())
            if new is None and self._forget_unlisted is not None:
                await self._forget_unlisted()  # saved projects no discovery will list
        # Frozen dataclasses: patterns compare by pattern, the key as a Secret (by value).
        if config.discovery is not None and config.discovery != old:
            self._wake.set()
        return restart
