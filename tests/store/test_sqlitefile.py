"""store.sqlitefile: one SQLite file that only this process writes: its locks, no links,
an unusable file moved aside, the full disk."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from exporter.aggregate import RunTotals, SessionTracker, aggregate
from exporter.store import StateError, StateFile, check_state_path
from exporter.store.sqlitefile import (
    MOVED_ASIDE_INFIX,
    StateInUse,
    _lock_file,
    _Transaction,
)
from exporter.store.statefile import UNKNOWN_SCHEMA
from tests.helpers import session, wait_for
from tests.store.helpers import (
    ROOT,
    exporter_process,
    finishes,
    locked_by_another_process,
    make_state,
    moved_files,
    older_schema,
    poll_and_save,
)

# --------------------------------------------------------------------- locks and failures


def test_an_external_lock_fails_one_save_and_releases_every_lock(tmp_path: Path) -> None:
    """A backup holding the file makes one save fail; the next one works and close returns."""
    path = tmp_path / "s.db"
    state = StateFile(path, busy_timeout=0.2)
    tracker = SessionTracker()
    totals = poll_and_save(state, tracker, RunTotals(), [session("a")])
    with locked_by_another_process(path), pytest.raises(sqlite3.OperationalError, match="locked"):
        finishes(lambda: poll_and_save(state, tracker, totals, [session("a", turns=5)]))
    # Released: the next poll's save goes through, nothing is left waiting.
    finishes(lambda: poll_and_save(state, tracker, totals, [session("a", turns=6)]))
    finishes(lambda: state.forget("other"))
    finishes(state.close)
    with StateFile(path) as again:
        assert {row[0] for row in again.load(["p"])["p"].sessions or ()} == {"a"}


def test_close_never_waits_behind_queued_saves(tmp_path: Path) -> None:
    """SIGTERM closes the file: saves queued behind an external lock must not hold it up."""
    path = tmp_path / "s.db"
    state = StateFile(path, busy_timeout=1.0)
    tracker = SessionTracker()
    totals = poll_and_save(state, tracker, RunTotals(), [session("a")])
    result = aggregate([[session("a", turns=3)]], tracker)
    errors: list[BaseException] = []

    def save() -> None:
        try:
            state.save("p", totals + result.new_runs, result, tracker)
        except BaseException as exc:
            errors.append(exc)

    with locked_by_another_process(path):
        savers = [threading.Thread(target=save) for _ in range(8)]
        for saver in savers:
            saver.start()
        started = time.monotonic()
        state.close()
        took = time.monotonic() - started
    for saver in savers:
        saver.join(30)
    # Not a speed bound: without the closed check, the eight saves take a busy timeout
    # each before close gets the lock, well over the 2 s close waits at most.
    assert took < 5
    assert len(errors) == 8 and all(
        isinstance(e, (StateError, sqlite3.OperationalError)) for e in errors
    )


def test_waits_for_the_thread_lock_are_bounded(tmp_path: Path) -> None:
    """A save stuck behind an external lock makes another one fail in time, not hang."""
    path = tmp_path / "s.db"
    state = StateFile(path, busy_timeout=3.0, lock_timeout=0.2)
    tracker = SessionTracker()
    totals = poll_and_save(state, tracker, RunTotals(), [session("a")])
    other = SessionTracker()
    outcome: list[BaseException | None] = []

    def slow() -> None:
        try:
            poll_and_save(state, tracker, totals, [session("a", turns=3)])
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    with locked_by_another_process(path):
        thread = threading.Thread(target=slow, daemon=True)
        thread.start()
        wait_for(state._lock.locked, 5, "the first save to hold the thread lock")
        result = aggregate([[session("x")]], other)
        started = time.monotonic()
        with pytest.raises(StateError, match="busy"):
            state.save("q", result.new_runs, result, other)
        assert time.monotonic() - started < 2
    thread.join(10)
    assert not thread.is_alive()
    assert outcome == [None]  # the external lock was gone before its busy timeout ran out
    finishes(state.close)


class FakeDb:
    """Stands in for a connection whose COMMIT (and ROLLBACK) fail, as on a full disk."""

    def __init__(self, fail_rollback: bool) -> None:
        self.fail_rollback = fail_rollback
        self.in_transaction = False
        self.statements: list[str] = []

    def execute(self, sql: str) -> None:
        self.statements.append(sql)
        if sql == "BEGIN IMMEDIATE":
            self.in_transaction = True
        elif sql == "COMMIT":
            raise sqlite3.OperationalError("database or disk is full")
        elif sql == "ROLLBACK" and self.fail_rollback:
            raise sqlite3.OperationalError("cannot rollback")


@pytest.mark.parametrize("fail_rollback", [False, True])
def test_a_failed_commit_rolls_back_and_releases_the_lock(fail_rollback: bool) -> None:
    lock = threading.Lock()
    db = FakeDb(fail_rollback)
    transaction = _Transaction(lambda: db, lock, 1.0, lambda: False)  # type: ignore[arg-type,return-value]
    with pytest.raises(sqlite3.OperationalError, match="disk is full"), transaction:
        pass
    assert db.statements == ["BEGIN IMMEDIATE", "COMMIT", "ROLLBACK"]
    assert not lock.locked()


# ---------------------------------------------------------------- one exporter per file

SECOND_EXPORTER = """
import sys
from exporter.store.sqlitefile import StateInUse
from exporter.store.statefile import StateFile
try:
    state = StateFile(sys.argv[1])
except StateInUse as exc:
    print(exc)
    sys.exit(3)
state.load([])  # a second daemon configured with other projects
print("opened", flush=True)
"""

HOLDING_EXPORTER = """
import sys
from exporter.store.statefile import StateFile
state = StateFile(sys.argv[1])
print("open", flush=True)
sys.stdin.readline()
state.close()
"""


def test_a_second_exporter_on_the_same_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with StateFile(path) as state:
        tracker = SessionTracker()
        poll_and_save(state, tracker, RunTotals(), [session("a"), session("b")])
        out, err = exporter_process(SECOND_EXPORTER, str(path)).communicate(timeout=60)
        assert err == ""
        assert str(path) in out
        assert f"pid {os.getpid()}" in out
        assert "another exporter" in out
        # The refused one deleted nothing.
        assert {row[0] for row in state.load(["p"])["p"].sessions or ()} == {"a", "b"}
    proc = exporter_process(SECOND_EXPORTER, str(path))
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, out.strip()) == (0, "opened"), err


def test_this_exporter_is_refused_while_another_holds_the_file(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    holder = exporter_process(HOLDING_EXPORTER, str(path))
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(StateInUse, match=f"pid {holder.pid}") as refused:
            StateFile(path)
        assert str(path) in str(refused.value)
        assert isinstance(refused.value, StateError)
    finally:
        holder.communicate("\n", timeout=30)
    StateFile(path).close()


def test_the_file_lock_is_released_when_opening_fails_half_way(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    make_state(path)
    with locked_by_another_process(path), pytest.raises(StateError, match="locked"):
        StateFile(path, busy_timeout=0.1)
    with StateFile(path) as state:  # not StateInUse: the failed open let go of its lock
        assert "p" in state.load(["p"])


def test_close_releases_the_file_lock(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    first = StateFile(path)
    with pytest.raises(StateInUse):
        StateFile(path)
    first.close()
    first.close()  # twice is fine
    StateFile(path).close()
    with pytest.raises(StateError, match="closed"):
        first.forget("p")


def test_moving_aside_twice_keeps_both_files(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    path.write_bytes(b"first")
    StateFile(path).close()
    path.write_bytes(b"second")
    StateFile(path).close()
    assert sorted(p.read_bytes() for p in moved_files(path)) == [b"first", b"second"]


def test_a_valid_file_is_not_moved(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    totals = make_state(path)
    with StateFile(path) as state:
        assert state.moved_aside is None
        assert state.load(["p"])["p"].totals == totals
    assert moved_files(path) == []


def test_a_path_with_characters_of_a_uri_is_used_as_it_is(tmp_path: Path) -> None:
    """SQLite is given the path in a file: URI; ?, #, % and spaces name the file, not options."""
    path = tmp_path / "a b?mode=ro#x%41" / "s?.db"
    path.parent.mkdir()
    totals = make_state(path)
    with StateFile(path) as state:
        assert state.load(["p"])["p"].totals == totals
    assert sorted(p.name for p in path.parent.iterdir()) == ["s?.db", "s?.db.lock"]


def test_a_directory_is_refused_not_moved(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    path.mkdir()
    with pytest.raises(StateError, match="is a directory"):
        StateFile(path)
    assert path.is_dir()
    assert moved_files(path) == []


@pytest.mark.parametrize(
    "make_path",
    [
        lambda tmp: tmp / "file.txt" / "state" / "s.db",
        lambda tmp: Path("/proc/llamacloud-exporter-test/s.db"),
    ],
    ids=["under-a-file", "under-proc"],
)
def test_a_path_that_cannot_be_created_is_refused(
    tmp_path: Path, make_path: Callable[[Path], Path]
) -> None:
    (tmp_path / "file.txt").write_text("keep me")
    with pytest.raises(StateError) as refused:
        StateFile(make_path(tmp_path))
    assert "cannot create" in str(refused.value) or "not a directory" in str(refused.value)
    assert (tmp_path / "file.txt").read_text() == "keep me"


@pytest.mark.skipif(ROOT, reason="permission bits do not stop root")
def test_a_read_only_directory_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "ro"
    directory.mkdir()
    make_state(directory / "s.db")
    directory.chmod(0o555)
    try:
        with pytest.raises(StateError, match="not writable"):
            StateFile(directory / "s.db")
        with pytest.raises(StateError, match="not writable"):
            StateFile(directory / "sub" / "s.db")
    finally:
        directory.chmod(0o755)


# ------------------------------------------------------------ no file written through a link

PRECIOUS = b"a file of someone else's, outside the state directory\n" * 40


@pytest.mark.parametrize("saved", [True, False], ids=["saved", "first-start"])
@pytest.mark.parametrize("name", ["s.db.lock", "s.db", "s.db-wal", "s.db-shm", "s.db-journal"])
def test_a_planted_link_is_refused_and_its_target_left_as_it_was(
    tmp_path: Path, name: str, saved: bool
) -> None:
    """Whoever can write the state directory could make the exporter overwrite any file it may
    write; a link where it writes stops it at start, and --check-config says so."""
    directory = tmp_path / "state"
    directory.mkdir()
    path = directory / "s.db"
    target = tmp_path / "target"
    if name == "s.db" and saved:
        make_state(target)  # a state file elsewhere: opening it through the link would write it
    else:
        target.write_bytes(PRECIOUS)
        if saved:
            make_state(path)
    original = target.read_bytes()
    planted = directory / name
    planted.unlink(missing_ok=True)  # the lock file a stopped exporter leaves, replaced
    planted.symlink_to(target)

    with pytest.raises(StateError) as refused:
        StateFile(path)
    assert str(refused.value).startswith(f"{planted} is a symbolic link")
    assert target.read_bytes() == original
    assert planted.is_symlink()
    assert check_state_path(str(path)) == f"state.path: {refused.value}"
    assert target.read_bytes() == original


@pytest.mark.parametrize("kind", ["link", "fifo", "directory"])
def test_the_lock_is_opened_only_as_a_regular_file(tmp_path: Path, kind: str) -> None:
    """Also when the link appears after the checks at start: the lock file is opened without
    following a link, and anything but a regular file there is refused, unopened or unwritten."""
    path = tmp_path / "s.db"
    lock = tmp_path / "s.db.lock"
    target = tmp_path / "target"
    target.write_bytes(PRECIOUS)
    if kind == "link":
        lock.symlink_to(target)
    elif kind == "fifo":
        os.mkfifo(lock)
    else:
        lock.mkdir()
    with pytest.raises(StateError) as refused:
        finishes(lambda: _lock_file(path))
    assert str(lock) in str(refused.value)
    assert target.read_bytes() == PRECIOUS
    assert check_state_path(str(path)) is not None


def test_moving_aside_never_writes_through_a_planted_link(tmp_path: Path) -> None:
    """Links planted where an unusable file would be moved to are passed over, not followed."""
    path = tmp_path / "s.db"
    path.write_bytes(b"not a database")
    target = tmp_path / "target"
    target.write_bytes(PRECIOUS)
    now = int(time.time())
    for second in range(now - 1, now + 60):
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(second))
        for suffix in ("", "-wal", "-shm", "-journal"):
            (tmp_path / f"s.db{MOVED_ASIDE_INFIX}{stamp}{suffix}").symlink_to(target)
    with StateFile(path) as state:
        assert state.moved_aside is not None
        moved_to = Path(state.moved_aside[0])
    assert not moved_to.is_symlink()
    assert moved_to.read_bytes() == b"not a database"
    assert target.read_bytes() == PRECIOUS


# ------------------------------------------------------------------------ a full disk

FULL_DISK_EXPORTER = """
import json, os, resource, sys
from exporter.aggregate import RunTotals, SessionTracker, aggregate
from exporter.store.statefile import StateFile
from tests.helpers import session

# As on a full disk: no write may grow a file (Python ignores SIGXFSZ, so writes get EFBIG).
resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))
state = StateFile(sys.argv[1])
saved = state.load(["p"]).get("p")
report = {"read_only": state.read_only, "loaded": saved and saved.totals.to_dict()}
report["moved_aside"] = state.moved_aside and state.moved_aside[1]
report["loaded_again"] = list(state.load(["p"]))  # the copy in memory is let go
tracker = SessionTracker(saved.sessions, saved.listing) if saved else SessionTracker()
live = saved.totals if saved else RunTotals()
polls = [
    [session("s0", turns=7), session("s1", turns=1), session("s2"), session("n1")],
    [session("s0", turns=7), session("s1", turns=8), session("s2"), session("n1")],
]
result = aggregate([polls[0]], tracker)
live = live + result.new_runs
try:
    state.save("p", live, result, tracker)
except Exception as exc:
    report["failed"] = f"{type(exc).__name__}: {exc}"
report["file_while_full"] = os.path.exists(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
result = aggregate([polls[1]], tracker)
live = live + result.new_runs
state.save("p", live, result, tracker)
report["writable"] = state.read_only is None
state.close()
report["live"] = live.to_dict()
report["rows"] = sorted(tracker.rows())
print(json.dumps(report))
"""


def crashed_state(path: Path) -> RunTotals:
    """The state ``make_state`` saves, as a killed exporter leaves it: in the -wal, which a
    read of the database file alone would miss."""
    running = path.parent / "running"
    running.mkdir()
    with StateFile(running / path.name) as state:
        tracker = SessionTracker()
        totals = poll_and_save(state, tracker, RunTotals(), [session(f"s{i}") for i in range(3)])
        totals = poll_and_save(
            state, tracker, totals, [session(f"s{i}", turns=i) for i in range(3)]
        )
        for suffix in ("", "-wal", "-shm"):
            shutil.copyfile(f"{running / path.name}{suffix}", f"{path}{suffix}")
    assert Path(f"{path}-wal").stat().st_size > 0
    return totals


@pytest.mark.parametrize("before", ["closed", "crashed", "schema-2", "missing"])
def test_a_full_disk_at_start_serves_the_saved_state_and_saves_it_once_there_is_room(
    tmp_path: Path, before: str
) -> None:
    """A restart on a full disk must not fail (a crash loop) nor drop the saved counters: they
    are read, saves fail until the disk has room, then the whole state is written."""
    path = tmp_path / "s.db"
    made = {"closed": make_state, "crashed": crashed_state}
    totals = made[before](path) if before in made else None
    if before == "schema-2":  # moved aside: a fresh baseline
        older_schema(2)(path)

    proc = exporter_process(FULL_DISK_EXPORTER, str(path))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    report = json.loads(out.splitlines()[-1])  # after the log lines

    assert report["read_only"].startswith(f"cannot write {path}")
    loaded = report["loaded"] and RunTotals.from_dict(report["loaded"])
    assert loaded == totals
    assert report["loaded_again"] == []
    assert report["failed"].startswith(f"StateUnwritable: cannot write {path}")
    assert report["moved_aside"] == (UNKNOWN_SCHEMA if before == "schema-2" else None)
    assert report["file_while_full"] == (before in made)  # no empty file left behind
    assert report["writable"]
    with StateFile(path) as state:
        assert state.moved_aside is None
        saved = state.load(["p"])["p"]
    assert saved.totals == RunTotals.from_dict(report["live"])
    # Counted on top of the saved counters: s0 and n1 while full, s1 once there was room.
    assert saved.totals.runs == (totals.runs + 3 if totals else 1)
    rows = json.loads(json.dumps(sorted(saved.sessions or [])))
    assert rows == report["rows"]
