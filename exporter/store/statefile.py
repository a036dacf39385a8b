"""The optional state file: run counters and what each session contributes, across restarts.

SQLite, written once per successful poll in one transaction, so a counter and the baseline
it was counted against are always saved together. Usually only what changed is written;
after a failed save the next save of that project writes its whole state again, because
the changes of the failed one are not in the file.

One exporter per file: an exclusive lock on ``<path>.lock`` refuses a second one. A file
that cannot be read as a state file (empty, not SQLite, corrupt, unknown schema, invalid
contents) is moved aside, never deleted, and the exporter starts from a fresh baseline.

A file that can be read but not written (a full disk) is read into memory: the exporter
starts with the saved counters, and each save tries the file again. No file is written
through a symbolic link: a link (or a FIFO, a device) where the exporter writes is refused.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import sqlite3
import stat
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType

import structlog

from ..aggregate import (
    ListingState,
    PollResult,
    RunTotals,
    SavedSession,
    SessionTracker,
    fingerprint,
)

log = structlog.get_logger("exporter.state")

# A file of another version is moved aside (as an unknown schema) and a fresh baseline starts.
SCHEMA_VERSION = 3
# How long a write waits for another process's lock on the database (a backup, an
# ``sqlite3`` shell) before it fails; a short external lock is waited out.
BUSY_TIMEOUT_SECONDS = 5.0
# How long a save waits for another save of this process to finish: several busy timeouts
# and the write of a large project, yet bounded, so that nothing (shutdown included) can
# wait forever.
LOCK_TIMEOUT_SECONDS = 30.0
# How long close() waits for a save under way; past it, the process exit closes the file
# (SQLite keeps it consistent), so SIGTERM is never held up by a locked database.
CLOSE_TIMEOUT_SECONDS = 2.0
# An unusable file is renamed to ``<path>.unusable-<UTC time>``, beside the original.
MOVED_ASIDE_INFIX = ".unusable-"

# Fingerprints hash numbers with Python's tuple hash; a run whose fingerprint differs after an
# upgrade would be counted again, so the file remembers this probe's value and drops the
# baseline (never the counters) when it changes.
_PROBE = {"duration_ms": 1234.5, "error": "x", "is_error": True, "total_input_tokens": 7}

_SQLITE_HEADER = b"SQLite format 3\x00"
_SIBLINGS = ("-wal", "-shm", "-journal")  # files SQLite keeps beside a database
_RUN_COLUMNS = ("input_tokens", "output_tokens", "turns", "duration_ms")
_COLUMNS = {
    "meta": ("key", "value"),
    "totals": ("project_id", "data", "has_baseline"),
    "sessions": ("project_id", "session_id", "fingerprint", "flags", *_RUN_COLUMNS, "index_ids"),
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
    " PRIMARY KEY (project_id, session_id)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS listing (project_id TEXT PRIMARY KEY, data TEXT NOT NULL)",
)
_SESSION_ROWS = "session_id, fingerprint, flags, " + ", ".join(_RUN_COLUMNS) + ", index_ids"
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26
# What a file system without room gives: an I/O error (growing a file, creating the -shm
# file), a full database, a file that cannot be created (no inode left).
_SQLITE_NO_ROOM = (10, 13, 14)  # SQLITE_IOERR, SQLITE_FULL, SQLITE_CANTOPEN
_LINK = "is a symbolic link, and the exporter writes no file through one"

# Reasons for moving a file aside: short fixed phrases, never any of the file's contents.
EMPTY_FILE = "empty file (0 bytes)"
NOT_SQLITE = "not an SQLite database"
CORRUPT = "corrupt database"
FOREIGN = "not a state file of this exporter"
UNKNOWN_SCHEMA = "unknown schema version"
BAD_TOTALS = "invalid saved counters"
BAD_SESSIONS = "invalid saved sessions"


class StateError(Exception):
    """The state file cannot be used; the message says why (the CLI prints it, exits 2)."""


class StateInUse(StateError):
    """Another process (another exporter) holds the state file's lock."""


class StateUnwritable(StateError):
    """The state file cannot be written (a full disk); it may still be read."""


def fingerprint_probe() -> int:
    return fingerprint(_PROBE)


@dataclass(frozen=True)
class SavedProject:
    totals: RunTotals
    sessions: list[SavedSession] | None  # None: no usable baseline
    listing: ListingState | None = None


def check_state_path(path: str) -> str | None:
    """For ``--check-config``: a problem with ``state.path``, or None. Changes nothing.

    An existing path must be a regular file this process can read and write, in a directory
    it can write (SQLite writes ``-wal`` and ``-shm`` files beside it); a missing one must
    be creatable: its nearest existing ancestor a writable directory. Neither it nor the
    files beside it (``-wal``, ``-shm``, ``-journal``, ``.lock``) may be a link.
    """
    problem = _path_problem(Path(path))
    return None if problem is None else f"state.path: {problem}"


def _path_problem(path: Path) -> str | None:
    problem = _file_problem(path)
    if problem is not None:
        return problem
    if os.path.lexists(path):
        if not os.access(path, os.R_OK | os.W_OK):
            return f"{path} is not readable and writable by this user"
        parent = path.parent
        if not os.access(parent, os.W_OK | os.X_OK):
            return (
                f"directory {parent} is not writable (SQLite writes {path.name}-wal and "
                f"{path.name}-shm beside {path.name})"
            )
        lock = _lock_path(path)
        if lock.exists() and not os.access(lock, os.R_OK | os.W_OK):
            return f"{lock} is not a readable and writable file"
        return None
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"cannot create {path}: {ancestor} is not a directory"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"cannot create {path}: directory {ancestor} is not writable"
    return None


def _file_problem(path: Path) -> str | None:
    """Why a file the exporter writes cannot be used as it is: the state file, SQLite's files
    beside it or the lock file is a link (writing would overwrite whatever it points to), a
    directory, a FIFO or a device. None when each is missing or a regular file."""
    for name in (path, *_siblings(path), _lock_path(path)):
        try:
            mode = name.lstat().st_mode
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            return f"cannot use {name}: {exc.strerror or exc}"
        if stat.S_ISLNK(mode):
            fix = "set state.path to the file itself" if name == path else "remove it"
            return f"{name} {_LINK}; {fix}"
        if stat.S_ISDIR(mode):
            return f"{name} is a directory, not a file"
        if not stat.S_ISREG(mode):
            return f"{name} is not a regular file"
    return None


def _siblings(path: Path) -> list[Path]:
    return [path.with_name(path.name + suffix) for suffix in _SIBLINGS]


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


class StateFile:
    """The state file of one exporter; ``close()`` it (or use it as a context manager).

    ``moved_aside`` is (new path, reason) when the file found at ``path`` was unusable and
    was renamed, None otherwise. ``read_only`` says why the file could not be written when it
    was opened (a full disk), None once it can be: until then what it holds is served from
    memory, and every save tries to open it for writing again.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        busy_timeout: float = BUSY_TIMEOUT_SECONDS,
        lock_timeout: float = LOCK_TIMEOUT_SECONDS,
    ) -> None:
        self.path = Path(path)
        self.moved_aside: tuple[str, str] | None = None
        self.read_only: str | None = None
        self._busy_timeout = busy_timeout
        self._lock_timeout = lock_timeout
        self._lock = threading.Lock()
        self._full_save: set[str] = set()  # projects whose last save failed
        self._closed = False
        problem = _path_problem(self.path)
        if problem is not None:
            raise StateError(problem)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(
                f"cannot create directory {self.path.parent}: {exc.strerror or exc}"
            ) from exc
        # Released by close(), or when the object is garbage collected without it.
        self._unlock = weakref.finalize(self, _unlock_file, _lock_file(self.path))
        try:
            self._db = self._open()
        except BaseException:
            self._unlock()
            raise

    def __enter__(self) -> StateFile:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close()

    # ------------------------------------------------------------------------- opening

    def _open(self) -> sqlite3.Connection:
        self._refuse_odd_files()
        try:
            reason = self._inspect()
            if reason is None:
                opened = self._open_file(check=True)
                if isinstance(opened, sqlite3.Connection):
                    return opened
                reason = opened
            self._move_aside(reason)
            fresh = self._open_file(check=False)
            assert isinstance(fresh, sqlite3.Connection)
            return fresh
        except StateUnwritable as exc:
            return self._open_in_memory(exc)

    def _open_file(self, *, check: bool) -> sqlite3.Connection | str:
        """The file opened for writing and initialized, or why its contents are unusable
        (when ``check``). Raises StateUnwritable when it cannot be written."""
        created = not os.path.lexists(self.path)
        db = self._connect(self._uri("rwc"))
        try:
            reason = self._validate(db) if check else None
            if reason is None:
                self._initialize(db)
                return db
        except BaseException:
            db.close()
            if created:
                _remove_if_empty(self.path)  # else the next start would move it aside
            raise
        db.close()
        return reason

    def _open_in_memory(self, unwritable: StateUnwritable) -> sqlite3.Connection:
        """What the file holds, copied into memory: it can be read but not written (a full
        disk), and a restart must serve the saved counters rather than fail until it can."""
        memory = self._connect(":memory:")
        try:
            reason = self._copy_into(memory) if os.path.lexists(self.path) else None
            if reason is not None:
                self._move_aside(reason)
                memory.close()
                memory = self._connect(":memory:")
            self._initialize(memory)
        except BaseException:
            memory.close()
            raise
        self.read_only = str(unwritable)
        log.warning(
            "state_file_read_only",
            path=str(self.path),
            error=self.read_only,
            hint="serving the saved counters; every save tries to write the file again",
        )
        return memory

    def _copy_into(self, memory: sqlite3.Connection) -> str | None:
        """Copy the file into ``memory`` and check it there: why it is unusable, or None.

        Reading a WAL database takes its ``-shm`` file, which a full disk cannot create or
        grow (``mode=ro`` fails too), and ``immutable=1`` would not see what the ``-wal``
        holds. In exclusive locking mode SQLite keeps the WAL index in its own memory, so
        only reads reach the disk.
        """
        reader = self._connect(self._uri("rw"))
        try:
            reader.execute("PRAGMA locking_mode=EXCLUSIVE")
            reader.backup(memory)
        except sqlite3.Error as exc:
            if _is_corrupt(exc):
                return CORRUPT
            raise StateError(f"cannot read {self.path}: {exc}") from exc
        finally:
            reader.close()
        return self._validate(memory)

    def _refuse_odd_files(self) -> None:
        """Checked again under the lock, before SQLite opens or creates any of them: the
        directory may have changed since the start was checked."""
        problem = _file_problem(self.path)
        if problem is not None:
            raise StateError(problem)

    def _uri(self, mode: str) -> str:
        return f"file:{urllib.parse.quote(os.fsencode(self.path.absolute()))}?mode={mode}"

    def _inspect(self) -> str | None:
        """Why the existing file is unusable, judged from its bytes; None if it may be fine."""
        try:
            size = self.path.stat().st_size
            if size == 0:
                return EMPTY_FILE
            with self.path.open("rb") as f:
                head = f.read(len(_SQLITE_HEADER))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read {self.path}: {exc.strerror or exc}") from exc
        return None if head == _SQLITE_HEADER else NOT_SQLITE

    def _connect(self, uri: str) -> sqlite3.Connection:
        try:
            return sqlite3.connect(
                uri,
                timeout=self._busy_timeout,
                check_same_thread=False,
                isolation_level=None,
                uri=True,
            )
        except sqlite3.Error as exc:
            raise _sqlite_error(self.path, "cannot open", exc) from exc

    def _validate(self, db: sqlite3.Connection) -> str | None:
        """Read the whole file once without writing: why it is unusable, or None."""
        try:
            return self._check_contents(db)
        except sqlite3.Error as exc:
            if _is_corrupt(exc):
                return CORRUPT
            raise _sqlite_error(self.path, "cannot read", exc) from exc

    def _check_contents(self, db: sqlite3.Connection) -> str | None:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
        if not tables:
            return None  # an empty database: nothing saved yet
        if [row[0] for row in db.execute("PRAGMA quick_check")] != ["ok"]:
            return CORRUPT
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
                " OR fingerprint < 0 LIMIT 1"
            ).fetchone()
            if bad is not None:
                return BAD_SESSIONS
            amounts = " OR ".join(
                f"typeof({c}) NOT IN ('real', 'integer') OR NOT ({c} >= 0 AND {c} < {_MAX_SAVED})"
                for c in _RUN_COLUMNS
            )
            # Flags: a status (0 never run, 1 ok, 2 error), and 4 when missed once.
            bad = db.execute(
                "SELECT 1 FROM sessions WHERE typeof(flags) != 'integer' OR flags NOT IN"
                f" (0, 1, 2, 4, 5, 6) OR {amounts} OR typeof(index_ids) NOT IN ('null', 'text')"
                " LIMIT 1"
            ).fetchone()
            if bad is not None:
                return BAD_SESSIONS
        return None

    def _move_aside(self, reason: str) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        base = f"{self.path}{MOVED_ASIDE_INFIX}{stamp}"
        target, n = base, 1
        while any(os.path.lexists(target + s) for s in ("", *_SIBLINGS)):
            n += 1
            target = f"{base}-{n}"
        try:
            os.rename(self.path, target)
            for suffix in _SIBLINGS:
                with contextlib.suppress(FileNotFoundError):
                    os.rename(f"{self.path}{suffix}", target + suffix)
        except OSError as exc:
            raise StateError(
                f"{self.path} is unusable ({reason}) and cannot be moved aside: "
                f"{exc.strerror or exc}"
            ) from exc
        self.moved_aside = (target, reason)
        log.warning("state_file_moved_aside", path=str(self.path), moved_to=target, reason=reason)

    def _initialize(self, db: sqlite3.Connection) -> None:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            with _committed(db):
                for statement in _SCHEMA:
                    db.execute(statement)
                probe = str(fingerprint_probe())
                saved = db.execute(
                    "SELECT value FROM meta WHERE key = 'fingerprint_probe'"
                ).fetchone()
                if saved is not None and saved[0] != probe:
                    db.execute("DELETE FROM sessions")
                    db.execute("DELETE FROM listing")
                    db.execute("UPDATE totals SET has_baseline = 0")
                db.executemany(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                    [("schema_version", str(SCHEMA_VERSION)), ("fingerprint_probe", probe)],
                )
        except sqlite3.Error as exc:
            raise _sqlite_error(self.path, "cannot write", exc) from exc

    # ------------------------------------------------------------------------ using it

    def _transaction(self, *, write: bool = True) -> _Transaction:
        """A transaction on the file; with ``write`` False, on what was read into memory
        when the file could not be written."""
        if self._closed:
            raise StateError(f"{self.path} is closed")
        connection = self._writable if write else lambda: self._db
        return _Transaction(connection, self._lock, self._lock_timeout, lambda: self._closed)

    def _writable(self) -> sqlite3.Connection:
        """The file's connection; while the file could not be written, a new try to open it.
        Called under the thread lock."""
        if self.read_only is None:
            return self._db
        self._refuse_odd_files()
        opened = self._open_file(check=False)
        assert isinstance(opened, sqlite3.Connection)
        self._db.close()
        self._db, self.read_only = opened, None
        log.info("state_file_writable", path=str(self.path))
        return opened

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

    def _let_go_of_copy(self) -> None:
        """Until a save can write the file, the copy would hold as much memory as the file."""
        if not self._lock.acquire(timeout=self._lock_timeout):
            return  # a save holds the lock: the copy goes when one can write the file
        try:
            if self.read_only is not None and not self._closed:
                self._db.close()
                self._db = self._connect(":memory:")
                self._initialize(self._db)
        finally:
            self._lock.release()

    def _load(self, wanted: set[str] | None) -> dict[str, SavedProject]:
        out: dict[str, SavedProject] = {}
        with self._transaction(write=False):
            for pid, data, has_baseline in self._db.execute(
                "SELECT project_id, data, has_baseline FROM totals"
            ).fetchall():
                if wanted is not None and pid not in wanted:
                    self._delete(pid)
                    continue
                try:
                    totals = _parse_totals(data)
                except ValueError as exc:  # checked when opened: only a changed file gets here
                    raise StateError(f"{self.path}: invalid saved counters") from exc
                sessions: list[SavedSession] | None = None
                listing = None
                if has_baseline:
                    sessions = [
                        (*row[:-1], () if row[-1] is None else tuple(row[-1].split("\n")))
                        for row in self._db.execute(
                            f"SELECT {_SESSION_ROWS} FROM sessions WHERE project_id = ?", (pid,)
                        )
                    ]
                    row = self._db.execute(
                        "SELECT data FROM listing WHERE project_id = ?", (pid,)
                    ).fetchone()
                    listing = None if row is None else _parse_listing(row[0])
                out[pid] = SavedProject(totals, sessions, listing)
        return out

    def save(
        self, project_id: str, totals: RunTotals, result: PollResult, tracker: SessionTracker
    ) -> None:
        """Persist one successful poll. Call it before the project's next poll begins.

        Raises when the save fails; the project's next save then writes its whole state.
        """
        # None: the whole state (a baseline poll, or the first save after a failed one).
        changed = None if project_id in self._full_save else result.changed
        try:
            with self._transaction():
                self._db.execute(
                    "INSERT OR REPLACE INTO totals (project_id, data, has_baseline) "
                    "VALUES (?, ?, 1)",
                    # Never NaN or Infinity: the next start would find the file unusable.
                    (project_id, json.dumps(totals.to_dict(), allow_nan=False)),
                )
                self._db.execute(
                    "INSERT OR REPLACE INTO listing (project_id, data) VALUES (?, ?)",
                    (project_id, json.dumps(asdict(tracker.state), allow_nan=False)),
                )
                if changed is None:
                    self._db.execute("DELETE FROM sessions WHERE project_id = ?", (project_id,))
                else:
                    self._db.executemany(
                        "DELETE FROM sessions WHERE project_id = ? AND session_id = ?",
                        ((project_id, sid) for sid in result.removed),
                    )
                self._db.executemany(
                    f"INSERT OR REPLACE INTO sessions (project_id, {_SESSION_ROWS}) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        (project_id, *row[:-1], "\n".join(row[-1]) if row[-1] else None)
                        for row in tracker.rows(changed)
                    ),
                )
        except BaseException:
            self._full_save.add(project_id)
            raise
        self._full_save.discard(project_id)

    def forget(self, project_id: str) -> None:
        """Drop a project's counters and baseline (it left the config)."""
        self._full_save.discard(project_id)
        with self._transaction():
            self._delete(project_id)

    def _delete(self, project_id: str) -> None:
        for table in ("totals", "sessions", "listing"):
            self._db.execute(f"DELETE FROM {table} WHERE project_id = ?", (project_id,))

    def close(self) -> None:
        """Close the database and release the file lock; waits at most CLOSE_TIMEOUT_SECONDS.

        Saves still waiting for their turn give up as soon as they get it.
        """
        if self._closed:
            return
        self._closed = True
        if not self._lock.acquire(timeout=min(self._lock_timeout, CLOSE_TIMEOUT_SECONDS)):
            # A save still runs in another thread: leave both to the end of the process.
            log.warning("state_close_timeout", path=str(self.path))
            return
        try:
            self._db.close()
        finally:
            self._lock.release()
            self._unlock()


class _Transaction:
    """The thread lock, then ``BEGIN IMMEDIATE`` … ``COMMIT`` on the connection ``connect``
    gives (under the lock); everything released on every path."""

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        lock: threading.Lock,
        timeout: float,
        closed: Callable[[], bool],
    ) -> None:
        self._connect = connect
        self._lock = lock
        self._timeout = timeout
        self._closed = closed
        self._committed: contextlib.AbstractContextManager[None] | None = None

    def __enter__(self) -> None:
        if not self._lock.acquire(timeout=self._timeout):
            raise StateError(
                f"the state file is busy: another operation on it has not finished "
                f"after {self._timeout:g} s"
            )
        try:
            if self._closed():
                raise StateError("the state file is closed: the exporter is stopping")
            committed = _committed(self._connect())
            committed.__enter__()
            self._committed = committed
        except BaseException:
            self._lock.release()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            assert self._committed is not None
            self._committed.__exit__(exc_type, exc, tb)
        finally:
            self._lock.release()


@contextlib.contextmanager
def _committed(db: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` … ``COMMIT``, rolled back when anything fails (the commit too)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(Exception):  # the error that led here is the one to report
            if db.in_transaction:
                db.execute("ROLLBACK")
        raise


def _lock_file(path: Path) -> int:
    """Take the exclusive inter-process lock of ``path``; its file holds the holder's pid."""
    lock = _lock_path(path)
    # Never through a link, and without blocking on a FIFO or a device planted there.
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
    try:
        fd = os.open(lock, flags, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StateError(f"{lock} {_LINK}; remove it") from None
        raise StateError(f"cannot create lock file {lock}: {exc.strerror or exc}") from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise StateError(f"{lock} is not a regular file")
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_pid(fd)
        os.close(fd)
        raise StateInUse(
            f"{path} is in use by another exporter (pid {holder}, which holds {lock}); "
            f"stop it, or give each exporter its own state.path"
        ) from None
    except OSError as exc:
        os.close(fd)
        raise StateError(f"cannot lock {lock}: {exc.strerror or exc}") from exc
    with contextlib.suppress(OSError):  # the pid is only for the message above
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _unlock_file(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
    os.close(fd)  # closing the descriptor releases the lock


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return "unknown"
    return text if text.isdigit() else "unknown"


def _remove_if_empty(path: Path) -> None:
    """Remove the empty file a failed first open left (SQLite creates it at once)."""
    with contextlib.suppress(OSError):
        if path.lstat().st_size == 0:
            path.unlink()


def _sqlite_error(path: Path, what: str, exc: sqlite3.Error) -> StateError:
    """StateUnwritable when ``exc`` says the disk has no room (a read fails so too when it
    cannot create the -shm file), else StateError saying ``what`` failed."""
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if isinstance(code, int):
        no_room = code & 0xFF in _SQLITE_NO_ROOM
    else:
        no_room = any(text in str(exc) for text in ("disk I/O", "disk is full", "unable to open"))
    if no_room:
        return StateUnwritable(f"cannot write {path} or the -wal and -shm files beside it: {exc}")
    return StateError(f"{what} {path}: {exc}")


def _is_corrupt(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if isinstance(code, int):
        return code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    text = str(exc)
    return "malformed" in text or "not a database" in text


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
