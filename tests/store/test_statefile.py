"""store.statefile: the state file's schema and what it carries over a restart: counters,
baselines and listing state, saved only with what they were counted against."""

from __future__ import annotations

import json
import math
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from exporter.aggregate import RunTotals, SessionTracker, aggregate
from exporter.store import SaveJob, StateFile, check_state_path
from exporter.store.sqlitefile import CORRUPT, EMPTY_FILE, NOT_SQLITE
from exporter.store.statefile import BAD_SESSIONS, BAD_TOTALS, FOREIGN, UNKNOWN_SCHEMA
from tests.helpers import session
from tests.store.helpers import (
    ROOT,
    locked_by_another_process,
    make_state,
    moved_files,
    older_schema,
    poll_and_save,
)

# --------------------------------------------------------------------------- round trips


def test_counters_and_baseline_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with StateFile(path) as state:
        tracker = SessionTracker()
        items = [session("a"), session("b"), session("c")]
        totals = poll_and_save(state, tracker, RunTotals(), items)
        totals = poll_and_save(
            state, tracker, totals, [session("a", turns=3), session("b"), session("d")]
        )
        assert (totals.runs, totals.sessions_created) == (2, 1)
        assert state.moved_aside is None

    with StateFile(path) as state:
        saved = state.load(["p"])["p"]
    assert saved.totals == totals
    assert sorted(saved.sessions or []) == sorted(tracker.rows())
    # c, absent once, is kept with its run and the missed flag; then gone from the file too.
    assert {row[0]: row[2] for row in saved.sessions or []} == {"a": 1, "b": 1, "c": 5, "d": 1}
    assert saved.listing == tracker.state
    with StateFile(path) as state:
        restored = SessionTracker(saved.sessions, saved.listing)
        poll_and_save(state, restored, totals, [session("a", turns=3), session("b")])
        saved = state.load(["p"])["p"]
    # c, absent twice, is dropped: its row keeps only where counting left off, for a while.
    assert {row[0]: row[2] for row in saved.sessions or []} == {"a": 1, "b": 1, "c": 8, "d": 5}


def test_projects_that_left_the_config_are_forgotten(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with StateFile(path) as state:
        poll_and_save(state, SessionTracker(), RunTotals(), [session("a")])
    with StateFile(path) as state:
        assert state.load(["other"]) == {}
    with StateFile(path) as state:
        assert state.load(["p"]) == {}


def test_a_changed_fingerprint_scheme_drops_the_baseline_not_the_counters(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with StateFile(path) as state:
        tracker = SessionTracker()
        totals = poll_and_save(state, tracker, RunTotals(), [session("a")])
        totals = poll_and_save(state, tracker, totals, [session("a", turns=9)])
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = '1' WHERE key = 'fingerprint_probe'")
    with StateFile(path) as state:
        saved = state.load(["p"])["p"]
    assert saved.totals.runs == 1
    assert saved.sessions is None


def test_forget_drops_a_project(tmp_path: Path) -> None:
    with StateFile(tmp_path / "s.db") as state:
        poll_and_save(state, SessionTracker(), RunTotals(), [session("a")])
        state.forget("p")
        assert state.load(["p"]) == {}


def test_a_large_first_save_and_load(tmp_path: Path) -> None:
    """The baseline of a big project is written in one go and read back as it was."""
    path = tmp_path / "s.db"
    items = [session(f"ses-{i}", turns=i % 7) for i in range(50_000)]
    with StateFile(path) as state:
        tracker = SessionTracker()
        totals = poll_and_save(state, tracker, RunTotals(), items)
    with StateFile(path) as state:
        saved = state.load(["p"])["p"]
    assert saved.totals == totals
    assert sorted(saved.sessions or []) == sorted(tracker.rows())


def test_a_failed_save_does_not_double_count_after_a_restart(tmp_path: Path) -> None:
    """Fingerprints of a failed save are written by the next good one, with its totals."""
    path = tmp_path / "s.db"
    tracker = SessionTracker()
    state = StateFile(path, busy_timeout=0.2)
    live = poll_and_save(state, tracker, RunTotals(), [session(s) for s in "abcd"])
    # a runs again and e appears with a run: both counted live, but the save fails.
    second = [session("a", turns=5), session("b"), session("c"), session("d"), session("e")]
    result = aggregate([second], tracker)
    live = live + result.new_runs
    with locked_by_another_process(path), pytest.raises(sqlite3.OperationalError):
        state.save("p", live, result, tracker)
    # b runs again and e is gone; this save succeeds.
    third = [session("a", turns=5), session("b", turns=7), session("c"), session("d")]
    live = poll_and_save(state, tracker, live, third)
    state.close()
    assert (live.runs, live.sessions_created) == (3, 1)

    with StateFile(path) as state:
        saved = state.load(["p"])["p"]
    assert saved.totals == live
    again = aggregate([third], SessionTracker(saved.sessions, saved.listing))
    assert again.new_runs.runs == 0, "a run was counted twice after the restart"
    assert saved.totals + again.new_runs == live
    assert sorted(saved.sessions or []) == sorted(tracker.rows())


def test_persistent_save_failures_never_leave_counters_ahead_of_the_baseline(
    tmp_path: Path,
) -> None:
    """Saves that keep failing leave the last good pair; a restart counts up to live again."""
    path = tmp_path / "s.db"
    tracker = SessionTracker()
    state = StateFile(path, busy_timeout=0.1)
    live = poll_and_save(state, tracker, RunTotals(), [session("a"), session("b")])
    polls = [
        [session("a", turns=2), session("b")],
        [session("a", turns=2), session("b", turns=4), session("c")],
    ]
    with locked_by_another_process(path):
        for items in polls:
            result = aggregate([items], tracker)
            live = live + result.new_runs
            with pytest.raises(sqlite3.OperationalError):
                state.save("p", live, result, tracker)
    state.close()
    with StateFile(path) as state:
        saved = state.load(["p"])["p"]
    assert saved.totals.runs == 0
    after = (
        saved.totals
        + aggregate([polls[-1]], SessionTracker(saved.sessions, saved.listing)).new_runs
    )
    assert after == live


def test_counters_that_are_not_finite_are_never_written(tmp_path: Path) -> None:
    """Such a save fails (and is counted) instead of leaving a file the next start rejects."""
    path = tmp_path / "s.db"
    with StateFile(path) as state:
        tracker = SessionTracker()
        live = poll_and_save(state, tracker, RunTotals(), [session("a")])
        result = aggregate([[session("a", turns=2)]], tracker)
        with pytest.raises(ValueError):
            state.save("p", live + RunTotals(turns=math.inf), result, tracker)
        live = poll_and_save(state, tracker, live + result.new_runs, [session("a", turns=2)])
    with StateFile(path) as state:
        assert state.moved_aside is None
        saved = state.load(["p"])["p"]
    assert (saved.totals, sorted(saved.sessions or [])) == (live, sorted(tracker.rows()))


def test_a_batch_rolls_back_only_the_save_that_failed(tmp_path: Path) -> None:
    """Each job of ``save_many`` in a savepoint: one that cannot be written costs only its
    own rows, and its project's next save writes its whole state."""
    path = tmp_path / "s.db"
    trackers = {pid: SessionTracker() for pid in ("good", "bad")}
    first = {pid: aggregate([[session("a"), session("b")]], t) for pid, t in trackers.items()}
    with StateFile(path) as state:
        jobs = [SaveJob(pid, r.new_runs, r, trackers[pid]) for pid, r in first.items()]
        assert state.save_many(jobs) == [None, None]
        # A save reads its tracker: the next poll comes after it.
        second = {
            pid: aggregate([[session("a", turns=2), session("b"), session("c")]], t)
            for pid, t in trackers.items()
        }
        totals = {pid: first[pid].new_runs + r.new_runs for pid, r in second.items()}
        jobs = [
            SaveJob("good", totals["good"], second["good"], trackers["good"]),
            SaveJob(
                "bad", totals["bad"] + RunTotals(turns=math.inf), second["bad"], trackers["bad"]
            ),
        ]
        good, bad = state.save_many(jobs)
        assert good is None and isinstance(bad, ValueError)
        saved = state.load(None)
        assert saved["good"].totals == totals["good"]
        assert sorted(saved["good"].sessions or ()) == sorted(trackers["good"].rows())
        assert saved["bad"].totals == first["bad"].new_runs  # the first save's, whole
        assert {row[0] for row in saved["bad"].sessions or ()} == {"a", "b"}
        # Nothing changed since: only a whole save writes what the failed one did not.
        third = aggregate([[session("a", turns=2), session("b"), session("c")]], trackers["bad"])
        assert state.save_many([SaveJob("bad", totals["bad"], third, trackers["bad"])]) == [None]
        assert sorted(state.load(None)["bad"].sessions or ()) == sorted(trackers["bad"].rows())


def test_a_batch_that_cannot_begin_fails_every_save_in_it(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    trackers = {pid: SessionTracker() for pid in ("x", "y")}
    state = StateFile(path, busy_timeout=0.1)
    try:
        results = {pid: aggregate([[session("a")]], t) for pid, t in trackers.items()}
        state.save_many([SaveJob(pid, RunTotals(), r, trackers[pid]) for pid, r in results.items()])
        results = {pid: aggregate([[session("a", turns=3)]], t) for pid, t in trackers.items()}
        jobs = [SaveJob(pid, r.new_runs, r, trackers[pid]) for pid, r in results.items()]
        with locked_by_another_process(path):
            errors = state.save_many(jobs)
        assert [type(e) for e in errors] == [sqlite3.OperationalError] * 2
        # Each project's next save, with nothing new, writes its whole state.
        results = {pid: aggregate([[session("a", turns=3)]], t) for pid, t in trackers.items()}
        jobs = [SaveJob(pid, r.new_runs, r, trackers[pid]) for pid, r in results.items()]
        assert state.save_many(jobs) == [None, None]
        saved = state.load(None)
        for pid, tracker in trackers.items():
            assert sorted(saved[pid].sessions or ()) == sorted(tracker.rows())
    finally:
        state.close()


# ------------------------------------------------------------------------ unusable files


def truncated(path: Path) -> None:
    make_state(path, sessions=3000)
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.truncate(size // 2)


def edited(sql: str, *params: object) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        make_state(path)
        db = sqlite3.connect(path)
        with db:
            db.execute(sql, params)
        db.close()

    return build


def totals_data(**changes: Any) -> str:
    data = RunTotals().to_dict()
    data.update(changes)
    return json.dumps(data)


def foreign(path: Path) -> None:
    db = sqlite3.connect(path)
    with db:
        db.execute("CREATE TABLE users (name TEXT)")
        db.execute("INSERT INTO users VALUES ('alice')")
    db.close()


UNUSABLE: dict[str, tuple[Callable[[Path], None], str]] = {
    "empty": (lambda p: p.write_bytes(b""), EMPTY_FILE),
    "garbage": (lambda p: p.write_bytes(b"counters: 12\n\x00\xff" * 500), NOT_SQLITE),
    "truncated": (truncated, CORRUPT),
    "future-schema": (
        edited("UPDATE meta SET value = '5' WHERE key = 'schema_version'"),
        UNKNOWN_SCHEMA,
    ),
    # Never released: a fresh baseline, as for any schema this version does not know.
    "schema-1": (older_schema(1), UNKNOWN_SCHEMA),
    "schema-2": (older_schema(2), UNKNOWN_SCHEMA),
    "schema-3": (older_schema(3), UNKNOWN_SCHEMA),
    "other-database": (foreign, FOREIGN),
    "totals-not-json": (edited("UPDATE totals SET data = '{\"runs\": 1'"), BAD_TOTALS),
    "totals-nan": (
        edited("UPDATE totals SET data = ?", totals_data(turns=float("nan"))),
        BAD_TOTALS,
    ),
    "totals-infinite": (
        edited("UPDATE totals SET data = ?", totals_data(input_tokens=float("inf"))),
        BAD_TOTALS,
    ),
    "totals-negative": (edited("UPDATE totals SET data = ?", totals_data(runs=-4)), BAD_TOTALS),
    "totals-huge-count": (
        edited("UPDATE totals SET data = ?", totals_data(runs=10**400)),
        BAD_TOTALS,
    ),
    "totals-huge-amount": (
        edited("UPDATE totals SET data = ?", totals_data(turns=10**400)),
        BAD_TOTALS,
    ),
    "totals-text-count": (edited("UPDATE totals SET data = ?", totals_data(runs="4")), BAD_TOTALS),
    "totals-missing-key": (edited("UPDATE totals SET data = '{}'"), BAD_TOTALS),
    "totals-bucket-layout": (
        edited("UPDATE totals SET data = ?", totals_data(duration=[[1, 2, 3], 0.5])),
        BAD_TOTALS,
    ),
    "totals-bad-flag": (edited("UPDATE totals SET has_baseline = 'yes'"), BAD_TOTALS),
    "totals-bad-error-class": (
        edited("UPDATE totals SET data = ?", totals_data(errors_by_class={"timeout": -1})),
        BAD_TOTALS,
    ),
    "session-fingerprint": (edited("UPDATE sessions SET fingerprint = 'x'"), BAD_SESSIONS),
    "session-flags": (edited("UPDATE sessions SET flags = 3"), BAD_SESSIONS),
    "session-flags-unknown": (edited("UPDATE sessions SET flags = 16"), BAD_SESSIONS),
    "session-tokens-text": (edited("UPDATE sessions SET input_tokens = 'x'"), BAD_SESSIONS),
    "session-turns-negative": (edited("UPDATE sessions SET turns = -1"), BAD_SESSIONS),
    "session-duration-infinite": (edited("UPDATE sessions SET duration_ms = 9e999"), BAD_SESSIONS),
    "session-index-ids-blob": (edited("UPDATE sessions SET index_ids = x'00'"), BAD_SESSIONS),
}


@pytest.mark.parametrize("kind", list(UNUSABLE))
def test_an_unusable_file_is_moved_aside_and_a_fresh_state_starts(
    tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "state" / "s.db"
    path.parent.mkdir()
    build, reason = UNUSABLE[kind]
    build(path)
    original = path.read_bytes()

    with capture_logs() as logs, StateFile(path) as state:
        assert state.moved_aside is not None
        moved_to, why = state.moved_aside
        assert why == reason
        assert state.load(["p"]) == {}
        tracker = SessionTracker()
        totals = poll_and_save(state, tracker, RunTotals(), [session("a")])

    assert moved_files(path) == [Path(moved_to)]
    assert Path(moved_to).read_bytes() == original  # never deleted, never changed
    assert logs == [
        {
            "event": "state_file_moved_aside",
            "log_level": "warning",
            "path": str(path),
            "moved_to": moved_to,
            "reason": reason,
        }
    ]
    with StateFile(path) as state:
        assert state.moved_aside is None
        saved = state.load(["p"])["p"]
    assert (saved.totals, sorted(saved.sessions or [])) == (totals, sorted(tracker.rows()))


# ------------------------------------------------------------------ --check-config check


def test_check_state_path_accepts_a_path_it_can_create_or_use(tmp_path: Path) -> None:
    missing = tmp_path / "a" / "b" / "s.db"
    assert check_state_path(str(missing)) is None
    assert not (tmp_path / "a").exists()  # nothing created
    make_state(tmp_path / "s.db")
    before = sorted(tmp_path.iterdir())
    assert check_state_path(str(tmp_path / "s.db")) is None
    assert sorted(tmp_path.iterdir()) == before


def test_check_state_path_rejects_a_directory_and_a_path_under_a_file(tmp_path: Path) -> None:
    assert check_state_path(str(tmp_path)) == f"state.path: {tmp_path} is a directory, not a file"
    (tmp_path / "file.txt").write_text("")
    under = tmp_path / "file.txt" / "s.db"
    assert check_state_path(str(under)) == (
        f"state.path: cannot create {under}: {tmp_path / 'file.txt'} is not a directory"
    )
    assert check_state_path("/dev/null") == "state.path: /dev/null is not a regular file"


@pytest.mark.skipif(ROOT, reason="permission bits do not stop root")
def test_check_state_path_rejects_a_read_only_directory(tmp_path: Path) -> None:
    directory = tmp_path / "ro"
    directory.mkdir()
    make_state(directory / "s.db")
    directory.chmod(0o555)
    try:
        assert check_state_path(str(directory / "x" / "s.db")) == (
            f"state.path: cannot create {directory / 'x' / 's.db'}: "
            f"directory {directory} is not writable"
        )
        problem = check_state_path(str(directory / "s.db"))
        assert problem is not None
        assert f"directory {directory} is not writable" in problem
    finally:
        directory.chmod(0o755)


@pytest.mark.skipif(os.access("/proc/sys", os.W_OK), reason="/proc/sys is writable here")
def test_check_state_path_rejects_a_read_only_mount() -> None:
    """A read-only file system stops root too (a container's read-only /proc/sys)."""
    assert check_state_path("/proc/sys/llamacloud/s.db") == (
        "state.path: cannot create /proc/sys/llamacloud/s.db: directory /proc/sys is not writable"
    )


def test_a_bad_saved_exemplar_costs_the_exemplar_not_the_file(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    exemplars = {"runs": ["s", 1.0, 10**400], "errors": ["\ud800", 1.0, None], "duration": 7}
    edited("UPDATE totals SET data = ?", totals_data(runs=5, exemplars=exemplars))(path)
    with StateFile(path) as state:
        assert state.moved_aside is None
        totals = state.load(["p"])["p"].totals
    assert totals.runs == 5
    assert (totals.runs_exemplar, totals.errors_exemplar) == (None, None)
