"""A bounded HTTP/1.1 server for one app: its connections, threads, deadlines and bytes held.

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

Requests are read, and response heads written, by :mod:`.protocol`; the app is a plain
callable from its :class:`~.protocol.Request` to a :class:`~.protocol.Response`, whose body
the exporter builds in memory, so every response carries a Content-Length.
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
import resource
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import structlog

from .protocol import BODILESS, App, Reject, Request, RequestReader, Response, response_head

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

Prepare = Callable[[Request], Awaitable[Request]]

_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


@dataclass(frozen=True)
class Limits:
    """What clients may hold of the server; the defaults are this module's constants."""

    max_connections: int = MAX_CONNECTIONS
    request_timeout: float = REQUEST_TIMEOUT
    idle_timeout: float = IDLE_TIMEOUT
    write_timeout: float = WRITE_TIMEOUT
    max_body_bytes: int = MAX_BODY_BYTES
    max_pending_bytes: int = MAX_PENDING_BYTES


def connection_cap(wanted: int) -> int:
    """``wanted``, but at most half the soft open-file limit: the rest stays for the poller,
    the state file and the logs, so the server alone never runs the process out of files."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return max(1, wanted)
    return max(1, min(wanted, soft // 2))


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

    reader: asyncio.StreamReader = field(repr=False)
    writer: asyncio.StreamWriter = field(repr=False)
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    context: ssl.SSLContext | None = field(default=None, repr=False)  # None: plain HTTP

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
        app: App,
        limits: Limits | None = None,
        tls: Callable[[], ssl.SSLContext | None] = lambda: None,
        accept_peer: Callable[[Any], bool] = lambda cert: True,
        prepare: Prepare | None = None,
    ) -> None:
        """``tls`` gives the TLS context for each new connection (None: plain HTTP), so a
        renewed certificate applies to the next connection; ``accept_peer`` is asked with
        the client certificate (``getpeercert()``) after a TLS handshake; ``prepare`` is
        awaited on the event loop with each request before the app gets it, and gives the
        request the app gets, for waits that must not hold a worker thread."""
        self.app = app
        self._tls = tls
        self._accept_peer = accept_peer
        self._prepare = prepare
        self.limits = limits or Limits()
        self.max_connections = connection_cap(self.limits.max_connections)
        self._listener = _listen(host, port)
        self._port = int(self._listener.getsockname()[1])
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="http-worker")
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
                sock, _ = await loop.sock_accept(self._listener)
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
                task = loop.create_task(self._handshake(sock, context))
                self._handshakes[task] = sock
                continue
            try:
                conn = await self._connection(sock)
            except OSError:
                sock.close()  # reset before it could be set up
                continue
            self._start(conn)

    def _start(self, conn: _Connection, task: asyncio.Task[None] | None = None) -> None:
        self._open.add(conn)
        self._idle[conn] = None
        conn.task = task or asyncio.get_running_loop().create_task(self._serve(conn))

    async def _handshake(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        """A TLS connection's own task: the handshake, the peer check, then its requests."""
        task = asyncio.current_task()
        assert task is not None
        try:
            conn = await self._connection(sock, context)
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
        self, sock: socket.socket, context: ssl.SSLContext | None = None
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
        # What a client may have sent ahead of the server is held up to twice this: then the
        # socket is not read until the server reads on.
        reader = asyncio.StreamReader(limit=MAX_HEAD_BYTES)
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
        return _Connection(reader, writer, context=context)

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
        requests = RequestReader(conn.reader, MAX_HEAD_BYTES, limits.max_body_bytes)
        wait = limits.request_timeout  # whoever connects has a request to send
        while True:
            try:
                if not await asyncio.wait_for(requests.arrived(), wait):
                    await self._close(conn)  # the client is done: let the last answer out
                    return
            except asyncio.TimeoutError:
                return
            try:
                received = await asyncio.wait_for(
                    requests.read(conn.writer.write), limits.request_timeout
                )
            except asyncio.TimeoutError:
                await self._refuse(conn, "408 Request Timeout", "too slow")
                return
            except Reject as reject:
                await self._refuse(conn, reject.status, str(reject))
                return
            self._idle.pop(conn, None)  # a whole request: not evictable until it is answered
            response = await self._call(received.request)
            # A reload that changed TLS (a renewed certificate, TLS turned on or off) ends
            # connections set up under the old one after this answer: the next is set up anew.
            keep_alive = received.keep_alive and self._tls() is conn.context
            status, body = response.status, response.body
            head = response_head(status, response.headers, len(body), keep_alive, received.http10)
            send_body = received.request.method != "HEAD" and status[:3] not in BODILESS
            if not await self._write(conn, [head, body] if send_body else [head]):
                return
            if not keep_alive:
                await self._linger(conn)
                return
            self._idle[conn] = None
            wait = limits.idle_timeout

    async def _call(self, request: Request) -> Response:
        """The app's response, computed on a worker thread; a failing app makes a 500."""
        try:
            if self._prepare is not None:
                request = await self._prepare(request)
            return await asyncio.get_running_loop().run_in_executor(self._pool, self.app, request)
        except Exception as exc:
            log.error("http_app_failed", method=request.method, path=request.path, exc_info=exc)
            body = b"internal server error\n"
            return Response("500 Internal Server Error", (("Content-Type", "text/plain"),), body)

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
        headers = (("Content-Type", "text/plain; charset=utf-8"),)
        head = response_head(status, headers, len(body), keep_alive=False, http10=False)
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
