"""Which projects this replica polls, kept current: the config's, those discovery lists (on
its own interval), and of all those, this shard's.

It hands the poller a config whose ``projects`` are exactly that list, through the same
:meth:`Poller.apply` a reload uses: a project that appears starts polling, one that vanishes
leaves ``/metrics``. A failed discovery changes nothing.

Missing once is not gone: a listing can leave a project out (the API is not a database), and
forgetting it would drop its counters and saved state, and start it again on a fresh baseline
that never counts the runs of the gap. A project leaves only when :data:`ABSENT_LISTINGS`
successful listings in a row have not listed it; until then it is polled with its last
settings (saved state not yet polled after a restart is kept as long). A listing with no
project at all, for an organisation that had some, is a failed discovery.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import replace
from typing import Any

import structlog

from ..client import ApiClient, PollError, Stopped
from ..config import Config, DiscoveryConfig
from ..poller import Poller, in_thread
from ..store import Store
from .discovery import (
    ABSENT_LISTINGS,
    MAX_PAGES,
    MAX_PROJECTS,
    PAGE_SIZE,
    read_projects,
    replica_projects,
)

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
        saved_ids: Callable[[], set[str]] = set,
        forget_saved: Callable[[Iterable[str]], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        self._config = config
        self._store = store
        self._client = client
        self._apply = apply
        self._clock = clock
        self._saved_ids = saved_ids
        self._forget_saved = forget_saved
        self._discovered: list[Any] | None = None
        # Discovered projects, and saved ones not yet polled, that the last successful
        # listings have not listed: how many listings in a row.
        self._absent: dict[str, int] = {}
        self._saved_absent: dict[str, int] = {}
        self._wake = asyncio.Event()
        # A discovery and a reload each apply a list: one at a time, or a project could be
        # added twice (Poller.apply awaits half way).
        self._applying = asyncio.Lock()
        self._show(config)

    @classmethod
    def for_poller(cls, config: Config, store: Store, client: ApiClient, poller: Poller) -> Targets:
        return cls(
            config,
            store,
            client,
            poller.apply,
            saved_ids=poller.saved_ids,
            forget_saved=poller.forget_saved,
        )

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
            projects, listed, invalid = await in_thread(self._list, discovery)
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
            known = len(self._discovered or ()) + len(self._saved_ids())
            if not listed and known:
                return self._failed(
                    "empty",
                    f"the organisation listed no project, where {known} were known: kept them",
                    started,
                )
            kept = self._merge(projects, listed)
            self._store.record_discovery(len(projects), self._clock())
            config = await in_thread(self.current)
            await self._apply(config)
            await self._age_saved(listed)
        log.info(
            "discovery_succeeded",
            listed=len(projects),
            kept_unlisted=kept,
            polled=len(config.projects),
            shard=str(config.shard),
            duration_seconds=round(time.monotonic() - started, 3),
        )
        return True

    def _merge(self, projects: list[Any], listed: set[str]) -> int:
        """The new discovered list: what this listing kept, and the projects of the last list
        it did not list at all, until :data:`ABSENT_LISTINGS` listings in a row have not.
        (A listed project that ``include``/``exclude`` now drops goes at once.) Returns how
        many unlisted ones are kept."""
        merged = list(projects)
        absent: dict[str, int] = {}
        for project in self._discovered or ():
            if project.id in listed:
                continue
            misses = self._absent.get(project.id, 0) + 1
            if misses < ABSENT_LISTINGS:
                absent[project.id] = misses
                merged.append(project)
            else:
                log.info("discovery_project_gone", project_id=project.id, absent_listings=misses)
        self._absent = absent
        self._discovered = merged
        return len(absent)

    async def _age_saved(self, listed: set[str]) -> None:
        """Saved projects this replica still does not poll: one that was listed is another
        shard's or filtered out, and is forgotten; one that was not is forgotten after
        :data:`ABSENT_LISTINGS` listings in a row without it."""
        gone, absent = [], {}
        for pid in self._saved_ids():
            misses = self._saved_absent.get(pid, 0) + 1
            if pid in listed or misses >= ABSENT_LISTINGS:
                gone.append(pid)
            else:
                absent[pid] = misses
        self._saved_absent = absent
        if gone and self._forget_saved is not None:
            await self._forget_saved(gone)

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

    def _list(self, discovery: DiscoveryConfig) -> tuple[list[Any], set[str], int]:
        """The projects listed that ``include``/``exclude`` keep, read page by page (only
        what is kept stays in memory), the ids of every valid item listed, and how many items
        were skipped."""
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
        return projects, seen, invalid

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
                self._absent, self._saved_absent = {}, {}
            elif self._discovered is not None:
                # The last list under the new settings: the new key, region and filters
                # apply at once, not only after the next discovery succeeds.
                self._discovered = [
                    replace(new.template, id=p.id, name=p.name, organization_id=p.organization_id)
                    for p in self._discovered
                    if new.wants(p.name)
                ]
            restart = await self._apply(await in_thread(self.current))
            if new is None and self._forget_saved is not None:
                await self._forget_saved(self._saved_ids())  # no discovery will list them
        # Frozen dataclasses: patterns compare by pattern, the key as a Secret (by value).
        if config.discovery is not None and config.discovery != old:
            self._wake.set()
        return restart
