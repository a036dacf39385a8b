"""LlamaCloud HTTP client: auth, pagination, retries as the official SDK does them.

The server is not trusted: a repeated page token, a listing longer than ``max_pages``, a
body that is not JSON or a page of the wrong shape fails the poll with a short reason word.
"""

from __future__ import annotations

import contextlib
import email.utils
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from functools import lru_cache
from typing import Any
from urllib.parse import quote, urlencode, urlsplit
from urllib.request import getproxies

import httpx
import structlog

from .. import __version__
from ..config import DEFAULT_MAX_RESPONSE_BYTES, ProjectConfig, Secret
from .body import (
    MAX_ERROR_BODY,
    Headers,
    Page,
    PageKey,
    PollError,
    checked_page,
    code_label,
    error_detail,
    failure_reason,
    parse_body,
    read_body,
)
from .deadline import Connection, Watchdog
from .wire import StdlibClient

log = structlog.get_logger("exporter.client")


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


def retry_after_seconds(headers: Headers, now: float | None = None) -> float | None:
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


def backoff_seconds(retries_done: int, headers: Headers | None, rand: Callable[[], float]) -> float:
    """Obey a ``Retry-After`` up to 60 s; else ``min(0.5 * 2**n, 8)`` less up to 25 % jitter."""
    if headers is not None:
        wait = retry_after_seconds(headers)
        if wait is not None and 0 < wait <= MAX_RETRY_AFTER:
            return wait
    delay = min(INITIAL_RETRY_DELAY * 2.0**retries_done, MAX_RETRY_DELAY)
    return max(delay * (1 - 0.25 * rand()), 0.0)


def _should_retry(status: int, headers: Headers) -> bool:
    forced = headers.get("x-should-retry")
    if forced == "true":
        return True
    if forced == "false":
        return False
    return status in RETRY_STATUSES or status >= 500


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


class _BearerAuth(httpx.Auth):
    """Adds the key to each request: the only place it is unwrapped, so no frame of the
    listing holds it as text."""

    def __init__(self, key: Secret) -> None:
        self._key = key

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = "Bearer " + self._key.get()
        yield request


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


class _HttpxClient:
    """A pooled client over httpx, for a transport given (the tests' ``MockTransport``) or a
    proxy in the environment, which httpx honours as the SDK does (``NO_PROXY`` too)."""

    def __init__(self, client: httpx.Client) -> None:
        self._client = client

    def stream(
        self, url: str, origin: str, key: Secret, watched: Connection
    ) -> contextlib.AbstractContextManager[httpx.Response]:
        return self._client.stream(
            "GET", _url(url), auth=_BearerAuth(key), extensions={"trace": watched.trace}
        )

    def close(self) -> None:
        self._client.close()


def _proxied() -> bool:
    """Whether the environment names a proxy (``HTTPS_PROXY``, ``ALL_PROXY`` and the like)."""
    return any(scheme != "no" for scheme in getproxies())


_Lent = tuple[_HttpxClient | StdlibClient, Connection]


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

    def __init__(self, size: int, make: Callable[[], _HttpxClient | StdlibClient]) -> None:
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
            lent = (self._make(), Connection())
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


# A parsed URL for each of the last URLs requested: the first page of a listing and a history
# read are asked for again at every poll, and httpx parses a URL given as text one and a half
# times per request (34 µs of the 52 its request building costs here).
_url = lru_cache(maxsize=4096)(httpx.URL)


@lru_cache(maxsize=1024)  # a few base URLs, one lookup per request
def _origin(url: str) -> str:
    """scheme://host:port of a URL: which pooled connections can serve it."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


class _Cookies(httpx.Cookies):
    """A client's cookies, as httpx keeps them, but a response is read for them only when it
    sets one: httpx wraps every response and its request in urllib's types to look, which
    costs a tenth of what a page of a listing costs the exporter."""

    def extract_cookies(self, response: httpx.Response) -> None:
        if "set-cookie" in response.headers:
            super().extract_cookies(response)


class ApiClient:
    """Lists chat sessions page by page, blocking: the poller runs each listing in a thread.

    A synchronous client costs a third less CPU per page than httpx's asyncio one, and the
    page loop is where the exporter spends its time. Its connections are the standard
    library's (:class:`.wire.StdlibClient`), less than half httpx's cost per request, unless a
    transport is given or the environment names a proxy: then httpx's. Every project shares
    one pool of at most ``max_connections`` connections (sharing one TLS context), sized by
    the caller to the requests it can have under way at once: a project's pages are fetched
    one after another, so a poll needs one connection at a time, however many projects and
    keys there are.

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
        headers: Sequence[tuple[str, Secret]] = (),
    ) -> None:
        """``wait(seconds)`` sleeps (between retries, or for the rate limit) and returns True
        when stopped; ``max_requests_per_second`` 0 means no limit. ``headers`` go on every
        request (``LLAMA_CLOUD_CUSTOM_HEADERS``); the key's ``Authorization`` is set after them."""
        self._timeout = timeout
        self._headers = tuple(headers)
        self._transport = transport
        self._max_retries = max_retries
        self._on_request = on_request or (lambda code: None)
        self._rand = rand
        self._stop = threading.Event()
        self._tls = None if transport is not None else httpx.create_ssl_context()
        self._direct = transport is None and not _proxied()
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

    def _new_client(self) -> _HttpxClient | StdlibClient:
        headers = httpx.Headers({"User-Agent": USER_AGENT, "Accept": "application/json"})
        for name, value in self._headers:  # as in the SDK, they may replace the two above
            headers[name] = value.get()
        # Only what the body reader can decompress under its byte bound.
        headers["Accept-Encoding"] = "gzip"
        if self._direct:
            return StdlibClient(self._timeout, self._tls, headers.multi_items())
        client = httpx.Client(
            timeout=self._timeout,
            headers=headers,
            transport=self._transport,
            verify=self._tls or True,
            follow_redirects=False,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        )
        client._cookies = _Cookies(client.cookies.jar)  # the setter would copy it into a plain one
        return _HttpxClient(client)

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
        return self._listing(
            _origin(project.base_url), url, project.api_key, max_pages, max_bytes, reuse
        )

    def session(
        self,
        project: ProjectConfig,
        session_id: str,
        max_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> Any:
        """One session's history, ``GET /api/v1/chat/{session_id}``, parsed (its shape is the
        caller's to check): the same key, retries, rate limit, deadline and body bound as a
        page. Raises :class:`PollError` as a page does (``status`` 404: the session is gone).
        """
        if self._stop.is_set():
            raise Stopped()
        params: dict[str, str] = {"project_id": project.id}
        if project.organization_id:
            params["organization_id"] = project.organization_id
        url = f"{project.base_url}{CHAT_PATH}/{quote(session_id, safe='')}?{urlencode(params)}"
        raw = self._get(_origin(project.base_url), url, project.api_key, max_bytes)
        return parse_body(raw)[0]

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
        for page in self._listing(_origin(base_url), url, api_key, max_pages, max_bytes, None):
            yield page.items or []

    def _listing(
        self,
        origin: str,
        url: str,
        api_key: Secret,
        max_pages: int,
        max_bytes: int,
        reuse: Callable[[PageKey], tuple[str | None, bool, bool] | None] | None,
    ) -> Generator[Page, None, None]:
        """The pages of a cursor-paged list at ``url`` (which holds its query), on ``origin``
        (:func:`_origin`)."""
        # One URL string per page: httpx merging a params dict into a URL parses it twice.
        page_url = url
        used: set[str] = set()
        page = 0
        while True:
            if self._stop.is_set():
                raise Stopped()
            raw = self._get(origin, page_url, api_key, max_bytes)
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
                items, token = checked_page(raw, page)
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

    def _get(self, origin: str, url: str, key: Secret, max_bytes: int) -> bytes:
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
                        http, connection, url, origin, key, max_bytes
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
                message = f"HTTP {status}: {error_detail(body, reason_phrase)}"
                if retries_done:
                    message += f" (after {retries_done} retries)"
                reason = "client_error" if status < 400 else failure_reason(status)
                raise PollError(reason, message, status)
            self._sleep(backoff_seconds(retries_done, retry_headers, self._rand))
            retries_done += 1

    def _request(
        self,
        http: _HttpxClient | StdlibClient,
        connection: Connection,
        url: str,
        origin: str,
        key: Secret,
        max_bytes: int,
    ) -> tuple[int, str, bytes, Headers]:
        """(status, reason phrase, body, headers) of one GET, the body read under its bound."""
        with http.stream(url, origin, key, connection) as response:
            status = response.status_code
            self._on_request(code_label(status))
            limit = max_bytes if status == 200 else MAX_ERROR_BODY
            try:
                body = read_body(response, limit, strict=status == 200)
            except httpx.HTTPError as exc:
                raise _Unfinished(exc) from None
            return status, response.reason_phrase, body, response.headers
