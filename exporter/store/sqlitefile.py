"""One SQLite file that only this process writes: its lock, no links, moving it aside, and a
copy in memory when the disk is full.

One process per file: an exclusive lock on ``<path>.lock`` refuses a second one. A file that
cannot be read as what it should hold (empty, not SQLite, corrupt, or contents a subclass
refuses) is moved aside, never deleted, and a fresh one is started.

A file that can be read but not written (a full disk) is read into memory: what it holds is
served from there, and each write tries the file again. No file is written through a
symbolic link: a link (or a FIFO, a device) where the file or its siblings go is refused.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sqlite3
import stat
import tempfile
import threading
import time
import urllib.parse
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import structlog

log = structlog.get_logger("exporter.state")

_File = TypeVar("_File", bound="SQLiteFile")

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

_SQLITE_HEADER = b"SQLite format 3\x00"
_SIBLINGS = ("-wal", "-shm", "-journal")  # files SQLite keeps beside a database
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


class StateError(Exception):
    """The state file cannot be used; the message says why (the CLI prints it, exits 2)."""


class StateInUse(StateError):
    """Another process (another exporter) holds the state file's lock."""


class StateUnwritable(StateError):
    """The state file cannot be written (a full disk); it may still be read."""


def path_problem(path: Path) -> str | None:
    """Why ``path`` cannot be used, or None; changes nothing.

    An existing path must be a regular file this process can read and write, in a directory
    it can write (SQLite writes ``-wal`` and ``-shm`` files beside it); a missing one must
    be creatable: its nearest existing ancestor a writable directory. Neither it nor the
    files beside it (``-wal``, ``-shm``, ``-journal``, ``.lock``) may be a link.
    """
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


def creation_problem(path: Path) -> str | None:
    """Why the daemon could not create the file's directory or a file in it, found by trying:
    a directory or a file made beside where it would go and removed at once. Permission
    bits can say yes where the daemon then fails (root, /proc, a read-only mount)."""
    directory = path.parent
    missing = None
    while not directory.exists() and directory != directory.parent:
        missing, directory = directory, directory.parent
    try:
        if missing is not None:
            os.rmdir(tempfile.mkdtemp(prefix=".llamacloud-exporter-", dir=directory))
        else:
            fd, made = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
            os.close(fd)
            os.unlink(made)
    except OSError as exc:
        what = f"directory {missing}" if missing is not None else f"a file in {directory}"
        return f"cannot create {what}: {exc.strerror or type(exc).__name__}"
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


class SQLiteFile(ABC):
    """An SQLite file that this process alone writes; ``close()`` it (or use it as a context
    manager). A subclass says what the file must hold (:meth:`_check_contents`) and creates
    its tables (:meth:`_create_schema`), and works in :meth:`_transaction`.

    ``moved_aside`` is (new path, reason) when the file found at ``path`` was unusable and
    was renamed, None otherwise. ``read_only`` says why the file could not be written when it
    was opened (a full disk), None once it can be: until then what it holds is served from
    memory, and every write tries to open it for writing again.
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
        self._closed = False
        problem = path_problem(self.path)
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

    def __enter__(self: _File) -> _File:
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
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
            if not tables:
                return None  # an empty database: nothing saved yet
            if [row[0] for row in db.execute("PRAGMA quick_check")] != ["ok"]:
                return CORRUPT
            return self._check_contents(db, tables)
        except sqlite3.Error as exc:
            if _is_corrupt(exc):
                return CORRUPT
            raise _sqlite_error(self.path, "cannot read", exc) from exc

    @abstractmethod
    def _check_contents(self, db: sqlite3.Connection, tables: set[str]) -> str | None:
        """Why a sound database holding ``tables`` is not this file (a short fixed phrase,
        never any of its contents), or None; only reads."""

    @abstractmethod
    def _create_schema(self, db: sqlite3.Connection) -> None:
        """Create what is missing of the file's tables, in a transaction under way."""

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
                self._create_schema(db)
        except sqlite3.Error as exc:
            raise _sqlite_error(self.path, "cannot write", exc) from exc

    # ------------------------------------------------------------------------ using it

    def _transaction(self, *, write: bool = True) -> _Transaction:
        """A transaction on the file, which gives its connection; with ``write`` False, on
        what was read into memory when the file could not be written."""
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

    def close(self, timeout: float = CLOSE_TIMEOUT_SECONDS) -> None:
        """Close the database and release the file lock; waits at most ``timeout`` (never
        more than CLOSE_TIMEOUT_SECONDS) for a write under way.

        Writes still waiting for their turn give up as soon as they get it.
        """
        if self._closed:
            return
        self._closed = True
        wait = max(0.0, min(self._lock_timeout, CLOSE_TIMEOUT_SECONDS, timeout))
        if not self._lock.acquire(timeout=wait):
            # A write still runs in another thread: leave both to the end of the process.
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

    def __enter__(self) -> sqlite3.Connection:
        if not self._lock.acquire(timeout=self._timeout):
            raise StateError(
                f"the state file is busy: another operation on it has not finished "
                f"after {self._timeout:g} s"
            )
        try:
            if self._closed():
                raise StateError("the state file is closed: the exporter is stopping")
            db = self._connect()
            committed = _committed(db)
            committed.__enter__()
            self._committed = committed
        except BaseException:
            self._lock.release()
            raise
        return db

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
