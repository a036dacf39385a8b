"""A small HTTP/1.1 server for one WSGI app, bounded in connections, threads and time.

Its one job is to serve the exporter's pages so that no client can starve the process.
prometheus_client's ThreadingWSGIServer, used before, started a thread per connection with
no cap and no timeout: a thousand idle sockets made a thousand threads, and at the open-file
limit its accept loop spun at full CPU. Here one asyncio event loop on one daemon thread
owns every socket:

* accept() is our own loop, one connection at a time, so the cap on open connections holds
  before a connection is set up, and running out of file descriptors backs off (after
  evicting an idle connection, if there is one) instead of spinning or logging per try;
* at the cap, a new connection evicts the one that has gone longest without a request in
  progress (idle keep-alive, or a request head still arriving), so a scrape is answered
  while someone holds hundreds of sockets open; if every connection is mid-request, the
  new one is closed at once;
* every wait has a deadline: the first request of a connection, each request's head and
  body, the idle time between keep-alive requests, and writing the response;
* the app runs on a small fixed pool of worker threads, so the thread count stays bounded
  whatever clients do, and a slow app (a config reload) never blocks the loop;
* what a request must wait for before the app runs (a password check, which queues for its
  turn) is awaited on the loop (``prepare``), so waiting requests hold no worker thread.

Request bodies come only with Content-Length and are small; every response carries a
Content-Length (the app's output is collected first: the exporter builds bodies in memory).
The listener is made in :func:`_listen` and each connection's streams in
:meth:`HttpServer._connection`, where TLS is layered on when ``tls()`` gives a context. A TLS
handshake runs in the connection's own task, with the request deadline, so a client that
never finishes one holds a connection slot for at most that long and never the accept loop;
connections still in their handshake count towards the cap and are evicted first.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import re
import resource
import socket
import ssl
import sys
import threading
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any
from urllib.parse import unquote, urlsplit

import structlog

log = structlog.get_logger("exporter.web")

MAX_CONNECTIONS = 512  # open client connections; also at most half the soft RLIMIT_NOFILE
WORKERS = 4  # threads running the app
BACKLOG = 1024  # the kernel's accept queue (capped by net.core.somaxconn)
REQUEST_TIMEOUT = 10.0  # seconds: a new connection's first byte; a request's head and body
IDLE_TIMEOUT = 60.0  # seconds a keep-alive connection may wait for its next request
WRITE_TIMEOUT = 30.0  # seconds to hand a response to a client that reads it
MAX_HEAD_BYTES = 16 * 1024  # request line and headers; more is answered with 431
MAX_BODY_BYTES = 64 * 1024  # request body; more is answered with 413
LINGER_TIMEOUT = 2.0  # seconds to let a client read a last response before the socket closes
ACCEPT_RETRY_DELAY = 1.0  # seconds between accept() tries while file descriptors run out
STOP_TIMEOUT = 5.0  # seconds stop() waits for the loop thread
WRITE_SLICE = 256 * 1024  # bytes handed to the transport at a time
# Response bytes held for clients still reading them; past this, clients that stopped reading
# are dropped (a /metrics body of 1,000 projects is about 9 MB).
MAX_PENDING_BYTES = 256 * 1024 * 1024

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]
Prepare = Callable[[dict[str, Any]], Awaitable[None]]
Headers = list[tuple[str, str]]

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(rb"[\x21-\x7e]+")
_VERSION = re.compile(rb"HTTP/(\d)\.(\d)")
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_SET_BY_SERVER = frozenset(
    {"connection", "content-length", "date", "keep-alive", "transfer-encoding"}
)
_BODILESS = frozenset({"204", "304"})


@dataclass(frozen=True)
class Limits:
    """What clients may hold of the server; the defaults are this module's constants."""

    max_connections: int = MAX_CONNECTIONS
    workers: int = WORKERS
    request_timeout: float = REQUEST_TIMEOUT
    idle_timeout: float = IDLE_TIMEOUT
    write_timeout: float = WRITE_TIMEOUT
    max_head_bytes: int = MAX_HEAD_BYTES
    max_body_bytes: int = MAX_BODY_BYTES
    max_pending_bytes: int = MAX_PENDING_BYTES


def connection_cap(wanted: int) -> int:
    """``wanted``, but at most half the soft open-file limit: the rest stays for the poller,
    the state file and the logs, so the server alone never runs the process out of files."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return max(1, wanted)
    return max(1, min(wanted, soft // 2))


class _Reject(Exception):
    """A request the server answers itself before closing the connection."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass
class _Request:
    method: str
    path: str  # still percent-encoded
    query: str
    version: str  # HTTP/1.0 or HTTP/1.1
    headers: Headers  # names in lower case
    body: bytes = b""
    keep_alive: bool = True

    def header(self, name: str) -> str:
        return ",".join(value for key, value in self.headers if key == name)


def _parse_head(lines: list[bytes]) -> _Request:
    """The request line and header fields, strictly: anything ambiguous is a 400."""
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not _TARGET.fullmatch(parts[1]):
        raise _Reject("400 Bad Request", "malformed request line")
    method, raw_target, raw_version = parts
    version = _VERSION.fullmatch(raw_version)
    if version is None:
        raise _Reject("400 Bad Request", "malformed request line")
    if version[1] != b"1":
        raise _Reject("505 HTTP Version Not Supported", "this server speaks HTTP/1.0 and HTTP/1.1")
    target = raw_target.decode("ascii")
    if target.startswith("/"):
        path, _, query = target.partition("?")
    elif target.startswith(("http://", "https://")):  # absolute form, as sent to a proxy
        try:
            url = urlsplit(target)
        except ValueError:  # "http://[::1/": a host urlsplit cannot read
            raise _Reject("400 Bad Request", "malformed request target") from None
        path, query = url.path or "/", url.query
    else:
        raise _Reject("400 Bad Request", "malformed request target")
    headers: Headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        value = value.strip(b" \t")
        # No space before the colon, no folded lines, no stray CR or NUL (request smuggling).
        if not colon or not _TOKEN.fullmatch(name) or b"\r" in value or b"\0" in value:
            raise _Reject("400 Bad Request", "malformed header field")
        headers.append((name.decode("ascii").lower(), value.decode("latin-1")))
    return _Request(
        method=method.decode("ascii"),
        path=path,
        query=query,
        version="HTTP/1.0" if version[2] == b"0" else "HTTP/1.1",
        headers=headers,
    )


def _content_length(request: _Request, limit: int) -> int:
    """The body's length; only Content-Length framing is taken, and only up to ``limit``."""
    if request.header("transfer-encoding"):
        raise _Reject("411 Length Required", "send a request body with Content-Length")
    given = request.header("content-length")
    if not given:
        return 0
    values = {value.strip() for value in given.split(",")}
    if len(values) != 1 or not all(value.isdigit() and value.isascii() for value in values):
        raise _Reject("400 Bad Request", "malformed Content-Length")
    digits = values.pop().lstrip("0") or "0"
    if len(digits) > 18:  # int() refuses more than 4,300 digits; no body is that long anyway
        raise _Reject("413 Content Too Large", f"request bodies are limited to {limit} bytes")
    length = int(digits)
    if length > limit:
        raise _Reject("413 Content Too Large", f"request bodies are limited to {limit} bytes")
    return length


def _keep_alive(request: _Request) -> bool:
    tokens = {token.strip().lower() for token in request.header("connection").split(",")}
    if request.version == "HTTP/1.0":
        return "keep-alive" in tokens
    return "close" not in tokens


def _response_head(
    status: str, headers: Headers, length: int, keep_alive: bool, version: str
) -> bytes:
    """Status line and headers; framing and connection headers are the server's alone."""
    lines = [f"HTTP/1.1 {status}"]
    lines += [f"{name}: {value}" for name, value in headers if name.lower() not in _SET_BY_SERVER]
    if status[:3] not in _BODILESS:
        lines.append(f"Content-Length: {length}")
    lines.append(f"Date: {formatdate(usegmt=True)}")
    if not keep_alive:
        lines.append("Connection: close")
    elif version == "HTTP/1.0":
        lines.append("Connection: keep-alive")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _run_app(app: WsgiApp, environ: dict[str, Any]) -> tuple[str, Headers, bytes]:
    """Call the app on a worker thread and collect its whole response."""
    started: list[tuple[str, Headers]] = []
    chunks: list[bytes] = []

    def start_response(
        status: str, headers: Headers, exc_info: Any = None
    ) -> Callable[[bytes], None]:
        for name, value in headers:  # what would break the response head or split it in two
            if "\r" in name + value or "\n" in name + value:
                raise ValueError(f"line break in response header {name!r}")
            (name + value).encode("latin-1")  # UnicodeEncodeError now, not in the loop
        # Nothing has been sent yet, so a second call (with exc_info) may replace the first.
        started[:] = [(status, list(headers))]
        return chunks.append

    result = app(environ, start_response)
    try:
        chunks.extend(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    if not started:
        raise RuntimeError("the app returned without calling start_response")
    status, headers = started[0]
    return status, headers, b"".join(chunks)


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, IPv6 when the host is an IPv6 address (then dual-stack if it can)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server(
        (host, port),
        family=family,
        backlog=BACKLOG,
        dualstack_ipv6=family == socket.AF_INET6 and socket.has_dualstack_ipv6(),
    )
    sock.setblocking(False)
    return sock


@dataclass(eq=False)
class _Connection:
    """One client connection, and what eviction or stop() need to end it from outside."""

    peer: Any
    reader: asyncio.StreamReader = field(repr=False)
    writer: asyncio.StreamWriter = field(repr=False)
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    context: ssl.SSLContext | None = field(default=None, repr=False)  # None: plain HTTP

    @property
    def tls(self) -> bool:
        return self.context is not None

    def abort(self) -> None:
        """Close at once, dropping anything unsent: for evicted, timed-out or stopped ones."""
        self.writer.transport.abort()


async def _discard(reader: asyncio.StreamReader) -> None:
    while await reader.read(65536):
        pass


class HttpServer:
    """Serves ``app`` on host:port from one event-loop thread and a few app threads."""

    def __init__(
        self,
        host: str,
        port: int,
        app: WsgiApp,
        limits: Limits | None = None,
        tls: Callable[[], ssl.SSLContext | None] = lambda: None,
        accept_peer: Callable[[Any], bool] = lambda cert: True,
        prepare: Prepare | None = None,
    ) -> None:
        """``tls`` gives the TLS context for each new connection (None: plain HTTP), so a
        renewed certificate applies to the next connection; ``accept_peer`` is asked with
        the client certificate (``getpeercert()``) after a TLS handshake; ``prepare`` is
        awaited on the event loop with each request's environ before the app gets it (it
        may add keys for the app), for waits that must not hold a worker thread."""
        self.app = app
        self._tls = tls
        self._accept_peer = accept_peer
        self._prepare = prepare
        self.limits = limits or Limits()
        self.max_connections = connection_cap(self.limits.max_connections)
        self._host = host
        self._listener = _listen(host, port)
        self._port = int(self._listener.getsockname()[1])
        self._pool = ThreadPoolExecutor(self.limits.workers, thread_name_prefix="http-worker")
        self._thread = threading.Thread(target=self._run, name="http-server", daemon=True)
        self._running = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._open: set[_Connection] = set()
        # TLS handshakes under way, oldest first: counted in the cap, evicted before the rest.
        self._handshakes: dict[asyncio.Task[None], socket.socket] = {}
        # Connections with no request in progress, longest-waiting first: eviction order.
        self._idle: dict[_Connection, None] = {}
        # Connections writing a response, and its size: what MAX_PENDING_BYTES bounds.
        self._pending: dict[_Connection, int] = {}
        self._pending_bytes = 0

    @property
    def port(self) -> int:
        return self._port

    def start(self) -> None:
        self._thread.start()
        self._running.wait(STOP_TIMEOUT)

    def stop(self) -> None:
        """Close the listener and every connection, and join the loop thread."""
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop has just ended by itself
                loop.call_soon_threadsafe(stopping.set)
            self._thread.join(STOP_TIMEOUT)
        self._listener.close()
        # A worker still inside the app (a reload has its own 60 s bound) finishes on its own.
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = stopping = asyncio.Event()
        self._running.set()
        accepting = asyncio.create_task(self._accept_forever())
        try:
            await stopping.wait()
        finally:
            accepting.cancel()
            self._listener.close()
            tasks = [conn.task for conn in self._open if conn.task is not None]
            for conn in list(self._open):
                self._drop(conn)
            tasks += self._handshakes
            for task in list(self._handshakes):
                task.cancel()
            await asyncio.gather(accepting, *tasks, return_exceptions=True)

    async def _accept_forever(self) -> None:
        loop = asyncio.get_running_loop()
        paused = False
        while True:
            try:
                sock, peer = await loop.sock_accept(self._listener)
            except ConnectionAbortedError:
                continue  # that client gave up while it was queued
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES and self._evict_idle():
                    await asyncio.sleep(0)  # the evicted socket closes on this loop pass
                    continue
                if not paused:
                    log.warning(
                        "http_accept_paused",
                        error=exc.strerror or repr(exc),
                        retry_seconds=ACCEPT_RETRY_DELAY,
                    )
                    paused = True
                await asyncio.sleep(ACCEPT_RETRY_DELAY)
                continue
            if paused:
                log.info("http_accept_resumed")
                paused = False
            if self.connections >= self.max_connections and not self._evict_idle():
                sock.close()  # every connection is mid-request: refusing beats queueing
                continue
            context = self._tls()
            if context is not None:
                task = loop.create_task(self._handshake(sock, peer, context))
                self._handshakes[task] = sock
                continue
            try:
                conn = await self._connection(sock, peer)
            except OSError:
                sock.close()  # reset before it could be set up
                continue
            self._start(conn)

    def _start(self, conn: _Connection, task: asyncio.Task[None] | None = None) -> None:
        self._open.add(conn)
        self._idle[conn] = None
        conn.task = task or asyncio.get_running_loop().create_task(self._serve(conn))

    async def _handshake(self, sock: socket.socket, peer: Any, context: ssl.SSLContext) -> None:
        """A TLS connection's own task: the handshake, the peer check, then its requests."""
        task = asyncio.current_task()
        assert task is not None
        try:
            conn = await self._connection(sock, peer, context)
        except (OSError, asyncio.TimeoutError, ssl.SSLError):
            sock.close()  # a failed or too slow handshake: asyncio says why at debug level
            return
        finally:
            self._handshakes.pop(task, None)
        if not self._accept_peer(conn.writer.get_extra_info("peercert")):
            conn.abort()  # a client certificate that is valid but not one of the allowed
            return
        self._start(conn, task)
        await self._serve(conn)

    @property
    def connections(self) -> int:
        """Client connections open now, TLS handshakes under way included."""
        return len(self._open) + len(self._handshakes)

    def _evict_idle(self) -> bool:
        """Close the oldest TLS handshake under way, or else the connection that has waited
        longest with no request in progress."""
        for task, sock in self._handshakes.items():
            task.cancel()
            del self._handshakes[task]
            with contextlib.suppress(OSError):
                sock.close()
            return True
        if not self._idle:
            return False
        self._drop(next(iter(self._idle)))
        return True

    def _drop(self, conn: _Connection) -> None:
        """End a connection from outside its own task."""
        self._forget(conn)
        conn.abort()
        if conn.task is not None:
            conn.task.cancel()

    def _forget(self, conn: _Connection) -> None:
        self._open.discard(conn)
        self._idle.pop(conn, None)

    async def _connection(
        self, sock: socket.socket, peer: Any, context: ssl.SSLContext | None = None
    ) -> _Connection:
        """Streams over an accepted socket, over TLS with ``context``.

        Set up before the connection is counted (without TLS it takes one loop pass), so
        eviction and stop() always close it through its transport, never under it.
        """
        loop = asyncio.get_running_loop()
        # asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and an accepted
        # socket's says 0: without it a response's last small segment waits for a delayed ACK.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = asyncio.StreamReader(limit=self.limits.max_head_bytes)
        protocol = asyncio.StreamReaderProtocol(reader)
        if context is None:
            transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock)
        else:
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol,
                sock,
                ssl=context,
                ssl_handshake_timeout=self.limits.request_timeout,
            )
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        return _Connection(peer, reader, writer, context=context)

    async def _serve(self, conn: _Connection) -> None:
        try:
            await self._requests(conn)
        except (OSError, asyncio.IncompleteReadError):
            pass  # the client went away
        except Exception as exc:  # a bug here: the connection goes, the server stays
            log.error("http_connection_failed", exc_info=exc)
        finally:
            self._forget(conn)
            conn.abort()

    async def _requests(self, conn: _Connection) -> None:
        """Answer requests one at a time until the connection should end."""
        limits = self.limits
        wait = limits.request_timeout  # whoever connects has a request to send
        while True:
            try:
                first = await asyncio.wait_for(conn.reader.readexactly(1), wait)
            except asyncio.TimeoutError:
                return
            except asyncio.IncompleteReadError:
                await self._close(conn)  # the client is done: let the last answer out
                return
            try:
                request = await asyncio.wait_for(
                    self._read_request(conn, first), limits.request_timeout
                )
            except asyncio.TimeoutError:
                await self._refuse(conn, "408 Request Timeout", "too slow")
                return
            except _Reject as reject:
                await self._refuse(conn, reject.status, str(reject))
                return
            self._idle.pop(conn, None)  # a whole request: not evictable until it is answered
            status, headers, body = await self._call(request, conn)
            # A reload that changed TLS (a renewed certificate, TLS turned on or off) ends
            # connections set up under the old one after this answer: the next is set up anew.
            keep_alive = request.keep_alive and self._tls() is conn.context
            head = _response_head(status, headers, len(body), keep_alive, request.version)
            send_body = request.method != "HEAD" and status[:3] not in _BODILESS
            if not await self._write(conn, [head, body] if send_body else [head]):
                return
            if not keep_alive:
                await self._linger(conn)
                return
            self._idle[conn] = None
            wait = limits.idle_timeout

    async def _read_request(self, conn: _Connection, first: bytes) -> _Request:
        request = _parse_head(await self._read_head(conn.reader, first))
        length = _content_length(request, self.limits.max_body_bytes)
        if length:
            if request.version == "HTTP/1.1" and request.header("expect").lower() == "100-continue":
                conn.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.body = await conn.reader.readexactly(length)
        request.keep_alive = _keep_alive(request)
        return request

    async def _read_head(self, reader: asyncio.StreamReader, first: bytes) -> list[bytes]:
        """Request line and header lines without their ends (CRLF, or a bare LF)."""
        lines: list[bytes] = []
        size = 0
        line = first if first == b"\n" else first + await self._readline(reader)
        while True:
            size += len(line)
            if size > self.limits.max_head_bytes:
                raise _Reject("431 Request Header Fields Too Large", "request head too large")
            if not line.endswith(b"\n"):
                raise asyncio.IncompleteReadError(line, None)  # the client left mid-head
            line = line.removesuffix(b"\n").removesuffix(b"\r")
            if line:
                lines.append(line)
            elif lines:
                return lines
            # else an empty line before the request line, which RFC 9112 says to skip
            line = await self._readline(reader)

    @staticmethod
    async def _readline(reader: asyncio.StreamReader) -> bytes:
        try:
            return await reader.readline()
        except ValueError:  # a line longer than the reader's limit, which is the head limit
            raise _Reject("431 Request Header Fields Too Large", "request head too large") from None

    def _environ(self, request: _Request, conn: _Connection) -> dict[str, Any]:
        """The WSGI environ, as wsgiref builds it."""
        environ: dict[str, Any] = {
            "REQUEST_METHOD": request.method,
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote(request.path, "iso-8859-1"),
            "QUERY_STRING": request.query,
            "SERVER_NAME": self._host,
            "SERVER_PORT": str(self._port),
            "SERVER_PROTOCOL": request.version,
            "REMOTE_ADDR": str(conn.peer[0]),
            "REMOTE_PORT": str(conn.peer[1]),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "https" if conn.tls else "http",
            "wsgi.input": io.BytesIO(request.body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        for name, value in request.headers:
            if "_" in name:  # would pass for its dash-named twin once in the environ
                continue
            key = name.upper().replace("-", "_")
            if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                key = "HTTP_" + key
            environ[key] = f"{environ[key]},{value}" if key in environ else value
        if "CONTENT_LENGTH" in environ:
            environ["CONTENT_LENGTH"] = str(len(request.body))
        return environ

    async def _call(self, request: _Request, conn: _Connection) -> tuple[str, Headers, bytes]:
        """The app's response, computed on a worker thread; a failing app makes a 500."""
        environ = self._environ(request, conn)
        try:
            if self._prepare is not None:
                await self._prepare(environ)
            return await asyncio.get_running_loop().run_in_executor(
                self._pool, _run_app, self.app, environ
            )
        except Exception as exc:
            log.error("http_app_failed", method=request.method, path=request.path, exc_info=exc)
            body = b"internal server error\n"
            return "500 Internal Server Error", [("Content-Type", "text/plain")], body

    async def _write(self, conn: _Connection, data: list[bytes]) -> bool:
        """Send; False when the client does not take the response within the write timeout."""
        size = sum(map(len, data))
        self._pending[conn] = size
        self._pending_bytes += size
        try:
            self._shed_stalled_writers()
            await asyncio.wait_for(self._send(conn, data), self.limits.write_timeout)
        except asyncio.TimeoutError:
            return False
        finally:
            self._pending_bytes -= self._pending.pop(conn, 0)
            self._idle.pop(conn, None)
        return True

    async def _send(self, conn: _Connection, data: list[bytes]) -> None:
        """Write the response in slices, draining between them.

        The head leaves with the start of the body, in one segment for a small answer; the
        rest goes in slices, because the transport keeps what
        the socket did not take in one buffer that it shifts after every send. While the
        client does not read, the connection counts as idle: a client that stops reading
        holds a body in memory, and is the first to go when room is needed.
        """
        writer = conn.writer
        head, *rest = data
        body = memoryview(rest[0]) if rest else memoryview(b"")
        writer.write(head + bytes(body[:WRITE_SLICE]))
        for start in range(WRITE_SLICE, len(body), WRITE_SLICE):
            await self._drain(conn)
            writer.write(body[start : start + WRITE_SLICE])
        await self._drain(conn)

    async def _drain(self, conn: _Connection) -> None:
        self._idle[conn] = None  # returns at once unless the client is not reading
        try:
            await conn.writer.drain()
        finally:
            self._idle.pop(conn, None)

    def _shed_stalled_writers(self) -> None:
        """Keep the bodies held for clients that do not read them under MAX_PENDING_BYTES:
        drop such clients, the one stalled longest first."""
        while self._pending_bytes > self.limits.max_pending_bytes:
            stalled = next((c for c in self._idle if c in self._pending), None)
            if stalled is None:
                return
            self._pending_bytes -= self._pending.pop(stalled)
            self._drop(stalled)

    async def _refuse(self, conn: _Connection, status: str, reason: str) -> None:
        """Answer a request the app never sees, then close: its framing cannot be trusted."""
        body = f"{reason}\n".encode()
        headers = [("Content-Type", "text/plain; charset=utf-8")]
        head = _response_head(status, headers, len(body), keep_alive=False, version="HTTP/1.1")
        if await self._write(conn, [head, body]):
            await self._linger(conn)

    async def _linger(self, conn: _Connection) -> None:
        """Half-close, then wait briefly for the client to close too.

        Closing with unread request bytes in the socket would send a reset, and a reset can
        destroy the response before the client reads it.
        """
        self._idle.setdefault(conn, None)
        if conn.writer.can_write_eof():
            conn.writer.write_eof()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(_discard(conn.reader), LINGER_TIMEOUT)
        await self._close(conn)

    async def _close(self, conn: _Connection) -> None:
        """Close once what is buffered has been sent, or after LINGER_TIMEOUT."""
        self._idle.setdefault(conn, None)  # evictable meanwhile
        conn.writer.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(conn.writer.wait_closed(), LINGER_TIMEOUT)
