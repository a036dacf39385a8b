"""What the store tests share: a poll saved, locks held by another process, state files
made and moved aside."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from exporter.aggregate import RunTotals, SessionTracker, aggregate
from exporter.store import StateFile
from exporter.store.sqlitefile import MOVED_ASIDE_INFIX
from tests.helpers import REPO, session

ROOT = os.geteuid() == 0


def poll_and_save(
    state: StateFile, tracker: SessionTracker, totals: RunTotals, items: list[Any]
) -> RunTotals:
    result = aggregate([items], tracker)
    totals = totals + result.new_runs
    state.save("p", totals, result, tracker)
    return totals


def finishes(fn: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Run ``fn`` on a thread; fail (instead of hanging the suite) when it deadlocks."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(("ok", fn()))
        except BaseException as exc:
            outcome.append(("error", exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"{fn} did not return within {timeout} s: deadlocked"
    kind, value = outcome[0]
    if kind == "error":
        raise value
    return value


HOLD_LOCK = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
db.execute("ROLLBACK")
db.close()
"""


@contextmanager
def locked_by_another_process(path: Path) -> Iterator[None]:
    """Another process (a backup, an ``sqlite3`` shell) holds the database's write lock."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "locked"
        yield
    finally:
        proc.communicate("\n", timeout=30)


def exporter_process(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def make_state(path: Path, sessions: int = 3) -> RunTotals:
    """A real state file with one project, closed."""
    with StateFile(path) as state:
        tracker = SessionTracker()
        totals = poll_and_save(state, tracker, RunTotals(), [session(f"s{i}") for i in range(3)])
        items = [session(f"s{i}", turns=i) for i in range(sessions)]
        return poll_and_save(state, tracker, totals, items)


def moved_files(path: Path) -> list[Path]:
    return sorted(path.parent.glob(path.name + MOVED_ASIDE_INFIX + "*"))


def older_schema(version: int) -> Callable[[Path], None]:
    """A state file as schema ``version`` left it: 3 had no exact counting, 2 no indexes per
    session either, 1 only fingerprints and no listing state."""
    dropped = ["version", "counted", "last_fp", "pending"]
    if version <= 2:
        dropped += ["index_ids"]
    if version == 1:
        dropped += ["flags", "input_tokens", "output_tokens", "turns", "duration_ms"]

    def build(path: Path) -> None:
        make_state(path)
        db = sqlite3.connect(path)
        with db:
            for column in dropped:
                db.execute(f"ALTER TABLE sessions DROP COLUMN {column}")
            if version == 1:
                db.execute("DROP TABLE listing")
            db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))
        db.close()

    return build
