"""Incremental listings end to end: the daemon against a simulator that lists newest first,
scraped over HTTP, against what full listings count."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from exporter.simulator import Simulator
from tests.aggregate.helpers import at
from tests.helpers import Exporter, Samples, value, wait_for, write_config

# ------------------------------------------------- the daemon against the simulator, over HTTP

SESSIONS = 2000  # 20 pages of 100


@pytest.fixture
def newest_sim() -> Iterator[Simulator]:
    with Simulator(
        projects=1, sessions_per_project=SESSIONS, seed=11, order="newest-first"
    ) as simulator:
        yield simulator


def poll_events(exp: Exporter) -> list[dict[str, Any]]:
    lines = (json.loads(line) for line in exp.logs().splitlines() if line.startswith("{"))
    return [line for line in lines if line.get("event") == "poll_succeeded"]


def sessions_listed(samples: Samples, pid: str) -> float:
    return sum(
        value(samples, "llamacloud_chat_sessions", project_id=pid, status=s) or 0
        for s in ("never_run", "ok", "error")
    )


def test_a_session_that_runs_again_during_a_listing_is_never_counted_as_new(
    newest_sim: Simulator, tmp_path: Path, start_exporter: Callable[..., Exporter]
) -> None:
    """Newest first with offset tokens: the re-run session jumps to page one, behind the
    listing, which never sees it. It must stay listed and its run count once."""
    pid = newest_sim.project_ids[0]
    reruns = 6
    done: list[str] = []

    def rerun_behind(project_id: str, offset: int, size: int) -> None:
        if offset == 500 and len(done) < reruns:  # after page 6: a session from page 20
            last = newest_sim.sessions(project_id)[-1]["session_id"]
            newest_sim.rerun(project_id, last)
            done.append(last)

    config = write_config(
        tmp_path / "c.yaml", newest_sim.base_url, [pid], llamacloud={"listing": "full"}
    )
    exp = start_exporter(config)
    exp.wait_metric("llamacloud_up", {"project_id": pid}, lambda v: v == 1)
    newest_sim.page_hook = rerun_behind

    # Every scrape while sessions move: nothing dips, nothing is created.
    def every_rerun_counted() -> bool:
        m = exp.metrics()
        assert sessions_listed(m, pid) == SESSIONS
        assert value(m, "llamacloud_chat_sessions_created_total", project_id=pid) == 0
        return value(m, "llamacloud_chat_runs_total", project_id=pid) == reruns

    wait_for(every_rerun_counted, 60, "every re-run counted")
    newest_sim.page_hook = None
    polls = len(poll_events(exp))
    wait_for(lambda: len(poll_events(exp)) >= polls + 2, what="two more polls")
    m = exp.metrics()
    assert value(m, "llamacloud_chat_runs_total", project_id=pid) == reruns
    assert value(m, "llamacloud_chat_sessions_created_total", project_id=pid) == 0
    assert sessions_listed(m, pid) == SESSIONS
    assert any(event["missed"] > 0 for event in poll_events(exp))  # the case did happen


def test_auto_reads_what_changed_and_counts_what_full_counts(
    newest_sim: Simulator, tmp_path: Path, start_exporter: Callable[..., Exporter]
) -> None:
    pid = newest_sim.project_ids[0]
    full = start_exporter(
        write_config(
            tmp_path / "full.yaml", newest_sim.base_url, [pid], llamacloud={"listing": "full"}
        )
    )
    auto = start_exporter(
        write_config(
            tmp_path / "auto.yaml",
            newest_sim.base_url,
            [pid],
            llamacloud={"full_listing_every": 4},
        )
    )
    m = auto.wait_metric("llamacloud_poll_incremental", {"project_id": pid}, lambda v: v == 1)
    # Steady state: page one holds the newest session, page two is all older than the cutoff.
    assert value(m, "llamacloud_poll_pages", project_id=pid) == 2
    full.wait_metric("llamacloud_up", {"project_id": pid}, lambda v: v == 1)
    ids = [item["session_id"] for item in newest_sim.sessions(pid)]
    for sid in (ids[5], ids[700], ids[1999]):
        newest_sim.rerun(pid, sid)
    newest_sim.delete_session(pid, ids[1500])
    created = newest_sim.create_sessions(pid, 2)
    newest_sim.rerun(pid, created[0])

    def settled(exp: Exporter, runs: float | None = None) -> Samples | None:
        samples = exp.metrics()
        counted = value(samples, "llamacloud_chat_runs_total", project_id=pid) or 0
        ok = counted >= 4 and sessions_listed(samples, pid) == SESSIONS + 1
        return samples if ok and runs in (None, counted) else None

    # The deleted session leaves at auto's next full listings; runs count at once.
    got_full = wait_for(lambda: settled(full), what="full listings settle")
    runs = value(got_full, "llamacloud_chat_runs_total", project_id=pid)
    got_auto = wait_for(lambda: settled(auto, runs), what="auto listings settle")
    for name, labels in (
        ("llamacloud_chat_sessions_created_total", {}),
        ("llamacloud_chat_run_errors_total", {}),
        ("llamacloud_chat_tokens_total", {"token_type": "input"}),
        ("llamacloud_chat_turns_total", {}),
        ("llamacloud_chat_session_tokens", {"token_type": "output"}),
        ("llamacloud_chat_session_turns", {}),
        ("llamacloud_chat_session_duration_seconds", {}),
        ("llamacloud_chat_last_updated_timestamp_seconds", {}),
    ):
        assert value(got_auto, name, project_id=pid, **labels) == value(
            got_full, name, project_id=pid, **labels
        ), name
    assert value(got_auto, "llamacloud_chat_sessions_created_total", project_id=pid) == 2
    # Every 4th poll at the latest is a full listing; the others read two pages or three.
    events = poll_events(auto)
    assert all(e["pages"] <= 3 for e in events if e["incremental"])
    assert all(e["pages"] >= SESSIONS // 100 for e in events if not e["incremental"])
    streak = longest = 0
    for e in events:
        streak = streak + 1 if e["incremental"] else 0
        longest = max(longest, streak)
    assert 1 <= longest <= 3


def test_an_order_broken_mid_run_goes_back_to_full_listings_once(
    newest_sim: Simulator, tmp_path: Path, start_exporter: Callable[..., Exporter]
) -> None:
    pid = newest_sim.project_ids[0]
    exp = start_exporter(write_config(tmp_path / "c.yaml", newest_sim.base_url, [pid]))
    exp.wait_metric("llamacloud_poll_incremental", {"project_id": pid}, lambda v: v == 1)
    # Now in creation order, an hour apart: the first pages hold the oldest sessions.
    items = [at(f"c{i}", 3600.0 * i) for i in range(300)]
    newest_sim.set_sessions(pid, items)
    m = exp.wait_metric(
        "llamacloud_chat_sessions", {"project_id": pid, "status": "ok"}, lambda v: v == 300
    )
    polls = len(poll_events(exp))
    wait_for(lambda: len(poll_events(exp)) >= polls + 3, what="three more polls")
    m = exp.metrics()
    assert value(m, "llamacloud_poll_incremental", project_id=pid) == 0
    assert value(m, "llamacloud_poll_pages", project_id=pid) == 3
    lines = [json.loads(line) for line in exp.logs().splitlines() if line.startswith("{")]
    turned = [line for line in lines if line.get("event") == "listing_full"]
    assert len(turned) == 1 and turned[0]["project_id"] == pid
    # In order again: incremental once more.
    newest_sim.set_sessions(pid, list(reversed(items)))
    exp.wait_metric("llamacloud_poll_incremental", {"project_id": pid}, lambda v: v == 1)


def test_a_restart_continues_incrementally_and_exactly(
    newest_sim: Simulator, tmp_path: Path, start_exporter: Callable[..., Exporter]
) -> None:
    pid = newest_sim.project_ids[0]
    config = write_config(
        tmp_path / "c.yaml", newest_sim.base_url, [pid], state={"path": str(tmp_path / "s.db")}
    )
    exp = start_exporter(config)
    exp.wait_metric("llamacloud_poll_incremental", {"project_id": pid}, lambda v: v == 1)
    ids = [item["session_id"] for item in newest_sim.sessions(pid)]
    newest_sim.rerun(pid, ids[3])
    exp.wait_metric("llamacloud_chat_runs_total", {"project_id": pid}, lambda v: v == 1)
    exp.proc.send_signal(signal.SIGTERM)
    assert exp.proc.wait(timeout=30) == 0
    newest_sim.rerun(pid, ids[1000])
    newest_sim.rerun(pid, ids[1999])

    again = start_exporter(config)
    m = again.wait_metric("llamacloud_chat_runs_total", {"project_id": pid}, lambda v: v == 3)
    first = poll_events(again)[0]
    assert first["incremental"] and first["pages"] <= 3 and not first["baseline"]
    assert sessions_listed(m, pid) == SESSIONS
    assert value(m, "llamacloud_chat_sessions_created_total", project_id=pid) == 0
    # The gauges moved by exactly what the two re-runs changed: a full listing agrees.
    fresh = start_exporter(write_config(tmp_path / "full.yaml", newest_sim.base_url, [pid]))
    f = fresh.wait_metric("llamacloud_up", {"project_id": pid}, lambda v: v == 1)
    for name, labels in (
        ("llamacloud_chat_session_tokens", {"token_type": "input"}),
        ("llamacloud_chat_session_duration_seconds", {}),
        ("llamacloud_chat_session_turns", {}),
    ):
        assert value(m, name, project_id=pid, **labels) == value(f, name, project_id=pid, **labels)


def test_a_reload_to_listing_full_reads_every_page(
    newest_sim: Simulator, tmp_path: Path, start_exporter: Callable[..., Exporter]
) -> None:
    pid = newest_sim.project_ids[0]
    path = tmp_path / "c.yaml"
    exp = start_exporter(write_config(path, newest_sim.base_url, [pid]))
    exp.wait_metric("llamacloud_poll_incremental", {"project_id": pid}, lambda v: v == 1)
    write_config(path, newest_sim.base_url, [pid], llamacloud={"listing": "full"})
    exp.proc.send_signal(signal.SIGHUP)
    m = exp.wait_metric("llamacloud_poll_incremental", {"project_id": pid}, lambda v: v == 0)
    assert value(m, "llamacloud_poll_pages", project_id=pid) == SESSIONS // 100
    assert value(m, "llamacloud_config_last_reload_successful") == 1


def test_a_full_listing_parses_only_the_pages_that_changed(
    tmp_path: Path, start_exporter: Callable[..., Exporter]
) -> None:
    """Creation order: a re-run changes its own page only; the others are taken unread."""
    with Simulator(projects=1, sessions_per_project=1000, seed=5, order="created") as simulator:
        pid = simulator.project_ids[0]
        exp = start_exporter(write_config(tmp_path / "c.yaml", simulator.base_url, [pid]))
        wait_for(lambda: len(poll_events(exp)) >= 2, what="two polls")
        steady = poll_events(exp)[-1]
        assert (steady["pages"], steady["items"], steady["incremental"]) == (10, 0, False)
        sid = simulator.sessions(pid)[450]["session_id"]
        simulator.rerun(pid, sid)  # stays on page 5 in creation order
        m = exp.wait_metric("llamacloud_chat_runs_total", {"project_id": pid}, lambda v: v == 1)
        assert sessions_listed(m, pid) == 1000
        changed = next(e for e in poll_events(exp) if e["new_runs"] == 1)
        assert (changed["pages"], changed["items"]) == (10, 100)
