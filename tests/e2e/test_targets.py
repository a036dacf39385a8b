"""Discovery and sharding end to end: the exporter against the simulator's project listing."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from exporter.config import Shard, parse_config
from exporter.simulator import Simulator
from exporter.store import Store
from exporter.targets import Targets
from exporter.targets import replica as targets_module
from exporter.targets.sharding import owns
from tests.helpers import REPO, Exporter, Samples, value, wait_for, write_config


@pytest.fixture
def org() -> Iterator[Simulator]:
    """Six projects, one of them scratch-1 (every fifth name is scratch-N)."""
    with Simulator(projects=6, sessions_per_project=20, seed=3) as simulator:
        yield simulator


def discovering(tmp_path: Path, sim: Simulator, **top: object) -> Path:
    discovery = {"organization_id": sim.organization_id, "interval_seconds": 1}
    discovery.update(top.pop("discovery", {}))  # type: ignore[arg-type]
    path = write_config(tmp_path / "config.yaml", sim.base_url, [], discovery=discovery, **top)
    return path


def polled(samples: Samples) -> set[str]:
    """The projects with a successful poll."""
    return {
        dict(labels)["project_id"]
        for (name, labels), v in samples.items()
        if name == "llamacloud_up" and v == 1
    }


def listed(exporter: Exporter) -> set[str]:
    return {
        dict(labels)["project_id"]
        for (name, labels), _ in exporter.metrics().items()
        if name == "llamacloud_up"
    }


def test_discovered_projects_come_and_go(
    tmp_path: Path, org: Simulator, start_exporter: Callable[..., Exporter]
) -> None:
    names = {p["id"]: p["name"] for p in org.projects()}
    kept = {pid for pid, name in names.items() if not name.startswith("scratch-")}
    config = discovering(tmp_path, org, discovery={"exclude": "^scratch-"})
    exporter = start_exporter(config)
    wait_for(lambda: polled(exporter.metrics()) == kept, 30, "every discovered project up")
    samples = exporter.metrics()
    assert value(samples, "llamacloud_discovery_projects") == len(kept) == 5
    assert value(samples, "llamacloud_discovery_errors_total") == 0
    for pid in kept:
        info = {"project_id": pid, "name": names[pid], "organization_id": org.organization_id}
        assert value(samples, "llamacloud_project_info", **info) == 1

    new = org.add_project(name="support-eu", sessions=5)
    wait_for(lambda: new in polled(exporter.metrics()), 30, "the new project polled")
    gone = sorted(kept)[0]
    org.remove_project(gone)
    # It leaves /metrics as a reload would take it out: every series with its id.
    wait_for(lambda: gone not in listed(exporter), 30, "the removed project gone")
    assert not any(dict(labels).get("project_id") == gone for _, labels in exporter.metrics())
    assert value(exporter.metrics(), "llamacloud_discovery_projects") == 5


def test_a_discovery_outage_keeps_the_last_list(
    tmp_path: Path, org: Simulator, start_exporter: Callable[..., Exporter]
) -> None:
    exporter = start_exporter(discovering(tmp_path, org))
    every = set(org.project_ids)
    wait_for(lambda: polled(exporter.metrics()) == every, 30, "every project up")
    org.fail_next(10**6, status=503, endpoint="projects")
    try:
        exporter.wait_metric("llamacloud_discovery_errors_total", {}, lambda v: v >= 2)
        samples = exporter.metrics()
        assert polled(samples) == every  # the projects keep polling
        assert value(samples, "llamacloud_discovery_projects") == 6
        assert '"event": "discovery_failed"' in exporter.logs()
    finally:
        org.clear_faults(endpoint="projects")
    last = value(exporter.metrics(), "llamacloud_discovery_last_success_timestamp_seconds")
    assert last is not None
    exporter.wait_metric(
        "llamacloud_discovery_last_success_timestamp_seconds", {}, lambda v: v > last
    )


def test_a_static_entry_wins_and_keeps_its_own_name(
    tmp_path: Path, org: Simulator, start_exporter: Callable[..., Exporter]
) -> None:
    first = org.project_ids[0]
    config = discovering(tmp_path, org)
    text = config.read_text().replace("projects: []", f"projects: [{{id: {first}, name: mine}}]")
    config.write_text(text)
    exporter = start_exporter(config)
    wait_for(lambda: polled(exporter.metrics()) == set(org.project_ids), 30, "every project up")
    info = [labels for name, labels in exporter.metrics() if name == "llamacloud_project_info"]
    mine = [dict(labels) for labels in info if dict(labels)["project_id"] == first]
    assert [labels["name"] for labels in mine] == ["mine"]


def test_replicas_split_the_discovered_projects(
    tmp_path: Path, org: Simulator, start_exporter: Callable[..., Exporter]
) -> None:
    for n in range(10):
        org.add_project(name=f"team-{n}", sessions=2)
    every = set(org.project_ids)
    config = discovering(tmp_path, org)
    replicas = [start_exporter(config, "--shard", f"{i}/3") for i in range(3)]
    shares = []
    for i, exporter in enumerate(replicas):
        mine = {pid for pid in every if owns(Shard(i, 3), pid)}
        wait_for(lambda e=exporter, m=mine: polled(e.metrics()) == m, 30, f"shard {i}'s projects")
        samples = exporter.metrics()
        assert value(samples, "llamacloud_shard_index") == i
        assert value(samples, "llamacloud_shards") == 3
        assert value(samples, "llamacloud_discovery_projects") == len(every)  # each lists all
        shares.append(mine)
    assert set().union(*shares) == every
    assert sum(len(share) for share in shares) == len(every)  # each on one replica


def test_a_restart_keeps_the_counters_of_discovered_projects(
    tmp_path: Path, org: Simulator, start_exporter: Callable[..., Exporter]
) -> None:
    config = discovering(tmp_path, org, state={"path": str(tmp_path / "state.db")})
    pid = org.project_ids[0]
    exporter = start_exporter(config)
    wait_for(lambda: pid in polled(exporter.metrics()), 30, "polled")
    org.step(5)
    counted = exporter.wait_metric("llamacloud_chat_runs_total", {"project_id": pid}, bool)
    runs = value(counted, "llamacloud_chat_runs_total", project_id=pid)
    assert runs
    exporter.proc.terminate()
    exporter.proc.wait(10)
    again = start_exporter(config)
    # Saved before discovery listed it again, kept until it did: not a fresh baseline.
    again.wait_metric("llamacloud_chat_runs_total", {"project_id": pid}, lambda v: v >= runs)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


def test_shard_flags(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("projects: [{id: p, api_key: llx-k}]\nsharding: {total: 3}\n")
    ok = run_cli("--config", str(config), "--check-config", "--shard", "1/4")
    assert ok.returncode == 0, ok.stderr
    assert "shard 1/4" in ok.stdout
    pod = {"HOSTNAME": "llamacloud-exporter-2"}
    ok = run_cli("--config", str(config), "--check-config", "--shard.from-hostname", env=pod)
    assert "shard 2/3" in ok.stdout, ok.stderr  # the total from sharding.total
    ok = run_cli(
        *("--config", str(config), "--check-config", "--shard.from-hostname"),
        *("--shard.total", "5"),
        env=pod,
    )
    assert "shard 2/5" in ok.stdout, ok.stderr
    for args, env, problem in [
        (("--shard", "4/4"), {}, "INDEX must be from 0 to 3"),
        (("--shard", "0/1000000000"), {}, "TOTAL must be from 1 to 10000"),
        (("--shard", ""), {}, "is not INDEX/TOTAL"),  # an unset ${SHARD}: not every project
        (("--shard.total", "2"), {}, "--shard.total goes with --shard.from-hostname"),
        (("--shard.from-hostname", "--shard.total", "2"), pod, "ordinal 2, but there are only 2"),
        (("--shard.from-hostname",), {"HOSTNAME": "laptop"}, "does not end in -<ordinal>"),
    ]:
        bad = run_cli("--config", str(config), "--check-config", *args, env=env)
        assert bad.returncode == 2 and problem in bad.stderr, (args, bad.stderr)
    both = run_cli("--config", str(config), "--shard", "0/2", "--shard.from-hostname")
    assert both.returncode == 2 and "not allowed with" in both.stderr


def test_once_discovers_before_it_polls(tmp_path: Path, org: Simulator) -> None:
    config = discovering(tmp_path, org)
    once = run_cli("--config", str(config), "--once", "--shard", "0/2")
    assert once.returncode == 0, once.stderr
    mine = {pid for pid in org.project_ids if owns(Shard(0, 2), pid)}
    shown = {
        line.split('"')[1] for line in once.stdout.splitlines() if line.startswith("llamacloud_up{")
    }
    assert shown == mine
    org.fail_next(10**6, status=503, endpoint="projects")
    failed = run_cli("--config", str(config), "--once")
    assert failed.returncode == 1  # discovery failed: nothing to poll, and said so
    assert "discovery_failed" in failed.stderr + failed.stdout


def test_a_reload_that_turns_discovery_on_discovers_at_once(
    tmp_path: Path, org: Simulator, start_exporter: Callable[..., Exporter]
) -> None:
    first = org.project_ids[0]
    config = write_config(tmp_path / "config.yaml", org.base_url, [first])
    exporter = start_exporter(config)
    wait_for(lambda: polled(exporter.metrics()) == {first}, 30, "the static project up")
    assert value(exporter.metrics(), "llamacloud_discovery_errors_total") is None  # not on
    # A 10-minute interval: only the reload can have started this discovery.
    discovering(tmp_path, org, discovery={"interval_seconds": 600})
    exporter.proc.send_signal(signal.SIGHUP)
    every = set(org.project_ids)
    wait_for(lambda: polled(exporter.metrics()) == every, 30, "every project after the reload")


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


def test_a_restart_with_a_gap_in_discovery_counts_the_runs_of_the_gap(
    tmp_path: Path, org: Simulator, start_exporter: Callable[..., Exporter]
) -> None:
    from tests.helpers import session

    pid = org.project_ids[0]
    org.set_sessions(pid, [session("a"), session("b")])
    config = discovering(
        tmp_path, org, state={"path": str(tmp_path / "state.db")}, discovery={"interval_seconds": 2}
    )
    exporter = start_exporter(config)
    wait_for(lambda: pid in polled(exporter.metrics()), 30, "polled")
    org.set_sessions(pid, [session("a", turns=3), session("b")])
    exporter.wait_metric("llamacloud_chat_runs_total", {"project_id": pid}, lambda v: v == 1)
    exporter.proc.terminate()
    exporter.proc.wait(10)
    # While the exporter is down both sessions run again, and its first listing leaves the
    # project out.
    org.set_sessions(pid, [session("a", turns=4), session("b", turns=4)])
    org.hide_project(pid)
    again = start_exporter(config, ready=False)
    again.wait_metric("llamacloud_discovery_projects", {}, lambda v: v == 5)
    org.hide_project(pid, hidden=False)
    # Its saved state waited: the two runs of the gap count, on top of the one before.
    again.wait_metric("llamacloud_chat_runs_total", {"project_id": pid}, lambda v: v == 3)


def test_a_name_that_is_not_unicode_never_breaks_a_scrape(
    tmp_path: Path, org: Simulator, start_exporter: Callable[..., Exporter]
) -> None:
    """The API can send an unpaired surrogate (JSON's "\\ud800"), which no UTF-8 page can
    hold: the name is shown with U+FFFD in its place, the organisation id's item is skipped,
    and /metrics and / go on answering."""
    bad_name = org.add_project(name="team-\ud800-eu", sessions=2)
    bad_org = org.add_project(name="elsewhere", organization_id="org-\udfff", sessions=2)
    exporter = start_exporter(discovering(tmp_path, org))
    wait_for(lambda: bad_name in polled(exporter.metrics()), 30, "the project polled")
    samples = exporter.metrics()
    info = {
        "project_id": bad_name,
        "name": "team-\ufffd-eu",
        "organization_id": org.organization_id,
    }
    assert value(samples, "llamacloud_project_info", **info) == 1
    assert bad_org not in listed(exporter)
    page = exporter.get("/")
    assert page.status_code == 200 and "team-\ufffd-eu" in page.text
    assert exporter.get("/metrics", headers={"Accept": "application/openmetrics-text"}).is_success
    assert '"event": "discovery_invalid_items"' in exporter.logs()


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
