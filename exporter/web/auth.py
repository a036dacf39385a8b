"""HTTP basic auth against bcrypt hashes, at a bounded cost whatever clients send.

A bcrypt check is slow by design (tens to hundreds of milliseconds of one core), which is
what a flood of wrong passwords exploits. So:

* **One check at a time, first come first served.** Every check of the process runs on one
  thread of its own (the *lane*), in the order the checks came. The HTTP server awaits a
  check on its event loop (:meth:`BasicAuth.check_async`), so its worker threads never run
  bcrypt nor wait for it: a request whose password is remembered (every scrape after the
  first) is answered at once during a flood.
* **A bounded queue with a deadline.** At most ``BCRYPT_QUEUE`` checks wait or run; a check
  that finds the queue full is refused at once (:attr:`AuthResult.BUSY`, HTTP 503), and a
  request waits at most ``BCRYPT_WAIT`` seconds for its answer (BUSY after that; the check
  still runs when its turn comes and its result is remembered).
* **Hence no lock-out.** A check admitted behind ``k`` others is answered after ``k + 1``
  bcrypt checks, and never behind a check that came after it. Clients that send a request
  and wait for its answer before the next (a browser, Prometheus, ``curl`` in a loop) hold at
  most one place each, so fewer than ``BCRYPT_QUEUE`` of them, however fast they guess,
  always leave a place for the right password, which then waits for at most
  ``BCRYPT_QUEUE`` checks at the highest configured cost (0.05 to 0.1 s each at cost 10,
  0.2 to 0.35 s at cost 12 on one core: under 2 s and 6 s). Only more concurrent guessers
  than that can make it a 503 (never a 401: a password that was not checked is not called
  wrong).
* **Answers are remembered** by a SHA-256 of user, password and hash: the last
  ``AUTH_CACHE_SIZE`` successes (as exporter-toolkit) and ``AUTH_FAILURE_CACHE_SIZE``
  failures, and a check already queued is joined rather than queued again. A flood that
  repeats a wrong password costs one bcrypt check, not one per request.
* **A wrong password costs the same work for every user name.** bcrypt's work is 2^cost
  rounds. A failed check always does 2^max rounds, max being the highest cost among the
  configured hashes: an unknown user's password is checked against a hash of that cost, and a
  wrong password for a user whose hash costs less is followed by checks against hashes of
  costs ``cost, cost + 1, ..., max - 1`` (2^cost + ... + 2^(max-1) = 2^max - 2^cost). So the
  time of a 401 does not tell which users exist, and a right password costs only its own hash
  (it says nothing the 200 does not say): logins are not slowed down.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import enum
import hashlib
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from types import MappingProxyType

import bcrypt

AUTH_CACHE_SIZE = 100  # successful checks remembered (exporter-toolkit: 100)
AUTH_FAILURE_CACHE_SIZE = 1000  # failed checks remembered: a repeated guess costs no bcrypt
BCRYPT_QUEUE = 16  # bcrypt checks waiting or running at once; more are refused (503)
BCRYPT_WAIT = 10.0  # seconds a request waits for its check, as Prometheus's scrape_timeout
MAX_AUTHORIZATION_BYTES = 8 * 1024  # a longer Authorization header is refused unread
BCRYPT_MAX_PASSWORD_BYTES = 72  # bcrypt reads no further; Go and htpasswd cut there too

Future = concurrent.futures.Future


class AuthResult(enum.Enum):
    """What a request's ``Authorization`` header gets it."""

    GRANTED = "granted"
    DENIED = "denied"  # no, malformed or wrong credentials: 401
    BUSY = "busy"  # not checked: the bcrypt queue was full or the wait too long: 503


class BasicAuth:
    """The checks of one ``basic_auth_users`` mapping (user -> bcrypt hash).

    Thread-safe. :meth:`carry_over` lets a reloaded copy of the same users keep what the
    one it replaces has remembered.
    """

    def __init__(self, users: Mapping[str, bytes]) -> None:
        self._users: Mapping[str, bytes] = MappingProxyType(dict(users))
        self._max_cost = max((_cost(h) for h in self._users.values()), default=0)
        self._checks = _Checks()

    def carry_over(self, previous: BasicAuth) -> None:
        """Keep ``previous``'s remembered and queued checks when its users and hashes are
        exactly these; with any change, nothing is kept (a changed hash starts afresh)."""
        if dict(previous._users) == dict(self._users):
            self._checks = previous._checks

    def check(self, authorization_header: str | None) -> AuthResult:
        """The answer for a header, waiting for a bcrypt check if one is needed."""
        future = self.start(authorization_header)
        try:
            return future.result(timeout=BCRYPT_WAIT)
        except concurrent.futures.TimeoutError:
            return AuthResult.BUSY

    async def check_async(self, authorization_header: str | None) -> AuthResult:
        """:meth:`check` for an event loop: the wait holds no thread."""
        future = self.start(authorization_header)
        if future.done():
            return future.result()
        try:
            # Shielded: a request that stops waiting must not cancel a check others joined.
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), BCRYPT_WAIT)
        except asyncio.TimeoutError:
            return AuthResult.BUSY

    def start(self, authorization_header: str | None) -> Future[AuthResult]:
        """The answer for a header, as a future: already done when no bcrypt check is
        needed (no users, a malformed header, a remembered answer, a full queue)."""
        if not self._users:
            return _settled(AuthResult.GRANTED)
        credentials = basic_credentials(authorization_header)
        if credentials is None:
            return _settled(AuthResult.DENIED)
        user, password = credentials
        secret = password.encode("utf-8")[:BCRYPT_MAX_PASSWORD_BYTES]
        stored = self._users.get(user)
        checked_against = stored if stored is not None else _decoy(self._max_cost)
        key = hashlib.sha256(b"\0".join((user.encode("utf-8"), secret, checked_against))).digest()
        checks = self._checks
        if checks.good.hit(key):
            return _settled(AuthResult.GRANTED)
        if checks.bad.hit(key):
            return _settled(AuthResult.DENIED)
        with checks.lock:
            future = checks.pending.get(key)
            if future is not None:
                return future
            queued = _LANE.submit(lambda: self._run(checks, key, secret, stored), BCRYPT_QUEUE)
            if queued is None:
                return _settled(AuthResult.BUSY)
            checks.pending[key] = queued
        queued.add_done_callback(lambda _: checks.forget(key))
        return queued

    def _run(self, checks: _Checks, key: bytes, secret: bytes, stored: bytes | None) -> AuthResult:
        """One check, on the lane: 2^cost rounds for a right password, 2^max for a wrong one."""
        if stored is not None and _checkpw(secret, stored):
            checks.good.add(key)
            return AuthResult.GRANTED
        padding = range(_cost(stored), self._max_cost) if stored is not None else (self._max_cost,)
        for cost in padding:
            _checkpw(secret, _decoy(cost))  # the answer is no whatever this says
        checks.bad.add(key)
        return AuthResult.DENIED


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """``(user, password)`` from ``Basic base64(user:password)``, or None when malformed."""
    if not header or len(header) > MAX_AUTHORIZATION_BYTES:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
        return None
    user, colon, password = decoded.partition(":")
    if not colon:
        return None
    return user, password


class _DigestCache:
    """A thread-safe LRU set of digests."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()

    def hit(self, key: bytes) -> bool:
        with self._lock:
            if key not in self._entries:
                return False
            self._entries.move_to_end(key)
            return True

    def add(self, key: bytes) -> None:
        with self._lock:
            self._entries[key] = None
            self._entries.move_to_end(key)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


class _Checks:
    """What one set of users has remembered, and the checks of theirs under way."""

    def __init__(self) -> None:
        self.good = _DigestCache(AUTH_CACHE_SIZE)
        self.bad = _DigestCache(AUTH_FAILURE_CACHE_SIZE)
        self.pending: dict[bytes, Future[AuthResult]] = {}
        self.lock = threading.Lock()

    def forget(self, key: bytes) -> None:
        with self.lock:
            self.pending.pop(key, None)


class _Lane:
    """One daemon thread running jobs in the order they came, with at most ``limit``
    waiting or running. A daemon: a queue of checks never holds up the process's exit."""

    def __init__(self) -> None:
        self._ready = threading.Condition()
        self._jobs: deque[tuple[Future[AuthResult], Callable[[], AuthResult]]] = deque()
        self._running = False
        self._thread: threading.Thread | None = None

    def submit(self, job: Callable[[], AuthResult], limit: int) -> Future[AuthResult] | None:
        """The job's future, or None when ``limit`` jobs are already waiting or running."""
        with self._ready:
            if len(self) >= limit:
                return None
            if self._thread is None:
                thread = threading.Thread(target=self._work, name="bcrypt", daemon=True)
                thread.start()  # may raise: then nothing is queued
                self._thread = thread
            future: Future[AuthResult] = Future()
            self._jobs.append((future, job))
            self._ready.notify()
            return future

    def __len__(self) -> int:
        """Jobs waiting or running."""
        with self._ready:
            return len(self._jobs) + self._running

    def _work(self) -> None:
        while True:
            with self._ready:
                self._running = False
                while not self._jobs:
                    self._ready.wait()
                future, job = self._jobs.popleft()
                self._running = True
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = job()
            except BaseException as exc:  # the future's owner sees it; the lane goes on
                future.set_exception(exc)
            else:
                future.set_result(result)


_LANE = _Lane()  # every check of the process: one bcrypt at a time, across reloads too


def _settled(result: AuthResult) -> Future[AuthResult]:
    future: Future[AuthResult] = Future()
    future.set_result(result)
    return future


def _checkpw(secret: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(secret, hashed)
    except ValueError:
        return False


def _cost(hashed: bytes) -> int:
    """The cost of a checked ``$2?$NN$...`` hash."""
    return int(hashed[4:6])


def _decoy(cost: int) -> bytes:
    """A well-formed hash of ``cost`` that is never a configured one (an all-zero salt and
    digest): checking a password against it takes the time of a real check."""
    return b"$2b$%02d$" % cost + b"." * 53
