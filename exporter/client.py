"""LlamaCloud HTTP client: auth, pagination, retries as the official SDK does them.

The server is not trusted: a repeated page token, a listing longer than ``max_pages``, a
body that is not JSON or a page of the wrong shape fails the poll with a short reason word.
"""

from __future__ import annotations

import email.utils
import json
import random
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlencode

import httpx

from . import __version__
from .config import ProjectConfig

try:
    import orjson

    _loads: Callable[[bytes], Any] = orjson.loads
    _DECODE_ERRORS: tuple[type[Exception], ...] = (orjson.JSONDecodeError, ValueError)
except ImportError:  # pragma: no cover - orjson is a dependency; stdlib json still works
    _loads = json.loads
    _DECODE_ERRORS = (ValueError,)

USER_AGENT = f"llamacloud-exporter/{__version__}"
CHAT_PATH = "/api/v1/chat"

INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
MAX_RETRY_AFTER = 60.0
RETRY_STATUSES = frozenset({408, 409, 429})


class PollError(Exception):
    """A failed listing. ``reason`` is a fixed word, safe to use as a metric label."""

    def __init__(self, reason: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status
        self.pages = 0  # pages fetched before the failure


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


def _should_retry(response: httpx.Response) -> bool:
    forced = response.headers.get("x-should-retry")
    if forced == "true":
        return True
    if forced == "false":
        return False
    return response.status_code in RETRY_STATUSES or response.status_code >= 500


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


def _detail(response: httpx.Response, secret: str) -> str:
    """The server's ``detail``, short, one line, and with the API key scrubbed."""
    try:
        body = _loads(response.content)
        detail = body.get("detail") if isinstance(body, dict) else None
    except _DECODE_ERRORS:
        detail = None
    if detail is None:
        text = response.reason_phrase or ""
    elif isinstance(detail, str):
        text = detail
    else:
        text = json.dumps(detail)[:200]
    text = " ".join(text.split())[:200]
    if secret:
        text = text.replace(secret, "********")
    return text


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


class ApiClient:
    """Lists chat sessions page by page, blocking: the poller runs each listing in a thread.

    A synchronous client costs a third less CPU per page than httpx's asyncio one, and the
    page loop is where the exporter spends its time. Each project gets its own connection
    (sharing one TLS context), since a project's pages are fetched one after another.
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
    ) -> None:
        """``wait(seconds)`` sleeps (between retries, or for the rate limit) and returns True
        when stopped; ``max_requests_per_second`` 0 means no limit."""
        self._timeout = timeout
        self._transport = transport
        self._max_retries = max_retries
        self._on_request = on_request or (lambda code: None)
        self._rand = rand
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._clients: dict[str, httpx.Client] = {}
        self._tls: ssl.SSLContext | None = None
        self._wait = wait or self._stop.wait
        self._limiter = (
            RateLimiter(max_requests_per_second, clock) if max_requests_per_second > 0 else None
        )

    def _client(self, project_id: str) -> httpx.Client:
        with self._lock:
            client = self._clients.get(project_id)
            if client is None:
                if self._tls is None and self._transport is None:
                    self._tls = httpx.create_ssl_context()
                client = httpx.Client(
                    timeout=self._timeout,
                    headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
                    transport=self._transport,
                    verify=self._tls or True,
                    follow_redirects=False,
                    limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
                )
                self._clients[project_id] = client
            return client

    def forget(self, project_id: str) -> None:
        """Close a project's connection once it has left the config."""
        with self._lock:
            client = self._clients.pop(project_id, None)
        if client is not None:
            client.close()

    def stop(self) -> None:
        """Make listings under way give up at their next page or backoff."""
        self._stop.set()

    def close(self) -> None:
        self.stop()
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()

    def _sleep(self, seconds: float) -> None:
        if self._wait(seconds):
            raise Stopped()

    def pages(self, project: ProjectConfig, max_pages: int) -> Iterator[list[Any]]:
        """Yield the ``items`` of each page until the listing ends."""
        http = self._client(project.id)
        secret = project.api_key.get()
        headers = {"Authorization": f"Bearer {secret}"}
        params: dict[str, str | int] = {"project_id": project.id, "page_size": project.page_size}
        if project.organization_id:
            params["organization_id"] = project.organization_id
        # One URL string per page: httpx merging a params dict into a URL parses it twice.
        url = f"{project.base_url}{CHAT_PATH}?{urlencode(params)}"
        page_url = url
        used: set[str] = set()
        page = 0
        while True:
            if self._stop.is_set():
                raise Stopped()
            body = self._get(http, page_url, headers, secret)
            page += 1
            if not isinstance(body, dict):
                raise PollError("invalid_response", f"page {page} is not a JSON object")
            items = body.get("items")
            if not isinstance(items, list):
                raise PollError("invalid_response", f"page {page} has no items list")
            token = body.get("next_page_token")
            if token is not None and not isinstance(token, str):
                raise PollError("invalid_response", f"page {page} has a non-string page token")
            yield items
            if not items or not token:
                return
            if token in used:
                raise PollError("pagination_loop", f"page {page} repeats an earlier page token")
            if page >= max_pages:
                raise PollError(
                    "too_many_pages", f"listing is longer than max_pages={max_pages} pages"
                )
            used.add(token)
            page_url = f"{url}&{urlencode({'page_token': token})}"

    def _get(
        self,
        http: httpx.Client,
        url: str,
        headers: dict[str, str],
        secret: str,
    ) -> Any:
        retries_done = 0
        while True:
            if self._limiter is not None:
                delay = self._limiter.delay()
                if delay > 0:
                    self._sleep(delay)
            try:
                response = http.get(url, headers=headers)
            except httpx.TransportError as exc:
                self._on_request("error")
                reason = "timeout" if isinstance(exc, httpx.TimeoutException) else "connection"
                if retries_done >= self._max_retries:
                    raise PollError(reason, f"{reason} after {retries_done} retries") from None
                self._sleep(backoff_seconds(retries_done, None, self._rand))
                retries_done += 1
                continue
            self._on_request(str(response.status_code))
            status = response.status_code
            if status == 200:
                try:
                    return _loads(response.content)
                except _DECODE_ERRORS:
                    raise PollError("invalid_response", "response body is not JSON") from None
            if status < 400 or not _should_retry(response) or retries_done >= self._max_retries:
                message = f"HTTP {status}: {_detail(response, secret)}"
                if retries_done:
                    message += f" (after {retries_done} retries)"
                reason = "client_error" if status < 400 else _failure_reason(status)
                raise PollError(reason, message, status)
            self._sleep(backoff_seconds(retries_done, response.headers, self._rand))
            retries_done += 1
