"""The optional state file: run counters and session fingerprints that survive restarts.

SQLite, written once per successful poll in one transaction with only what changed, so
a counter and the baseline it was counted against are always saved together.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .aggregate import PollResult, RunTotals, SessionTracker, parse_run

SCHEMA_VERSION = 1
# Fingerprints hash numbers with Python's tuple hash; a run whose fingerprint differs after an
# upgrade would be counted again, so the file remembers this probe's value and drops the
# baseline (never the counters) when it changes.
_PROBE = {"duration_ms": 1234.5, "error": "x", "is_error": True, "total_input_tokens": 7}


def fingerprint_probe() -> int:
    run = parse_run(_PROBE)
    assert run is not None
    return run.fingerprint


@dataclass(frozen=True)
class SavedProject:
    totals: RunTotals
    sessions: dict[str, int] | None  # None: no usable baseline


class StateFile:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS totals (
                project_id TEXT PRIMARY KEY, data TEXT NOT NULL, has_baseline INTEGER NOT NULL
            );
            CREATE TABLE IF NOT EXISTS sessions (
                project_id TEXT NOT NULL, session_id TEXT NOT NULL, fingerprint INTEGER NOT NULL,
                PRIMARY KEY (project_id, session_id)
            ) WITHOUT ROWID;
            """
        )
        self._check_meta()

    def _check_meta(self) -> None:
        rows = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        probe = str(fingerprint_probe())
        version = rows.get("schema_version")
        if version is not None and version != str(SCHEMA_VERSION):
            raise ValueError(f"state file {self.path} has schema {version}, not {SCHEMA_VERSION}")
        with self._transaction():
            if rows.get("fingerprint_probe") not in (None, probe):
                self._db.execute("DELETE FROM sessions")
                self._db.execute("UPDATE totals SET has_baseline = 0")
            self._db.executemany(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                [("schema_version", str(SCHEMA_VERSION)), ("fingerprint_probe", probe)],
            )

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db, self._lock)

    def load(self, project_ids: Iterable[str]) -> dict[str, SavedProject]:
        """Saved counters and baselines of the configured projects; others are forgotten."""
        wanted = set(project_ids)
        out: dict[str, SavedProject] = {}
        with self._transaction():
            for pid, data, has_baseline in self._db.execute(
                "SELECT project_id, data, has_baseline FROM totals"
            ).fetchall():
                if pid not in wanted:
                    self._db.execute("DELETE FROM totals WHERE project_id = ?", (pid,))
                    self._db.execute("DELETE FROM sessions WHERE project_id = ?", (pid,))
                    continue
                sessions: dict[str, int] | None = None
                if has_baseline:
                    sessions = dict(
                        self._db.execute(
                            "SELECT session_id, fingerprint FROM sessions WHERE project_id = ?",
                            (pid,),
                        ).fetchall()
                    )
                out[pid] = SavedProject(RunTotals.from_dict(json.loads(data)), sessions)
        return out

    def save(
        self, project_id: str, totals: RunTotals, result: PollResult, tracker: SessionTracker
    ) -> None:
        """Persist one successful poll. Call it before the project's next poll begins."""
        with self._transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO totals (project_id, data, has_baseline) VALUES (?, ?, 1)",
                (project_id, json.dumps(totals.to_dict())),
            )
            if result.changed is None:
                self._db.execute("DELETE FROM sessions WHERE project_id = ?", (project_id,))
                rows: Iterable[tuple[str, str, int]] = (
                    (project_id, sid, fp) for sid, fp in tracker.fingerprints()
                )
            else:
                self._db.executemany(
                    "DELETE FROM sessions WHERE project_id = ? AND session_id = ?",
                    ((project_id, sid) for sid in result.removed),
                )
                rows = ((project_id, sid, fp) for sid, fp in result.changed)
            self._db.executemany(
                "INSERT OR REPLACE INTO sessions (project_id, session_id, fingerprint) "
                "VALUES (?, ?, ?)",
                rows,
            )

    def forget(self, project_id: str) -> None:
        """Drop a project's counters and baseline (it left the config)."""
        with self._transaction():
            self._db.execute("DELETE FROM totals WHERE project_id = ?", (project_id,))
            self._db.execute("DELETE FROM sessions WHERE project_id = ?", (project_id,))

    def close(self) -> None:
        with self._lock:
            self._db.close()


class _Transaction:
    def __init__(self, db: sqlite3.Connection, lock: threading.Lock) -> None:
        self._db = db
        self._lock = lock

    def __enter__(self) -> None:
        self._lock.acquire()
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
        finally:
            self._lock.release()
