"""GETs over the standard library's ``http.client``: the connection of a pooled client when no
proxy is in the way, at less than half what httpx costs per request.

httpx builds a request, its headers and a response object through several layers (httpx,
httpcore, h11) for each page; for a small page that cost more CPU than reading the page.
Here one kept-alive ``http.client`` connection per pooled client writes the same request
bytes, and what can fail maps to the same httpx exceptions (chained to what the socket
said), so the retries, the reason words and the messages are those of the httpx path.
"""

from __future__ import annotations

import contextlib
import http.client
import select
import socket
import ssl
import threading
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

import httpx

from ..config import Secret
from .deadline import Connection

CHUNK = 64 * 1024  # what one read of a body asks the socket for


MAX_LINE = 65536  # what http.client allows a header line
MAX_FIELDS = 100  # and a response's header fields


class Fields:
    """A response's header fields, read as h11 reads them, at a fifth of what the standard
    library's ``email`` parser costs: the first value of a name by any case (``get``, as
    ``HTTPMessage``), every field in order (``items``).

    A line that is not ``name: value``, or a name with white space around it, is not HTTP:
    the answer fails (``HTTPException``), as it did under h11. A folded line (``obs-fold``)
    continues the field before it.
    """

    __slots__ = ("_fields", "_first")

    def __init__(self, fields: list[tuple[str, str]]) -> None:
        self._fields = fields
        first: dict[str, str] = {}
        for name, value in fields:
            first.setdefault(name.lower(), value)
        self._first = first

    @classmethod
    def read(cls, fp: Any) -> Fields:
        fields: list[tuple[str, str]] = []
        while True:
            line = fp.readline(MAX_LINE + 1)
            if len(line) > MAX_LINE:
                raise http.client.LineTooLong("header line")
            if line in (b"\r\n", b"\n", b""):
                return cls(fields)
            if len(fields) >= MAX_FIELDS:
                raise http.client.HTTPException(f"got more than {MAX_FIELDS} headers")
            text = line.decode("iso-8859-1").rstrip("\r\n")
            if text[:1] in (" ", "\t"):
                if not fields:
                    raise http.client.HTTPException("a folded line before any header")
                name, value = fields[-1]
                more = text.strip(" \t")
                fields[-1] = (name, f"{value} {more}" if value else more)
                continue
            name, colon, value = text.partition(":")
            if not colon or not name or name != name.strip(" \t"):
                raise http.client.HTTPException("a header line that is not name: value")
            fields.append((name, value.strip(" \t")))

    def get(self, name: str, default: Any = None, /) -> Any:
        return self._first.get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._first

    def items(self) -> list[tuple[str, str]]:
        return list(self._fields)


class _Response(http.client.HTTPResponse):
    """A response that passes over every interim (1xx) answer, as h11 does, not only 100 (a
    103 Early Hints would otherwise be taken for the answer, and the real one left unread on
    the connection), and reads its fields with :class:`Fields`.

    ``begin`` is http.client's own, but for those two."""

    def begin(self) -> None:
        if self.headers is not None:
            return
        while True:
            version, status, reason = self._read_status()
            if not 100 <= status < 200 or status == 101:
                break
            Fields.read(self.fp)  # the interim answer's fields, read and dropped
        self.code = self.status = status
        self.reason = reason.strip()
        if version in ("HTTP/1.0", "HTTP/0.9"):
            self.version = 10
        elif version.startswith("HTTP/1."):
            self.version = 11
        else:
            raise http.client.UnknownProtocol(version)
        fields = Fields.read(self.fp)
        self.headers = self.msg = fields
        encoding = fields.get("transfer-encoding")
        self.chunked = bool(encoding) and encoding.lower() == "chunked"
        self.chunk_left = None
        self.will_close = self._check_close()
        self.length = None
        length = fields.get("content-length")
        if length and not self.chunked:
            try:
                self.length = int(length)
            except ValueError:
                self.length = None
            else:
                if self.length < 0:  # a negative length is none
                    self.length = None
        if status in (204, 304) or 100 <= status < 200 or self._method == "HEAD":
            self.length = 0
        if not self.will_close and not self.chunked and self.length is None:
            self.will_close = True  # the body ends when the connection does


class _Plain(http.client.HTTPConnection):
    response_class = _Response

    def __init__(self, host: str, port: int, timeout: float, watched: Connection) -> None:
        super().__init__(host, port, timeout=timeout)
        self.watched = watched

    def connect(self) -> None:
        super().connect()
        self.watched.attach(self.sock)  # the deadline can cut the connection from now on


class _Tls(_Plain):
    default_port = http.client.HTTPS_PORT

    def __init__(
        self, host: str, port: int, timeout: float, watched: Connection, tls: ssl.SSLContext
    ) -> None:
        super().__init__(host, port, timeout, watched)
        self._tls = tls

    def connect(self) -> None:
        super().connect()
        sock = self._tls.wrap_socket(
            self.sock, server_hostname=self.host, do_handshake_on_connect=False
        )
        self.sock = sock
        self.watched.attach(sock)  # wrapping took the plain socket over: the handshake is cut too
        sock.do_handshake()


class Answer:
    """What the body reader needs of a response (:func:`.body.read_body`), as an httpx
    ``Response`` being streamed offers it."""

    def __init__(self, response: http.client.HTTPResponse) -> None:
        self._response = response
        self.status_code = response.status
        self.reason_phrase = response.reason
        self.headers = response.headers  # case-blind ``get``, as httpx.Headers

    def iter_raw(self) -> Iterator[bytes]:
        read = self._response.read1
        try:
            while chunk := read(CHUNK):
                yield chunk
            self._response.close()  # read to its end: the connection can carry the next
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise _read_error(exc) from exc


def _read_error(exc: BaseException) -> httpx.HTTPError:
    if isinstance(exc, TimeoutError):
        return httpx.ReadTimeout(str(exc))
    if isinstance(exc, (http.client.HTTPException, ValueError)):  # RemoteDisconnected too
        return httpx.RemoteProtocolError(str(exc) or type(exc).__name__)
    return httpx.ReadError(str(exc) or type(exc).__name__)


def _readable(sock: socket.socket) -> bool:
    """Whether an idle kept-alive socket has something to read: the server closed it (or
    wrote out of turn), so it cannot carry the next request."""
    try:
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            return bool(poller.poll(0))
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


@lru_cache(maxsize=64)  # a few origins
def _endpoint(origin: str) -> tuple[str, str, int]:
    """(scheme, host as sent, port) of ``scheme://host:port``."""
    url = httpx.URL(origin)
    return (
        url.scheme,
        url.raw_host.decode("ascii"),
        url.port or (443 if url.scheme == "https" else 80),
    )


class StdlibClient:
    """One kept-alive connection to one origin, lent to one request at a time (the pool's
    ``_Pool`` does the lending); a new one when the server closed the last.

    ``headers`` are sent on every request, in order, after ``Host``; the key's
    ``Authorization`` and the cookies the API set (kept as httpx keeps them) come after.
    """

    def __init__(
        self, timeout: float, tls: ssl.SSLContext | None, headers: list[tuple[str, str]]
    ) -> None:
        self._timeout = timeout
        self._tls = tls
        self._headers = headers  # never Host: the config refuses it as a custom header
        self._cookies = httpx.Cookies()
        self._connection: _Plain | None = None
        self._origin: tuple[str, str, int] | None = None
        # The pool may close a client lent to a request in another thread (at shutdown):
        # then the socket is only shut down, and the request's thread, failing at once,
        # closes the connection itself, so http.client never finds its socket gone.
        self._lock = threading.Lock()
        self._busy = False
        self._cut = False

    def close(self) -> None:
        """Close the connection; a request on it in another thread returns at once, as a
        cut does."""
        with self._lock:
            connection = self._connection
            if connection is None:
                return
            if connection.sock is not None:
                with contextlib.suppress(OSError):
                    connection.sock.shutdown(socket.SHUT_RDWR)
            if self._busy:
                self._cut = True
                return
            self._connection = None
        connection.close()

    def _connected(self, origin: tuple[str, str, int], watched: Connection) -> _Plain:
        scheme, host, port = origin
        connection = self._connection
        if connection is not None and (
            origin != self._origin
            or connection.watched is not watched
            or (connection.sock is not None and _readable(connection.sock))
        ):
            connection.close()
            connection = None
        if connection is None:
            if scheme == "https":
                tls = self._tls or ssl.create_default_context()
                connection = _Tls(host, port, self._timeout, watched, tls)
            else:
                connection = _Plain(host, port, self._timeout, watched)
            self._connection, self._origin = connection, origin
        return connection

    @contextlib.contextmanager
    def stream(self, url: str, origin: str, key: Secret, watched: Connection) -> Iterator[Answer]:
        """One GET of ``url`` (on ``origin``, its ``scheme://host:port``) with ``key``, its
        response streaming; the connection is kept only when the body was read to its end
        and nothing went wrong."""
        target = url[len(origin) :]
        if not (target.isascii() and url[: len(origin)].lower() == origin):
            target = httpx.URL(url).raw_path.decode("ascii")  # as httpx would send it
        with self._lock:
            self._busy = True
        keep = False
        try:
            connection = self._connected(_endpoint(origin), watched)
            try:
                connection.putrequest("GET", target, skip_accept_encoding=True)
                for name, value in self._headers:
                    connection.putheader(name, value)
                connection.putheader("Authorization", "Bearer " + key.get())
                if self._cookies.jar:
                    self._send_cookies(connection, url)
                connection.endheaders()
                response = connection.getresponse()
            except (OSError, http.client.HTTPException, ValueError) as exc:
                raise _send_error(exc, connection) from exc
            if "set-cookie" in response.headers:
                self._keep_cookies(url, response)
            yield Answer(response)
            keep = (
                response.isclosed()
                and not 100 <= response.status < 200
                and not (watched.request is not None and watched.request.expired)
            )
        finally:
            with self._lock:
                self._busy = False
                keep = keep and not self._cut
                self._cut = False
            if not keep:
                self.close()

    def _send_cookies(self, connection: _Plain, url: str) -> None:
        request = httpx.Request("GET", url)
        self._cookies.set_cookie_header(request)
        cookie = request.headers.get("cookie")
        if cookie:
            connection.putheader("Cookie", cookie)

    def _keep_cookies(self, url: str, response: http.client.HTTPResponse) -> None:
        self._cookies.extract_cookies(
            httpx.Response(
                response.status,
                headers=list(response.headers.items()),
                request=httpx.Request("GET", url),
            )
        )


def _send_error(exc: BaseException, connection: _Plain) -> httpx.HTTPError:
    """httpx's exception for a request that got no answer: ``ConnectError`` and
    ``ConnectTimeout`` before a connection stood, as httpx's own transport says."""
    if connection.sock is None or isinstance(exc, (socket.gaierror, ssl.SSLError)):
        if isinstance(exc, TimeoutError):
            return httpx.ConnectTimeout(str(exc))
        return httpx.ConnectError(str(exc) or type(exc).__name__)
    return _read_error(exc)
