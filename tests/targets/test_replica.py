"""targets.replica: the discovery loop, applied through the poller: reloads during a
listing, failures, projects missing from a listing, and saved projects after a restart."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest

from exporter.config import parse_config
from exporter.store import Store
from exporter.targets import Targets
from exporter.targets import replica as targets_module

# ------------------------------------------------- Targets against a client it can wait on


class Listing:
    """A stand-in for ApiClient.projects: each call lists ``pages``, first waiting for
    ``gate`` (so a test can reload while a discovery is under way)."""

    def __init__(self, pages: list[list[dict[str, Any]]]) -> None:
        self.pages = pages
        self.gate = threading.Event()
        self.gate.set()
        self.calls: list[str] = []  # the organization of each listing

    def projects(self, base_url: str, api_key: Any, org: str, *rest: Any) -> Iterator[list[Any]]:
        self.calls.append(org)
        self.gate.wait(10)
        yield from self.pages


def targets_config(org: str = "org-a", key: str = "llx-one", interval: float = 600) -> Any:
    raw = {
        "llamacloud": {"api_key": key},
        "discovery": {"organization_id": org, "interval_seconds": interval},
    }
    return parse_config(raw, {})


def run_targets(
    listing: Listing, scenario: Callable[[Targets, list[Any]], Coroutine[Any, Any, None]]
) -> list[Any]:
    applied: list[Any] = []

    async def apply(config: Any) -> list[str]:
        applied.append(config)
        return []

    async def main() -> None:
        targets = Targets(targets_config(), Store(), listing, apply)  # type: ignore[arg-type]
        stop = asyncio.Event()
        task = asyncio.create_task(targets.run(stop))
        try:
            await asyncio.wait_for(scenario(targets, applied), 20)
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)

    asyncio.run(main())
    return applied


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.01)


ITEMS = [[{"id": "p1", "name": "one"}, {"id": "p2", "name": "two"}]]


def test_a_reload_during_a_discovery_lists_again_with_the_new_settings() -> None:
    listing = Listing(ITEMS)
    listing.gate.clear()

    async def scenario(targets: Targets, applied: list[Any]) -> None:
        await until(lambda: len(listing.calls) == 1)  # the first listing waits at the gate
        await targets.reload(targets_config(org="org-b"))
        listing.gate.set()
        # Not after the 10-minute interval: at once, with org-b.
        await until(lambda: listing.calls == ["org-a", "org-b"] and len(applied) == 2)

    applied = run_targets(listing, scenario)
    assert [p.id for p in applied[-1].projects] == ["p1", "p2"]


def test_a_reload_gives_discovered_projects_the_new_key_at_once() -> None:
    listing = Listing(ITEMS)

    async def scenario(targets: Targets, applied: list[Any]) -> None:
        await until(lambda: len(applied) == 1)
        listing.gate.clear()  # the next discovery does not come back
        await targets.reload(targets_config(key="llx-two"))
        keys = {p.api_key.get() for p in applied[-1].projects}
        assert keys == {"llx-two"}
        listing.gate.set()

    run_targets(listing, scenario)


def test_a_discovery_that_fails_in_a_bug_leaves_the_next_one_running() -> None:
    listing = Listing(ITEMS)
    failures = [RuntimeError("a bug")]

    async def scenario(targets: Targets, applied: list[Any]) -> None:
        # The first discovery first: from Python 3.12 on, wait_for runs this scenario before
        # the loop's first step, whose clearing of _wake would swallow the wake-up below.
        await until(lambda: len(applied) >= 1)
        real = targets._apply

        async def apply_once_broken(config: Any) -> list[str]:
            if failures:
                raise failures.pop()
            return await real(config)

        targets._apply = apply_once_broken
        targets._wake.set()  # a discovery now: it fails in apply
        await until(lambda: not failures and len(listing.calls) >= 2)
        targets._wake.set()  # and the loop still runs the next one
        await until(lambda: len(listing.calls) >= 3 and len(applied) >= 2)

    run_targets(listing, scenario)


def test_a_listing_past_the_project_bound_fails_the_discovery(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(targets_module, "MAX_PROJECTS", 50)
    endless = [[{"id": f"p{page}-{n}", "name": "x"} for n in range(20)] for page in range(10)]
    listing = Listing(endless)

    async def scenario(targets: Targets, applied: list[Any]) -> None:
        await until(lambda: bool(listing.calls))
        await until(lambda: targets._store.discovery_errors == 1)
        assert applied == [] and targets._discovered is None  # nothing taken from it

    run_targets(listing, scenario)


def discoveries(
    listings: list[list[dict[str, Any]]], saved: set[str] | None = None
) -> tuple[list[bool], list[list[str]], Store, set[str]]:
    """Discover once per listing, in order: whether each succeeded, the project ids applied
    after each, the store, and the saved projects forgotten (``saved``: those a restart
    loaded and nothing polls yet)."""
    listing = Listing([])
    store = Store()
    applied: list[Any] = []
    saved = set(saved or ())
    forgotten: set[str] = set()

    async def apply(config: Any) -> list[str]:
        applied.append(config)
        saved.difference_update(p.id for p in config.projects)  # polled now: no longer waiting
        return []

    async def forget(ids: Any) -> None:
        ids = set(ids)
        forgotten.update(ids)
        saved.difference_update(ids)

    async def main() -> list[list[str]]:
        targets = Targets(
            targets_config(),
            store,
            listing,  # type: ignore[arg-type]
            apply,
            saved_ids=lambda: set(saved),
            forget_saved=forget,
        )
        seen = []
        for pages in listings:
            listing.pages = [pages]
            results.append(await targets.discover())
            seen.append(sorted(p.id for p in applied[-1].projects) if applied else [])
        return seen

    results: list[bool] = []
    seen = asyncio.run(main())
    return results, seen, store, forgotten


def test_a_project_missing_from_one_listing_stays_until_three_in_a_row() -> None:
    p1, p2 = {"id": "p1", "name": "one"}, {"id": "p2", "name": "two"}
    ok, applied, _, _ = discoveries([[p1, p2], [p1], [p1], [p1, p2], [p1], [p1], [p1], [p1]])
    assert all(ok)
    assert applied == [
        ["p1", "p2"],
        ["p1", "p2"],  # missing once is not gone
        ["p1", "p2"],  # nor twice
        ["p1", "p2"],  # listed again: its count starts over
        ["p1", "p2"],
        ["p1", "p2"],
        ["p1"],  # three listings in a row without it: gone
        ["p1"],
    ]


def test_a_project_the_filters_drop_goes_at_once() -> None:
    """Listed, but under a name the filters exclude: not a gap in the listing."""
    listings = [[{"id": "p1", "name": "one"}, {"id": "p2", "name": "two"}]]
    listings.append([{"id": "p1", "name": "one"}, {"id": "p2", "name": "scratch-two"}])

    async def run() -> list[list[str]]:
        listing = Listing([])
        applied: list[Any] = []

        async def apply(config: Any) -> list[str]:
            applied.append(sorted(p.id for p in config.projects))
            return []

        raw = {
            "llamacloud": {"api_key": "llx-one"},
            "discovery": {"organization_id": "o", "exclude": "^scratch-"},
        }
        targets = Targets(parse_config(raw, {}), Store(), listing, apply)  # type: ignore[arg-type]
        for pages in listings:
            listing.pages = [pages]
            assert await targets.discover()
        return applied

    assert asyncio.run(run()) == [["p1", "p2"], ["p1"]]


def test_an_empty_listing_is_a_failed_discovery_for_an_organisation_that_had_projects() -> None:
    p1 = {"id": "p1", "name": "one"}
    ok, applied, store, _ = discoveries([[p1], [], [], [], [p1]])
    assert ok == [True, False, False, False, True]
    assert applied == [["p1"]] * 5
    assert store.discovery_errors == 3
    assert store.discovery_projects == 1
    # An organisation with no project yet: an empty listing is its answer, not a failure.
    ok, _, store, _ = discoveries([[], []])
    assert ok == [True, True] and store.discovery_errors == 0


def test_saved_projects_wait_three_listings_after_a_restart() -> None:
    """A restart whose first discoveries leave a saved project out keeps its saved state for
    when it is listed again; one left out three times in a row is forgotten."""
    p1, p2 = {"id": "p1", "name": "one"}, {"id": "p2", "name": "two"}
    ok, applied, _, forgotten = discoveries([[p1], [p1], [p1, p2]], saved={"p1", "p2", "p3"})
    assert all(ok)
    assert applied[-1] == ["p1", "p2"]  # p2 came back in time, to its saved state
    assert forgotten == {"p3"}  # three listings without it
    _, _, _, forgotten = discoveries([[p1]] * 3, saved={"p1", "p2"})
    assert forgotten == {"p2"}
    # Only saved state, no listing that names a project: a failed discovery, nothing forgotten.
    ok, _, _, forgotten = discoveries([[]], saved={"p2"})
    assert ok == [False] and forgotten == set()


def test_choosing_the_shards_projects_runs_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At 100,000 projects the share of a shard takes a while: never on the loop that
    schedules the polls (and answers nothing else meanwhile)."""
    threads: list[bool] = []
    real = targets_module.replica_projects

    def recording(*args: Any, **kwargs: Any) -> Any:
        try:
            asyncio.get_running_loop()
            threads.append(True)
        except RuntimeError:
            threads.append(False)
        return real(*args, **kwargs)

    monkeypatch.setattr(targets_module, "replica_projects", recording)
    ok, _, _, _ = discoveries([[{"id": "p1", "name": "one"}]] * 2)
    assert ok == [True, True]
    assert threads and not any(threads), "replica_projects ran on the event loop"
