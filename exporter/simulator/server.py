"""The HTTP face: the paths, bearer auth, FastAPI-style errors and a threaded server.

``_Handler`` only parses and writes HTTP; every answer is decided by ``Simulator._handle``.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import unquote

from .model import _ENCODER

# How the simulator answers one request: (method, target, its headers, stopping) to
# (status, body, extra headers).
Answer = Callable[
    [str, str, Message, threading.Event], tuple[int, bytes, tuple[tuple[str, str], ...]]
]

CHAT_PATH = "/api/v1/chat"
PROJECTS_PATH = "/api/v2/projects"
# One session with its history: ``CHAT_PATH`` + "/" + the session id (percent-encoded).
SESSION_PATH = CHAT_PATH + "/{session_id}"
# The endpoints by the name faults target them with (``fail_next(endpoint=...)``,
# ``FaultConfig.endpoints``), and the path each name stands for.
_ENDPOINT_PATHS = {"chat": CHAT_PATH, "projects": PROJECTS_PATH, "session": SESSION_PATH}
ENDPOINTS = tuple(_ENDPOINT_PATHS)
_PATH_ENDPOINTS = {CHAT_PATH: "chat", PROJECTS_PATH: "projects"}
_SESSION_PREFIX = CHAT_PATH + "/"
DEFAULT_API_KEY = "llx-demo-key"


def _route(path: str) -> tuple[str | None, str | None]:
    """(endpoint name, session id) of a request path; (None, None) for a path not served."""
    endpoint = _PATH_ENDPOINTS.get(path)
    if endpoint is not None:
        return endpoint, None
    if path.startswith(_SESSION_PREFIX):
        session_id = unquote(path[len(_SESSION_PREFIX) :])
        if session_id and "/" not in path[len(_SESSION_PREFIX) :]:
            return "session", session_id
    return None, None


@dataclass(frozen=True)
class RequestRecord:
    """One request as the server saw it, so tests can assert what the client sent."""

    path: str
    query: dict[str, str]
    authorization: str | None
    status: int
    method: str = "GET"
    headers: dict[str, str] = field(default_factory=dict, compare=False)  # by lower-case name

    @property
    def endpoint(self) -> str | None:
        """The endpoint's name (``ENDPOINTS``): ``"chat"`` for a listing page, ``"session"`` for
        a session's history, ``"projects"``; None for a path not served."""
        return _route(self.path)[0]

    @property
    def session_id(self) -> str | None:
        """The session a history read asked for; None for any other request."""
        return _route(self.path)[1]


class _ApiError(Exception):
    """An HTTP error answer with a FastAPI-style ``{"detail": ...}`` body."""

    def __init__(self, status: int, detail: Any, headers: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(status, detail)
        self.status = status
        self.detail = detail
        self.headers = tuple(headers)


def _detail_body(detail: Any) -> bytes:
    return _ENCODER.encode({"detail": detail}).encode()


def _missing(name: str) -> list[dict[str, Any]]:
    """The 422 detail FastAPI gives for a missing required query parameter."""
    return [{"type": "missing", "loc": ["query", name], "msg": "Field required", "input": None}]


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise _ApiError(401, "Not authenticated", (("WWW-Authenticate", "Bearer"),))
    scheme, _, key = authorization.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise _ApiError(401, "Invalid authentication scheme", (("WWW-Authenticate", "Bearer"),))
    return key


class _Handler(BaseHTTPRequestHandler):
    """Thin HTTP layer: all decisions are made by ``Simulator._handle``."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "llamacloud-simulator"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        cast("_Server", self.server).track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            cast("_Server", self.server).track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: a benchmark would otherwise spend its time writing to stderr."""

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        server = cast("_Server", self.server)
        length = self.headers.get("Content-Length")
        if length and length.isdigit():
            self.rfile.read(int(length))  # drain, so the connection can be reused
        status, body, headers = server.answer(method, self.path, self.headers, server.stopping)
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            self.close_connection = True  # the client gave up (e.g. after its timeout)


class _Server(ThreadingHTTPServer):
    """Threaded server that remembers open connections so ``stop()`` can close keep-alives."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        answer: Answer,
        stopping: threading.Event,
    ) -> None:
        self.answer = answer
        self.stopping = stopping
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self.peak_connections = 0  # the most client connections open at once
        super().__init__(address, handler)

    def track(self, connection: socket.socket, *, add: bool) -> None:
        with self._connections_lock:
            if add:
                self._connections.add(connection)
                self.peak_connections = max(self.peak_connections, len(self._connections))
            else:
                self._connections.discard(connection)

    @property
    def open_connections(self) -> int:
        with self._connections_lock:
            return len(self._connections)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients dropping connections is normal here; anything else is still reported."""
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class _Server6(_Server):
    address_family = socket.AF_INET6
