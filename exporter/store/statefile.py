"""The state file's schema, and each project's counters, sessions and listing state in it.

The optional state file carries run counters and what each session contributes across
restarts. It is SQLite; each successful poll is written in one transaction (or in a
savepoint of one that writes the polls that ended together), so a counter and the baseline
it was counted against are always saved together. Usually only what changed is written;
after a failed save the next save of that project writes its whole state again, because the
changes of the failed one are not in the file. Locking, links, moving an unusable file aside
and the full disk are :mod:`.sqlitefile`'s.
"""

from __future__ import annotations

import itertools
import json
import math
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..aggregate import (
    ListingState,
    PollResult,
    RunTotals,
    SavedSession,
    SessionTracker,
    fingerprint,
)
from .sqlitefile import SQLiteFile, StateError, creation_problem, path_problem

# A file of another version is moved aside (as an unknown schema) and a fresh baseline starts.
SCHEMA_VERSION = 4

# Fingerprints hash numbers with Python's tuple hash; a run whose fingerprint differs after an
# upgrade would be counted again, so the file remembers this probe's value and drops the
# baseline (never the counters) when it changes.
_PROBE = {"duration_ms": 1234.5, "error": "x", "is_error": True, "total_input_tokens": 7}

_RUN_COLUMNS = ("input_tokens", "output_tokens", "turns", "duration_ms")
# Where exact counting left off (``SavedSession``).
_COUNTING_COLUMNS = ("version", "counted", "last_fp", "pending")
_COLUMNS = {
    "meta": ("key", "value"),
    "totals": ("project_id", "data", "has_baseline"),
    "sessions": (
        "project_id",
        "session_id",
        "fingerprint",
        "flags",
        *_RUN_COLUMNS,
        "index_ids",
        *_COUNTING_COLUMNS,
    ),
    "listing": ("project_id", "data"),
}
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS totals ("
    " project_id TEXT PRIMARY KEY, data TEXT NOT NULL, has_baseline INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS sessions ("
    " project_id TEXT NOT NULL, session_id TEXT NOT NULL, fingerprint INTEGER NOT NULL,"
    # NUMERIC keeps whole numbers as integers and fractions as reals, as the API sent them.
    " flags INTEGER NOT NULL, input_tokens NUMERIC NOT NULL, output_tokens NUMERIC NOT NULL,"
    " turns NUMERIC NOT NULL, duration_ms NUMERIC NOT NULL,"
    # The indexes it is bound to, one per line (index ids are printable); NULL for none.
    " index_ids TEXT,"
    # Its version; stop events counted (NULL: unknown); the last counted run's fingerprint
    # where it is not the listed one; 1 while its history is to be read.
    " version INTEGER NOT NULL, counted INTEGER, last_fp INTEGER, pending INTEGER NOT NULL,"
    " PRIMARY KEY (project_id, session_id)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS listing (project_id TEXT PRIMARY KEY, data TEXT NOT NULL)",
)
_SESSION_ROWS = ", ".join(_COLUMNS["sessions"][1:])

# Reasons for moving a file aside (besides those of :mod:`.sqlitefile`): short fixed phrases,
# never any of the file's contents.
FOREIGN = "not a state file of this exporter"
UNKNOWN_SCHEMA = "unknown schema version"
BAD_TOTALS = "invalid saved counters"
BAD_SESSIONS = "invalid saved sessions"


def fingerprint_probe() -> int:
    return fingerprint(_PROBE)


@dataclass(frozen=True)
class SaveJob:
    """One successful poll to persist: :meth:`StateFile.save`'s arguments."""

    project_id: str
    totals: RunTotals
    result: PollResult
    tracker: SessionTracker
    read: tuple[str, ...] = ()


@dataclass(frozen=True)
class SavedProject:
    totals: RunTotals
    sessions: list[SavedSession] | None  # None: no usable baseline
    listing: ListingState | None = None


def check_state_path(path: str) -> str | None:
    """For ``--check-config``: a problem with ``state.path``, or None, as the daemon would find
    it. Leaves nothing behind."""
    problem = path_problem(Path(path)) or creation_problem(Path(path))
    return None if problem is None else f"state.path: {problem}"


class StateFile(SQLiteFile):
    """The state file of one exporter; ``close()`` it (or use it as a context manager).

    Opened, locked and moved aside as :class:`~.sqlitefile.SQLiteFile` says (``moved_aside``,
    ``read_only``); what it must hold is checked here, and a project's save is one transaction.
    """

    def __init__(self, path: str | Path, **timeouts: float) -> None:
        """``timeouts``: ``busy_timeout`` and ``lock_timeout``, as :class:`SQLiteFile` takes."""
        self._full_save: set[str] = set()  # projects whose last save failed
        super().__init__(path, **timeouts)

    def _check_contents(self, db: sqlite3.Connection, tables: set[str]) -> str | None:
        if "meta" not in tables or _columns(db, "meta") != _COLUMNS["meta"]:
            return FOREIGN
        meta = dict(db.execute("SELECT key, value FROM meta"))
        if meta.get("schema_version", str(SCHEMA_VERSION)) != str(SCHEMA_VERSION):
            return UNKNOWN_SCHEMA
        for table, columns in _COLUMNS.items():
            if table in tables and _columns(db, table) != columns:
                return FOREIGN
        if "totals" in tables:
            try:
                for pid, data, has_baseline in db.execute(
                    "SELECT project_id, data, has_baseline FROM totals"
                ):
                    if type(pid) is not str or has_baseline not in (0, 1):
                        return BAD_TOTALS
                    _parse_totals(data)
            except ValueError:
                return BAD_TOTALS
        if "sessions" in tables:
            bad = db.execute(
                "SELECT 1 FROM sessions WHERE typeof(project_id) != 'text'"
                " OR typeof(session_id) != 'text' OR typeof(fingerprint) != 'integer'"
                " OR fingerprint < 0 OR typeof(version) != 'integer' OR version < 0"
                " OR typeof(counted) NOT IN ('null', 'integer') OR counted < 0"
                " OR typeof(last_fp) NOT IN ('null', 'integer') OR last_fp < 0"
                " OR pending NOT IN (0, 1) LIMIT 1"
            ).fetchone()
            if bad is not None:
                return BAD_SESSIONS
            amounts = " OR ".join(
                f"typeof({c}) NOT IN ('real', 'integer') OR NOT ({c} >= 0 AND {c} < {_MAX_SAVED})"
                for c in _RUN_COLUMNS
            )
            # Flags: a status (0 never run, 1 ok, 2 error), and 4 when missed once; 8 alone
            # for a session dropped (where its counting left off, should it come back).
            bad = db.execute(
                "SELECT 1 FROM sessions WHERE typeof(flags) != 'integer' OR flags NOT IN"
                f" (0, 1, 2, 4, 5, 6, 8) OR {amounts} OR typeof(index_ids) NOT IN ('null', 'text')"
                " LIMIT 1"
            ).fetchone()
            if bad is not None:
                return BAD_SESSIONS
        return None

    def _create_schema(self, db: sqlite3.Connection) -> None:
        for statement in _SCHEMA:
            db.execute(statement)
        probe = str(fingerprint_probe())
        saved = db.execute("SELECT value FROM meta WHERE key = 'fingerprint_probe'").fetchone()
        if saved is not None and saved[0] != probe:
            db.execute("DELETE FROM sessions")
            db.execute("DELETE FROM listing")
            db.execute("UPDATE totals SET has_baseline = 0")
        db.executemany(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
            [("schema_version", str(SCHEMA_VERSION)), ("fingerprint_probe", probe)],
        )

    def load(self, project_ids: Iterable[str] | None) -> dict[str, SavedProject]:
        """Saved counters and baselines of the configured projects; others are forgotten.
        None: every saved project, none forgotten (discovery has yet to say which remain).

        While the file cannot be written (``read_only``), from the copy made when it was
        opened, which is then let go: the projects that left are forgotten in the file at
        the next start, and a second load finds nothing.
        """
        out = self._load(None if project_ids is None else set(project_ids))
        if self.read_only is not None:
            self._let_go_of_copy()
        return out

    def _load(self, wanted: set[str] | None) -> dict[str, SavedProject]:
        out: dict[str, SavedProject] = {}
        with self._transaction(write=False) as db:
            for pid, data, has_baseline in db.execute(
                "SELECT project_id, data, has_baseline FROM totals"
            ).fetchall():
                if wanted is not None and pid not in wanted:
                    _delete(db, pid)
                    continue
                try:
                    totals = _parse_totals(data)
                except ValueError as exc:  # checked when opened: only a changed file gets here
                    raise StateError(f"{self.path}: invalid saved counters") from exc
                sessions: list[SavedSession] | None = None
                listing = None
                if has_baseline:
                    sessions = [
                        _saved(row)
                        for row in db.execute(
                            f"SELECT {_SESSION_ROWS} FROM sessions WHERE project_id = ?", (pid,)
                        )
                    ]
                    row = db.execute(
                        "SELECT data FROM listing WHERE project_id = ?", (pid,)
                    ).fetchone()
                    listing = None if row is None else _parse_listing(row[0])
                out[pid] = SavedProject(totals, sessions, listing)
        return out

    def save(
        self,
        project_id: str,
        totals: RunTotals,
        result: PollResult,
        tracker: SessionTracker,
        read: Iterable[str] = (),
    ) -> None:
        """Persist one successful poll, and the sessions whose histories it ``read``. Call it
        before the project's next poll begins.

        Raises when the save fails; the project's next save then writes its whole state.
        """
        error = self.save_many([SaveJob(project_id, totals, result, tracker, tuple(read))])[0]
        if error is not None:
            raise error

    def save_many(self, jobs: Sequence[SaveJob]) -> list[BaseException | None]:
        """Persist several successful polls in one transaction, each in a savepoint of its
        own: what each job's save raised, or None. A job that fails is rolled back alone and
        the others are written; a transaction that cannot begin or commit fails them all.
        Each job's project's next save writes its whole state after a failure.

        Call it before any of the jobs' projects' next poll begins: a job reads its tracker.
        """
        errors: list[BaseException | None] = [None] * len(jobs)
        try:
            with self._transaction() as db:
                for index, job in enumerate(jobs):
                    db.execute("SAVEPOINT project")
                    try:
                        self._write(db, job)
                    except Exception as exc:
                        if not db.in_transaction:
                            raise  # SQLite rolled back the whole transaction (a full disk)
                        db.execute("ROLLBACK TO project")
                        errors[index] = exc
                        self._full_save.add(job.project_id)
                    db.execute("RELEASE project")
        except BaseException as exc:
            for index, job in enumerate(jobs):
                errors[index] = errors[index] or exc
                self._full_save.add(job.project_id)
            if not isinstance(exc, Exception):
                raise
            return errors
        for job, error in zip(jobs, errors, strict=True):
            if error is None:
                self._full_save.discard(job.project_id)
        return errors

    def _write(self, db: sqlite3.Connection, job: SaveJob) -> None:
        """One job's rows, in a transaction under way."""
        project_id, result, tracker = job.project_id, job.result, job.tracker
        # None: the whole state (a baseline poll, or the first save after a failed one).
        changed = None if project_id in self._full_save else result.changed
        if changed is not None and job.read:
            changed = tuple(dict.fromkeys((*changed, *job.read)))
        db.execute(
            "INSERT OR REPLACE INTO totals (project_id, data, has_baseline) VALUES (?, ?, 1)",
            # Never NaN or Infinity: the next start would find the file unusable.
            (project_id, json.dumps(job.totals.to_dict(), allow_nan=False)),
        )
        db.execute(
            "INSERT OR REPLACE INTO listing (project_id, data) VALUES (?, ?)",
            (project_id, json.dumps(_listing_dict(tracker.state), allow_nan=False)),
        )
        if changed is None:
            db.execute("DELETE FROM sessions WHERE project_id = ?", (project_id,))
            rows = itertools.chain(tracker.rows(), tracker.grave_rows())
        else:
            # A dropped session's row stays, as where counting left off, until it is
            # forgotten (``SessionTracker.grave_rows``).
            db.executemany(
                "DELETE FROM sessions WHERE project_id = ? AND session_id = ?",
                ((project_id, sid) for sid in (*result.removed, *result.forgotten)),
            )
            rows = itertools.chain(tracker.rows(changed), tracker.grave_rows(result.removed))
        db.executemany(
            f"INSERT OR REPLACE INTO sessions (project_id, {_SESSION_ROWS}) "
            f"VALUES ({', '.join('?' * len(_COLUMNS['sessions']))})",
            ((project_id, *_row(saved)) for saved in rows),
        )

    def forget(self, project_id: str) -> None:
        """Drop a project's counters and baseline (it left the config)."""
        self._full_save.discard(project_id)
        with self._transaction() as db:
            _delete(db, project_id)


_LISTING_FIELDS = tuple(f.name for f in fields(ListingState))


def _listing_dict(state: ListingState) -> dict[str, object]:
    """``asdict`` of a listing state, whose fields are all plain values, without its deep
    copies."""
    return {name: getattr(state, name) for name in _LISTING_FIELDS}


def _row(saved: SavedSession) -> tuple[object, ...]:
    """A session's columns (but the project's): its indexes one per line, NULL for none."""
    return (
        *saved[:7],
        "\n".join(saved.index_ids) if saved.index_ids else None,
        saved.version,
        saved.counted,
        saved.last_fp,
        int(saved.pending),
    )


def _saved(row: Any) -> SavedSession:
    """A session of its columns, as :func:`_row` wrote them."""
    *head, indexes, ver, counted, last_fp, pending = row
    ids = () if indexes is None else tuple(indexes.split("\n"))
    return SavedSession(*head, ids, ver, counted, last_fp, bool(pending))  # type: ignore[call-arg]


def _delete(db: sqlite3.Connection, project_id: str) -> None:
    for table in ("totals", "sessions", "listing"):
        db.execute(f"DELETE FROM {table} WHERE project_id = ?", (project_id,))


def _columns(db: sqlite3.Connection, table: str) -> tuple[str, ...]:
    return tuple(row[1] for row in db.execute(f"PRAGMA table_info({table})"))


def _parse_listing(data: object) -> ListingState | None:
    """Saved listing state; anything odd gives None, which only costs a full listing."""
    try:
        raw = json.loads(data) if type(data) is str else None
        state = ListingState(**raw) if type(raw) is dict else None
    except (ValueError, TypeError, RecursionError):
        return None
    if state is None or not (
        type(state.ordered) is bool
        and type(state.full_next) is bool
        and type(state.versioned) is bool
        and type(state.since_full) is int
        and state.since_full >= 0
        and (state.newest is None or type(state.newest) in (int, float))
    ):
        return None
    if state.newest is not None and not math.isfinite(state.newest):
        return None
    return state


# Saved runs hold what an item may: numbers below 2**53 (RunTotals bounds its counts alike).
_MAX_SAVED = 2**53


def _parse_totals(data: object) -> RunTotals:
    """Saved counters, checked as untrusted input; ValueError when anything is off."""
    if type(data) is not str:
        raise ValueError("not text")
    try:
        raw = json.loads(data)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    return RunTotals.from_dict(raw)
