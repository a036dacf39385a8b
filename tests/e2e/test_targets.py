"""Discovery and sharding end to end: the exporter against the simulator's project listing."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from exporter.config import Shard
from exporter.simulator import Simulator
from exporter.targets.sharding import owns
from tests.helpers import Exporter, Samples, run_cli, session, value, wait_for, write_config


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


def test_a_restart_with_a_gap_in_discovery_counts_the_runs_of_the_gap(
    tmp_path: Path, org: Simulator, start_exporter: Callable[..., Exporter]
) -> None:

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
