"""A total deadline per request: one watchdog thread cuts the connection of any request past it."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from typing import Any


class Connection:
    """The one connection of a pooled client, as httpcore's trace reports it (or the
    standard library's connection, :meth:`attach`), so the watchdog can cut it when a
    request outlives its deadline.

    One lock orders the request's start, its end and its cut: a cut can never reach the
    next request on the same kept-alive socket.
    """

    __slots__ = ("_lock", "_stream", "request")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stream: Any = None
        self.request: _Deadline | None = None

    def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpcore's ``trace`` extension: remember each new network stream."""
        if not event.endswith(".complete"):
            return
        stream = info.get("return_value")
        if hasattr(stream, "get_extra_info"):
            self.attach(stream)

    def attach(self, stream: Any) -> None:
        """The connection's socket from now on (or a stream that knows it, as httpcore's
        ``get_extra_info("socket")``)."""
        with self._lock:
            self._stream = stream
            if self.request is not None and self.request.expired:
                _cut(stream)  # the deadline passed while connecting

    def begin(self, deadline: _Deadline) -> None:
        with self._lock:
            self.request = deadline

    def end(self) -> None:
        with self._lock:
            self.request = None

    def expire(self, deadline: _Deadline) -> None:
        with self._lock:
            if self.request is not deadline:
                return  # that request has ended
            deadline.expired = True
            if self._stream is not None:
                _cut(self._stream)


def _cut(stream: Any) -> None:
    """Shut the socket down: a read blocked on it returns at once, in any thread."""
    with contextlib.suppress(Exception):
        sock = stream.get_extra_info("socket") if hasattr(stream, "get_extra_info") else stream
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)


class _Deadline:
    __slots__ = ("at", "expired")

    def __init__(self, at: float) -> None:
        self.at = at
        self.expired = False


class Watchdog:
    """One thread that cuts the connection of any request still running at its deadline.

    ``timeout_seconds`` is per read in httpx: a server that drips a byte a second would hold
    a request, and a poll, forever. Here a request has a total deadline, from connect to the
    last byte of the body. The watchdog holds only the connections with a request in flight
    (at most one per poll under way), so it costs nothing between polls.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._active: set[Connection] = set()
        self._wake_at: float | None = None  # when the thread wakes next; None: idle
        self._thread: threading.Thread | None = None
        self._closed = False

    def arm(self, seconds: float, connection: Connection) -> _Deadline:
        deadline = _Deadline(self._clock() + seconds)
        connection.begin(deadline)
        with self._cond:
            self._active.add(connection)
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(
                    target=self._run, name="llamacloud-deadlines", daemon=True
                )
                self._thread.start()
            if self._wake_at is None or deadline.at < self._wake_at:
                self._cond.notify()
        return deadline

    def disarm(self, connection: Connection) -> None:
        connection.end()
        with self._cond:
            self._active.discard(connection)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._active.clear()
            self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                now = self._clock()
                self._wake_at = None
                for connection in list(self._active):
                    deadline = connection.request
                    if deadline is None:
                        self._active.discard(connection)
                    elif deadline.at <= now:
                        connection.expire(deadline)
                        self._active.discard(connection)
                    elif self._wake_at is None or deadline.at < self._wake_at:
                        self._wake_at = deadline.at
                self._cond.wait(None if self._wake_at is None else self._wake_at - now)
