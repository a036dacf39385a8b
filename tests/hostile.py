"""A hostile LlamaCloud for the tests: a real HTTP server on loopback that answers however
a test tells it to, down to the byte and the pace (drips, gzip bombs, odd statuses, echoed
keys), where the simulator answers as the real API does."""

from __future__ import annotations

import gzip
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson


@dataclass
class Request:
    path: str
    query: dict[str, str]
    headers: dict[str, str]


Writer = Callable[[socket.socket, Callable[[], bool]], None]
"""Writes a whole answer to the socket; the second argument says whether the server stops."""
Behaviour = Callable[[Request], Writer]


def answer(
    status: int = 200,
    body: bytes | Any = b"",
    *,
    reason: str = "OK",
    headers: dict[str, str] | None = None,
) -> Writer:
    """A complete answer at once; a body that is not bytes is sent as JSON."""
    data = body if isinstance(body, bytes) else orjson.dumps(body)

    def write(sock: socket.socket, stopping: Callable[[], bool]) -> None:
        head = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {len(data)}"]
        head += [f"{k}: {v}" for k, v in (headers or {"Content-Type": "application/json"}).items()]
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + data)

    return write


def drip(data: bytes, every: float = 0.2) -> Writer:
    """The answer a byte at a time, each well inside any read timeout: it never ends soon."""

    def write(sock: socket.socket, stopping: Callable[[], bool]) -> None:
        for i in range(len(data)):
            if stopping():
                return
            sock.sendall(data[i : i + 1])
            time.sleep(every)

    return write


def page(items: list[Any], token: str | None = None) -> bytes:
    body: dict[str, Any] = {"items": items}
    if token is not None:
        body["next_page_token"] = token
    return orjson.dumps(body)


def gzip_bomb(unpacked: int) -> bytes:
    """A valid gzip body of about ``unpacked / 1000`` bytes that unpacks to ``unpacked``."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = b"[" * (1 << 20)
    parts = [compressor.compress(chunk) for _ in range(unpacked // len(chunk))]
    parts.append(compressor.flush())
    return b"".join(parts)


def gzipped(data: bytes) -> bytes:
    return gzip.compress(data)


@dataclass
class Hostile:
    """The server; ``behaviour`` picks each request's answer and may be swapped at any time."""

    behaviour: Behaviour = field(default=lambda request: answer(200, page([])))
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stopping = threading.Event()
        hostile = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                split = urlsplit(self.path)
                request = Request(
                    split.path,
                    dict(parse_qsl(split.query)),
                    {k: v for k, v in self.headers.items()},
                )
                hostile.requests.append(request)
                try:
                    hostile.behaviour(request)(self.connection, hostile._stopping.is_set)
                except OSError:
                    self.close_connection = True

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 64

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass

        self._server = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> Hostile:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def serve(behaviour: Behaviour) -> Iterator[Hostile]:
    """For fixtures: a started server, stopped at teardown."""
    server = Hostile(behaviour).start()
    try:
        yield server
    finally:
        server.stop()
