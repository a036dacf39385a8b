"""HTTP/1.1 on the wire: requests read with h11, response heads written, and the plain
request and response that the server and the app exchange.

h11 frames each request (request line, header fields, Content-Length), where request
smuggling hides: it refuses conflicting Content-Length fields, a stray CR or NUL, a space
before a colon, a request line it cannot read, and a head larger than the limit. Kept on top
of it, as this server always had them: a request body comes only with Content-Length (any
Transfer-Encoding is 411, before a chunk is read), a folded header line is a 400 (h11 would
unfold it), empty lines before a request line are skipped (h11 would refuse them), and
HTTP/1.0 clients may keep their connection alive (h11 would close it). Every refusal closes
the connection: whatever was sent after it is never read as a request.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from urllib.parse import unquote, urlsplit

import h11

from .auth import AuthResult

READ_SIZE = 65536  # bytes read from a connection at a time
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

Headers = tuple[tuple[str, str], ...]

_BLANK_LINES = re.compile(rb"(?:\r?\n)+")
_FOLDED = re.compile(rb"\n[ \t]")
_SET_BY_SERVER = frozenset(
    {"connection", "content-length", "date", "keep-alive", "transfer-encoding"}
)
BODILESS = frozenset({"204", "304"})


@dataclass(frozen=True)
class Request:
    """What the app is asked."""

    method: str
    path: str  # percent-decoded (as Latin-1), as wsgiref's PATH_INFO
    query: str  # still percent-encoded
    headers: Headers  # names in lower case, in the order they came
    # The basic-auth answer, found on the event loop before a worker takes the request;
    # None: nothing checked it.
    auth: AuthResult | None = None

    def header(self, name: str) -> str:
        """Every field of that (lower-case) name, joined by commas: "" when there is none."""
        return ",".join(value for key, value in self.headers if key == name)


@dataclass(frozen=True)
class Response:
    """What the app answers; the server adds Content-Length, Date and Connection."""

    status: str  # "200 OK"
    headers: Headers = ()
    body: bytes = b""

    def __post_init__(self) -> None:
        # Checked in the app's thread, where it becomes a 500: a line break would split the
        # response head in two, a character beyond Latin-1 would fail in the event loop.
        for name, value in self.headers:
            if "\r" in name + value or "\n" in name + value:
                raise ValueError(f"line break in response header {name!r}")
            (name + value).encode("latin-1")


App = Callable[[Request], Response]


class Reject(Exception):
    """A request the server answers itself before closing the connection."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class Received:
    """A whole request, with what the server needs to answer it."""

    request: Request
    http10: bool  # an HTTP/1.0 client: it asks to keep the connection, or it is closed
    keep_alive: bool


# h11's status hints: 431 for a head past the limit, 501 for a Transfer-Encoding it does not
# take, which this server refuses as it refuses chunked bodies.
_REFUSALS = {
    431: ("431 Request Header Fields Too Large", "request head too large"),
    501: ("411 Length Required", "send a request body with Content-Length"),
}
_MALFORMED = ("400 Bad Request", "malformed request")


class RequestReader:
    """A connection's requests, one at a time.

    Each request is read by a fresh h11 connection fed what came after the previous one: h11
    alone frames every request, while whether the connection stays open is this server's
    choice (h11 would end every HTTP/1.0 one).
    """

    def __init__(
        self, stream: asyncio.StreamReader, max_head_bytes: int, max_body_bytes: int
    ) -> None:
        self._stream = stream
        self._max_head_bytes = max_head_bytes
        self._max_body_bytes = max_body_bytes
        self._rest = b""  # read past the end of the last request

    async def arrived(self) -> bool:
        """Wait for the first byte of the next request; False when the client closed."""
        if not self._rest:
            self._rest = await self._stream.read(READ_SIZE)
        return bool(self._rest)

    async def _more(self) -> bytes:
        data = await self._stream.read(READ_SIZE)
        if not data:
            raise asyncio.IncompleteReadError(b"", None)  # the client left mid-request
        return data

    async def read(self, write: Callable[[bytes], None]) -> Received:
        """The next request, whole: Reject for one to refuse, IncompleteReadError when the
        client leaves mid-request. ``write`` sends the interim 100 Continue."""
        data, self._rest = self._rest, b""
        # Empty lines before a request line are skipped (RFC 9112, section 2.2).
        skipped = 0
        while True:
            blank = _BLANK_LINES.match(data)
            if blank is not None:
                skipped += blank.end()
                data = data[blank.end() :]
            if skipped > self._max_head_bytes:
                raise Reject(*_REFUSALS[431])
            if data and data != b"\r":
                break
            data += await self._more()
        limit = self._max_head_bytes - skipped
        parser = h11.Connection(h11.SERVER, max_incomplete_event_size=limit)
        # h11 is fed at most one byte past the limit until the head ends, so it never reads
        # a head too large (it would judge a missing Host first): it says 431 for it.
        seen = b""
        while True:
            take, data = data[: limit + 1 - len(seen)], data[limit + 1 - len(seen) :]
            seen += take
            parser.receive_data(take)
            if (event := _next_event(parser)) is not h11.NEED_DATA:
                break
            data = data or await self._more()
        assert isinstance(event, h11.Request)
        after = parser.trailing_data[0]
        received, length = self._check(event, seen[: len(seen) - len(after)], limit)
        if not length:
            self._rest = after + data
            return received
        if parser.they_are_waiting_for_100_continue:
            write(CONTINUE)
        if data:
            parser.receive_data(data)
        # No page takes a body: it is read, within its bound, and dropped.
        while not isinstance(event := _next_event(parser), h11.EndOfMessage):
            if event is h11.NEED_DATA:
                parser.receive_data(await self._more())
            else:
                assert isinstance(event, h11.Data), event
        self._rest = parser.trailing_data[0]
        return received

    def _check(self, event: h11.Request, head: bytes, limit: int) -> tuple[Received, int]:
        """What h11 lets through and this server refuses; the request, and its body's length."""
        if len(head) > limit:  # one byte over: h11 bounds only a head still arriving
            raise Reject(*_REFUSALS[431])
        if _FOLDED.search(head):
            raise Reject("400 Bad Request", "malformed header field")
        major, _, minor = event.http_version.partition(b".")
        if major != b"1":
            raise Reject(
                "505 HTTP Version Not Supported", "this server speaks HTTP/1.0 and HTTP/1.1"
            )
        headers = tuple(
            (name.decode("ascii"), value.decode("latin-1")) for name, value in event.headers
        )
        length = 0
        connection: list[str] = []
        for name, value in headers:
            if name == "transfer-encoding":
                raise Reject(*_REFUSALS[501])
            if name == "content-length":
                length = int(value)  # h11 took at most 20 digits, and the same in each field
            elif name == "connection":
                connection += (token.strip().lower() for token in value.split(","))
        if length > self._max_body_bytes:
            raise Reject(
                "413 Content Too Large",
                f"request bodies are limited to {self._max_body_bytes} bytes",
            )
        path, query = _target(event.target.decode("ascii"))
        http10 = minor == b"0"
        keep_alive = "keep-alive" in connection if http10 else "close" not in connection
        request = Request(event.method.decode("ascii"), path, query, headers)
        return Received(request, http10, keep_alive), length


def _next_event(
    parser: h11.Connection,
) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
    try:
        return parser.next_event()
    except h11.RemoteProtocolError as exc:
        raise Reject(*_REFUSALS.get(exc.error_status_hint, _MALFORMED)) from None


def _target(target: str) -> tuple[str, str]:
    """Path (percent-decoded) and query of an origin-form or absolute-form target."""
    if target.startswith("/"):
        path, _, query = target.partition("?")
    elif target.startswith(("http://", "https://")):  # absolute form, as sent to a proxy
        try:
            url = urlsplit(target)
        except ValueError:  # "http://[::1/": a host urlsplit cannot read
            raise Reject("400 Bad Request", "malformed request target") from None
        path, query = url.path or "/", url.query
    else:
        raise Reject("400 Bad Request", "malformed request target")
    return unquote(path, "iso-8859-1"), query


def response_head(
    status: str, headers: Headers, length: int, keep_alive: bool, http10: bool
) -> bytes:
    """Status line and headers; framing and connection headers are the server's alone."""
    lines = [f"HTTP/1.1 {status}"]
    lines += [f"{name}: {value}" for name, value in headers if name.lower() not in _SET_BY_SERVER]
    if status[:3] not in BODILESS:
        lines.append(f"Content-Length: {length}")
    lines.append(f"Date: {formatdate(usegmt=True)}")
    if not keep_alive:
        lines.append("Connection: close")
    elif http10:
        lines.append("Connection: keep-alive")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
