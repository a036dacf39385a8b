"""LlamaCloud HTTP client: auth, pagination, retries as the official SDK does them.

The server is not trusted: a repeated page token, a listing longer than ``max_pages``, a
body that is not JSON or a page of the wrong shape fails the poll with a short reason word.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import random
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Generator, Iterator
from typing import Any, NamedTuple
from urllib.parse import urlencode, urlsplit

import httpx
import structlog

from . import __version__
from .config import DEFAULT_MAX_RESPONSE_BYTES, ProjectConfig
from .reading import is_text
from .secret import Secret, redact

log = structlog.get_logger("exporter.client")

try:
    import orjson

    _loads: Callable[[bytes], Any] = orjson.loads
    _DECODE_ERRORS: tuple[type[Exception], ...] = (orjson.JSONDecodeError, ValueError)
except ImportError:  # pragma: no cover - orjson is a dependency; stdlib json still works
    _loads = json.loads
    _DECODE_ERRORS = (ValueError,)

USER_AGENT = f"llamacloud-exporter/{__version__}"
CHAT_PATH = "/api/v1/chat"
PROJECTS_PATH = "/api/v2/projects"
# Connections to the API when the caller does not size the pool; the daemon passes what its
# poller can use at once (``cli.api_connections``).
DEFAULT_MAX_CONNECTIONS = 4

INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
MAX_RETRY_AFTER = 60.0
RETRY_STATUSES = frozenset({408, 409, 429})


# A page body's identity: its length and hash. Equal keys are taken for equal bodies (a
# 64-bit hash and the length must both collide to mistake one page for another).
PageKey = tuple[int, int]


class Page(NamedTuple):
    """One page of a listing: its items (None when ``reuse`` took the body unparsed)."""

    items: list[Any] | None
    key: PageKey
    token: str | None  # the next page's token, None on the last page
    stop: bool  # ``reuse`` said the listing should stop here


class PollError(Exception):
    """A failed listing. ``reason`` is a fixed word, safe to use as a metric label."""

    def __init__(self, reason: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status
        self.pages = 0  # pages fetched before the failure
        self.incremental = False  # the failed listing was incremental


def retry_after_seconds(headers: httpx.Headers, now: float | None = None) -> float | None:
    """``retry-after-ms``, or ``Retry-After`` in seconds or as an HTTP date."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return float(millis) / 1000.0
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return when.timestamp() - (time.time() if now is None else now)


def backoff_seconds(
    retries_done: int, headers: httpx.Headers | None, rand: Callable[[], float]
) -> float:
    """Obey a ``Retry-After`` up to 60 s; else ``min(0.5 * 2**n, 8)`` less up to 25 % jitter."""
    if headers is not None:
        wait = retry_after_seconds(headers)
        if wait is not None and 0 < wait <= MAX_RETRY_AFTER:
            return wait
    delay = min(INITIAL_RETRY_DELAY * 2.0**retries_done, MAX_RETRY_DELAY)
    return max(delay * (1 - 0.25 * rand()), 0.0)


def _should_retry(status: int, headers: httpx.Headers) -> bool:
    forced = headers.get("x-should-retry")
    if forced == "true":
        return True
    if forced == "false":
        return False
    return status in RETRY_STATUSES or status >= 500


def read_body(response: httpx.Response, limit: int, *, strict: bool) -> bytes:
    """The body, decompressed, as it streams in, never more than ``limit`` bytes of it.

    A gzip page of 1 MB can unpack to 1 GB: decompression is bounded chunk by chunk, so
    memory never follows the server. ``strict``: past the limit the poll fails (``too_large``);
    otherwise (an error answer, read only for its detail) the body is cut there.
    """
    if response.is_stream_consumed:  # built in memory (httpx.MockTransport): decoded already
        content = response.content
        if strict and len(content) > limit:
            raise _too_large(limit)
        return content[: limit + 1]
    encoding = response.headers.get("content-encoding", "").strip().lower()
    decoder: Any = None
    if encoding in ("gzip", "x-gzip", "deflate"):
        decoder = zlib.decompressobj(32 + zlib.MAX_WBITS)  # a gzip or zlib header, either
    elif encoding not in ("", "identity"):
        if not strict:
            return b""  # an error answer's detail is a nicety: its status is what counts
        raise PollError("invalid_response", "the response uses a compression it was not offered")
    declared = response.headers.get("content-length", "")
    if strict and decoder is None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    try:
        for raw in response.iter_raw():
            data = raw if decoder is None else decoder.decompress(raw, limit + 1 - size)
            size += len(data)
            chunks.append(data)
            if size > limit:
                if strict:
                    raise _too_large(limit)
                break
        if decoder is not None and size <= limit:
            tail = decoder.flush()
            size += len(tail)
            chunks.append(tail)
            if strict and size > limit:
                raise _too_large(limit)
    except zlib.error:
        if not strict:
            return b""
        raise PollError("invalid_response", "the response is not valid gzip") from None
    return b"".join(chunks)[: limit + 1]


def _too_large(limit: int) -> PollError:
    return PollError("too_large", f"the response is larger than max_response_bytes={limit}")


def _failure_reason(status: int) -> str:
    if status in (401, 403):
        return "auth"
    if status == 404:
        return "not_found"
    if status == 429:
        return "rate_limited"
    if status >= 500:
        return "server_error"
    return "client_error"


DETAIL_CHARS = 200  # what a log line or an error message shows of a server's detail
MAX_ERROR_BODY = 64 * 1024  # what is read of an error answer to find its detail
MAX_PAGE_TOKEN = 8192  # a longer page token is not an offset or a cursor but an attack
# The statuses the API documents or the retry rules name keep their own value of the
# ``code`` label; any other is counted by its class, so a server cannot grow the label.
_CODE_LABELS = {
    code: str(code)
    for code in (200, 400, 401, 403, 404, 408, 409, 413, 422, 429, 500, 502, 503, 504)
}


def code_label(status: int) -> str:
    """The ``code`` label of ``llamacloud_api_requests_total``: one of a fixed set."""
    label = _CODE_LABELS.get(status)
    if label is not None:
        return label
    return f"{status // 100}xx" if 100 <= status <= 599 else "other"


def _detail(body: bytes, reason_phrase: str) -> str:
    """The server's ``detail``, one line, every secret blanked, then cut short.

    Blanking comes first: cutting first could leave the start of an echoed key in the text,
    too short to be recognised as one. Anything that cannot be read becomes a fixed phrase.
    """
    detail: Any = None
    try:
        parsed = _loads(body)
        detail = parsed.get("detail") if isinstance(parsed, dict) else None
    except Exception:
        detail = None
    if detail is None:
        text = reason_phrase
    elif isinstance(detail, str):
        text = detail
    else:
        try:
            text = json.dumps(detail)
        except Exception:  # nested too deep to show (RecursionError)
            text = "(a detail too deeply nested to show)"
    return redact(" ".join(text.split()))[:DETAIL_CHARS]


def parse_body(body: bytes) -> tuple[Any, bool]:
    """The JSON of a page, and whether it took the standard library's parser.

    orjson rejects what the standard library accepts: an unpaired surrogate in a string, an
    integer too large for a float, NaN. Those are bad *items*, to be skipped and counted, not
    a bad page; the slower parser reads such a page and the items are then checked.
    """
    try:
        return _loads(body), False
    except _DECODE_ERRORS:
        pass
    try:
        return json.loads(body), True
    except (ValueError, RecursionError):
        raise PollError("invalid_response", "response body is not JSON") from None


def _host(url: str) -> str:
    """host:port of a URL, for messages (the query, with the project id, is left out)."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError):
        return "the API"
    return f"{parsed.host}:{parsed.port}" if parsed.port else parsed.host


def _cause(failure: BaseException | None) -> str:
    """What went wrong with a connection, in the words a user can act on."""
    seen: set[int] = set()
    error: BaseException | None = failure
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, socket.gaierror):
            return "name resolution failed (check base_url and DNS)"
        if isinstance(error, ConnectionRefusedError):
            return "connection refused (check base_url and that the API is reachable)"
        if isinstance(error, ssl.SSLCertVerificationError):
            return f"TLS certificate not trusted ({error.verify_message})"
        if isinstance(error, ssl.SSLError):
            return f"TLS handshake failed ({error.reason or type(error).__name__})"
        if isinstance(error, (ConnectionResetError, BrokenPipeError)):
            return "connection reset by the server"
        if isinstance(error, httpx.TimeoutException):
            return "timed out"
        error = error.__cause__ or error.__context__
    text = str(failure or "").lower()
    if "name or service not known" in text or "nodename nor servname" in text:
        return "name resolution failed (check base_url and DNS)"
    if "connection refused" in text:
        return "connection refused (check base_url and that the API is reachable)"
    if "certificate" in text:
        return "TLS certificate not trusted"
    return f"connection failed ({type(failure).__name__ if failure else 'no answer'})"


def _checked_page(raw: bytes, page: int) -> tuple[list[Any], str | None]:
    """A page body's items and next page token, or PollError for a body of the wrong shape."""
    body, lenient = parse_body(raw)
    if not isinstance(body, dict):
        raise PollError("invalid_response", f"page {page} is not a JSON object")
    items = body.get("items")
    if not isinstance(items, list):
        raise PollError("invalid_response", f"page {page} has no items list")
    token = body.get("next_page_token")
    if token is not None and not isinstance(token, str):
        raise PollError("invalid_response", f"page {page} has a non-string page token")
    if token and (len(token) > MAX_PAGE_TOKEN or not is_text(token)):
        raise PollError(
            "invalid_response",
            f"page {page} has a page token longer than {MAX_PAGE_TOKEN} characters "
            "or not valid text",
        )
    return (_clean_items(items) if lenient else items), token or None


def _clean_items(items: list[Any]) -> list[Any]:
    """Items a page parsed by the standard library may hold that nothing downstream can
    store (a session id with an unpaired surrogate) become ``None``: skipped, counted."""
    return [
        None
        if type(item) is dict
        and isinstance(item.get("session_id"), str)
        and not is_text(item["session_id"])
        else item
        for item in items
    ]


class _BearerAuth(httpx.Auth):
    """Adds the key to each request: the only place it is unwrapped, so no frame of the
    listing holds it as text."""

    def __init__(self, key: Secret) -> None:
        self._key = key

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = "Bearer " + self._key.get()
        yield request


class _Connection:
    """The one connection of a pooled client, as httpcore's trace reports it, so the
    watchdog can cut it when a request outlives its deadline.

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
        if not hasattr(stream, "get_extra_info"):
            return
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
        sock = stream.get_extra_info("socket")
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
        self._active: set[_Connection] = set()
        self._wake_at: float | None = None  # when the thread wakes next; None: idle
        self._thread: threading.Thread | None = None
        self._closed = False

    def arm(self, seconds: float, connection: _Connection) -> _Deadline:
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

    def disarm(self, connection: _Connection) -> None:
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


class _Unfinished(Exception):
    """An answer whose status came (and was counted) but whose body did not."""

    def __init__(self, cause: httpx.HTTPError) -> None:
        super().__init__(type(cause).__name__)
        self.cause = cause


class RateLimiter:
    """Spaces requests at most ``rate`` per second across every project (a token bucket of
    one), so a large config stays inside the API's limits instead of learning them from 429s."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = 1.0 / rate
        self._clock = clock
        self._lock = threading.Lock()
        self._next = 0.0

    def delay(self) -> float:
        """Reserve the next slot; returns how long to wait for it."""
        with self._lock:
            now = self._clock()
            slot = max(self._next, now)
            self._next = slot + self._interval
            return slot - now


class Stopped(Exception):
    """The exporter is shutting down; the listing was abandoned."""


_Lent = tuple[httpx.Client, _Connection]


class _Pool:
    """At most ``size`` clients of one connection each, every one lent to one request at a
    time, shared by every project whatever its key (the key goes with each request).

    Sockets to the API are then bounded by what the poller can use at once, not by the number
    of projects; and since a client has one connection, the watchdog always knows which
    socket a request is on, a kept-alive one included. A request takes an idle client that
    last spoke to its origin (scheme, host and port) if there is one, so connections are
    reused; else a new one while there are fewer than ``size``; else an idle client of
    another origin is closed and replaced; else it waits for one to come back.
    """

    def __init__(self, size: int, make: Callable[[], httpx.Client]) -> None:
        if size < 1:
            raise ValueError("the pool needs at least one connection")
        self._size = size
        self._make = make
        self._cond = threading.Condition()
        self._idle: dict[str, list[_Lent]] = {}  # by origin, the one returned last at the end
        self._every: set[_Lent] = set()
        self._stopped = False

    @contextlib.contextmanager
    def lend(self, origin: str) -> Iterator[_Lent]:
        """A client for one request to ``origin``; Stopped once the pool is stopped."""
        lent = self._take(origin)
        try:
            yield lent
        finally:
            self._give(origin, lent)

    def _take(self, origin: str) -> _Lent:
        with self._cond:
            while True:
                if self._stopped:
                    raise Stopped()
                idle = self._idle.get(origin)
                if idle:
                    return idle.pop()
                if len(self._every) < self._size:
                    replaced = None
                    break
                replaced = next(
                    (entries.pop(0) for entries in self._idle.values() if entries), None
                )
                if replaced is not None:
                    self._every.discard(replaced)
                    break
                self._cond.wait()
            lent = (self._make(), _Connection())
            self._every.add(lent)
        if replaced is not None:
            replaced[0].close()
        return lent

    def _give(self, origin: str, lent: _Lent) -> None:
        with self._cond:
            if lent not in self._every:  # the pool was closed, and the client with it
                return
            if len(self._every) <= self._size:
                self._idle.setdefault(origin, []).append(lent)
                self._cond.notify()
                return
            self._every.discard(lent)  # the pool shrank
        lent[0].close()

    @property
    def size(self) -> int:
        return self._size

    def resize(self, size: int) -> None:
        """Hold at most ``size`` clients from now on: idle ones beyond it close now, lent
        ones as they come back; requests waiting for a client may take a new one."""
        surplus: list[_Lent] = []
        with self._cond:
            self._size = max(1, size)
            for entries in self._idle.values():
                while entries and len(self._every) > self._size:
                    surplus.append(entries.pop(0))
                    self._every.discard(surplus[-1])
            self._cond.notify_all()
        for client, _ in surplus:
            client.close()

    def stop(self) -> None:
        """Requests waiting for a client give up (Stopped)."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def close(self) -> None:
        """Stop, and close every client: idle ones now, lent ones (whose request this cuts
        short) too."""
        with self._cond:
            self._stopped = True
            every, self._every, self._idle = list(self._every), set(), {}
            self._cond.notify_all()
        for client, _ in every:
            client.close()


def _origin(url: str) -> str:
    """scheme://host:port of a URL: which pooled connections can serve it."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


class ApiClient:
    """Lists chat sessions page by page, blocking: the poller runs each listing in a thread.

    A synchronous client costs a third less CPU per page than httpx's asyncio one, and the
    page loop is where the exporter spends its time. Every project shares one pool of at most
    ``max_connections`` connections (sharing one TLS context), sized by the caller to the
    requests it can have under way at once: a project's pages are fetched one after another,
    so a poll needs one connection at a time, however many projects and keys there are.

    Every request is bounded: ``timeout`` seconds in all, from connect to the last byte
    (:class:`Watchdog`), and ``max_bytes`` of body after decompression, read as it streams.
    """

    def __init__(
        self,
        *,
        timeout: float = 30.0,
        max_retries: int = 5,
        on_request: Callable[[str], None] | None = None,
        transport: httpx.BaseTransport | None = None,
        rand: Callable[[], float] = random.random,
        wait: Callable[[float], bool] | None = None,
        max_requests_per_second: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        """``wait(seconds)`` sleeps (between retries, or for the rate limit) and returns True
        when stopped; ``max_requests_per_second`` 0 means no limit."""
        self._timeout = timeout
        self._transport = transport
        self._max_retries = max_retries
        self._on_request = on_request or (lambda code: None)
        self._rand = rand
        self._stop = threading.Event()
        self._tls = None if transport is not None else httpx.create_ssl_context()
        self._pool = _Pool(max_connections, self._new_client)
        self._wait = wait or self._stop.wait
        self._watchdog = Watchdog()
        self._limiter = (
            RateLimiter(max_requests_per_second, clock) if max_requests_per_second > 0 else None
        )

    @property
    def max_connections(self) -> int:
        """The most connections to the API this client holds open at once."""
        return self._pool.size

    def resize(self, max_connections: int) -> None:
        """A new bound on connections (a reload changed ``max_concurrency``)."""
        self._pool.resize(max_connections)

    def _new_client(self) -> httpx.Client:
        return httpx.Client(
            timeout=self._timeout,
            headers={
                "User-Agent": USER_AGENT,
                "Accept": "application/json",
                # Only what the body reader can decompress under its byte bound.
                "Accept-Encoding": "gzip",
            },
            transport=self._transport,
            verify=self._tls or True,
            follow_redirects=False,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        )

    def stop(self) -> None:
        """Make listings under way give up at their next page or backoff."""
        self._stop.set()
        self._pool.stop()

    def close(self) -> None:
        self._stop.set()
        self._pool.close()
        self._watchdog.close()

    def _sleep(self, seconds: float) -> None:
        if self._wait(seconds):
            raise Stopped()

    def pages(
        self,
        project: ProjectConfig,
        max_pages: int,
        max_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        reuse: Callable[[PageKey], tuple[str | None, bool, bool] | None] | None = None,
    ) -> Generator[Page, None, None]:
        """Yield each page until the listing ends.

        ``reuse`` is asked first with each body's :data:`PageKey`: when it takes a body it
        has seen before, it answers (the page token the body had, whether it had no items,
        whether to stop there); the body is not parsed and the page comes with ``items``
        None. A page that is parsed carries its key and token, so
        the caller can remember it.
        """
        params: dict[str, str | int] = {"project_id": project.id, "page_size": project.page_size}
        if project.organization_id:
            params["organization_id"] = project.organization_id
        url = f"{project.base_url}{CHAT_PATH}?{urlencode(params)}"
        return self._listing(url, project.api_key, max_pages, max_bytes, reuse)

    def projects(
        self,
        base_url: str,
        api_key: Secret,
        organization_id: str,
        max_pages: int,
        max_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        page_size: int = 100,
    ) -> Generator[list[Any], None, None]:
        """Yield the items of each page of ``GET /api/v2/projects`` (discovery), with the same
        retries and bounds as a chat listing."""
        params: dict[str, str | int] = {"page_size": page_size}
        if organization_id:
            params["organization_id"] = organization_id
        url = f"{base_url}{PROJECTS_PATH}?{urlencode(params)}"
        for page in self._listing(url, api_key, max_pages, max_bytes, None):
            yield page.items or []

    def _listing(
        self,
        url: str,
        api_key: Secret,
        max_pages: int,
        max_bytes: int,
        reuse: Callable[[PageKey], tuple[str | None, bool, bool] | None] | None,
    ) -> Generator[Page, None, None]:
        """The pages of a cursor-paged list at ``url`` (which holds its query)."""
        origin = _origin(url)
        auth = _BearerAuth(api_key)
        # One URL string per page: httpx merging a params dict into a URL parses it twice.
        page_url = url
        used: set[str] = set()
        page = 0
        while True:
            if self._stop.is_set():
                raise Stopped()
            raw = self._get(origin, page_url, auth, max_bytes)
            page += 1
            key = (len(raw), hash(raw))
            reused = reuse(key) if reuse is not None else None
            if reused is not None:
                del raw
                token, empty, stop = reused
                yield Page(None, key, token, stop)
                if stop:
                    return
            else:
                items, token = _checked_page(raw, page)
                del raw  # only the parsed items stay in memory
                empty = not items
                yield Page(items, key, token, False)
            if empty or not token:
                return
            if token in used:
                raise PollError("pagination_loop", f"page {page} repeats an earlier page token")
            if page >= max_pages:
                raise PollError(
                    "too_many_pages", f"listing is longer than max_pages={max_pages} pages"
                )
            used.add(token)
            page_url = f"{url}&{urlencode({'page_token': token})}"

    def _get(self, origin: str, url: str, auth: httpx.Auth, max_bytes: int) -> bytes:
        """One page's body, retried as the SDK does; each attempt borrows a pooled
        connection, so a request backing off holds none."""
        retries_done = 0
        while True:
            if self._limiter is not None:
                delay = self._limiter.delay()
                if delay > 0:
                    self._sleep(delay)
            failure: httpx.HTTPError | None = None
            with self._pool.lend(origin) as (http, connection):
                deadline = self._watchdog.arm(self._timeout, connection)
                try:
                    status, reason_phrase, body, retry_headers = self._request(
                        http, connection, url, auth, max_bytes
                    )
                except _Unfinished as exc:
                    failure = exc.cause
                except httpx.HTTPError as exc:
                    failure = exc
                    self._on_request("error")
                finally:
                    self._watchdog.disarm(connection)
            if failure is not None or deadline.expired:
                # A cut can also look like the end of a body sent without Content-Length.
                timed_out = deadline.expired or isinstance(failure, httpx.TimeoutException)
                reason = "timeout" if timed_out else "connection"
                cause = "timed out" if timed_out else _cause(failure)
                where = _host(url)
                if retries_done >= self._max_retries:
                    raise PollError(
                        reason, f"{where}: {cause} (gave up after {retries_done} retries)"
                    )
                log.debug("request_retry", host=where, cause=cause, retry=retries_done + 1)
                self._sleep(backoff_seconds(retries_done, None, self._rand))
                retries_done += 1
                continue
            if status == 200:
                return body
            if (
                status < 400
                or retries_done >= self._max_retries
                or not _should_retry(status, retry_headers)
            ):
                message = f"HTTP {status}: {_detail(body, reason_phrase)}"
                if retries_done:
                    message += f" (after {retries_done} retries)"
                reason = "client_error" if status < 400 else _failure_reason(status)
                raise PollError(reason, message, status)
            self._sleep(backoff_seconds(retries_done, retry_headers, self._rand))
            retries_done += 1

    def _request(
        self,
        http: httpx.Client,
        connection: _Connection,
        url: str,
        auth: httpx.Auth,
        max_bytes: int,
    ) -> tuple[int, str, bytes, httpx.Headers]:
        """(status, reason phrase, body, headers) of one GET, the body read under its bound."""
        with http.stream("GET", url, auth=auth, extensions={"trace": connection.trace}) as response:
            status = response.status_code
            self._on_request(code_label(status))
            limit = max_bytes if status == 200 else MAX_ERROR_BODY
            try:
                body = read_body(response, limit, strict=status == 200)
            except httpx.HTTPError as exc:
                raise _Unfinished(exc) from None
            return status, response.reason_phrase, body, response.headers
