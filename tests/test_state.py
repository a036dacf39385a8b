from __future__ import annotations

import sqlite3
from pathlib import Path

from exporter.aggregate import RunTotals, SessionTracker, aggregate
from exporter.state import StateFile
from tests.conftest import session


def poll_and_save(
    state: StateFile, tracker: SessionTracker, totals: RunTotals, items: list[object]
) -> RunTotals:
    result = aggregate([items], tracker)
    totals = totals + result.new_runs
    state.save("p", totals, result, tracker)
    return totals


def test_counters_and_baseline_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    state = StateFile(path)
    tracker = SessionTracker()
    totals = poll_and_save(state, tracker, RunTotals(), [session("a"), session("b"), session("c")])
    totals = poll_and_save(
        state, tracker, totals, [session("a", turns=3), session("b"), session("d")]
    )
    assert (totals.runs, totals.sessions_created) == (2, 1)
    state.close()

    saved = StateFile(path).load(["p"])["p"]
    assert saved.totals == totals
    assert saved.sessions == dict(tracker.fingerprints())
    assert set(saved.sessions) == {"a", "b", "d"}  # c was removed from the file too


def test_projects_that_left_the_config_are_forgotten(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    state = StateFile(path)
    poll_and_save(state, SessionTracker(), RunTotals(), [session("a")])
    state.close()
    assert StateFile(path).load(["other"]) == {}
    assert StateFile(path).load(["p"]) == {}


def test_a_changed_fingerprint_scheme_drops_the_baseline_not_the_counters(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    state = StateFile(path)
    tracker = SessionTracker()
    totals = poll_and_save(state, tracker, RunTotals(), [session("a")])
    totals = poll_and_save(state, tracker, totals, [session("a", turns=9)])
    state.close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = '1' WHERE key = 'fingerprint_probe'")
    saved = StateFile(path).load(["p"])["p"]
    assert saved.totals.runs == 1
    assert saved.sessions is None


def test_forget_drops_a_project(tmp_path: Path) -> None:
    state = StateFile(tmp_path / "s.db")
    poll_and_save(state, SessionTracker(), RunTotals(), [session("a")])
    state.forget("p")
    assert state.load(["p"]) == {}
