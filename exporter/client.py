"""LlamaCloud HTTP client: auth, pagination, retries as the official SDK does them.

The server is not trusted: a repeated page token, a listing longer than ``max_pages``, a
body that is not JSON or a page of the wrong shape fails the poll with a short reason word.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

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


class ApiClient:
    """Lists chat sessions page by page; one instance serves every project."""

    def __init__(
        self,
        *,
        timeout: float = 30.0,
        max_retries: int = 5,
        on_request: Callable[[str], None] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
        max_connections: int = 16,
    ) -> None:
        self._http = httpx.AsyncClient(
            timeout=timeout,
            headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
            transport=transport,
            follow_redirects=False,
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )
        self._max_retries = max_retries
        self._on_request = on_request or (lambda code: None)
        self._sleep = sleep
        self._rand = rand
        self.retries = 0  # total retries made, for logs and tests

    async def aclose(self) -> None:
        await self._http.aclose()

    async def pages(self, project: ProjectConfig, max_pages: int) -> AsyncIterator[list[Any]]:
        """Yield the ``items`` of each page until the listing ends."""
        url = project.base_url + CHAT_PATH
        headers = {"Authorization": f"Bearer {project.api_key.get()}"}
        params: dict[str, str | int] = {"project_id": project.id, "page_size": project.page_size}
        if project.organization_id:
            params["organization_id"] = project.organization_id
        used: set[str] = set()
        page = 0
        while True:
            body = await self._get(url, params, headers, project.api_key.get())
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
            params["page_token"] = token

    async def _get(
        self, url: str, params: dict[str, str | int], headers: dict[str, str], secret: str
    ) -> Any:
        retries_done = 0
        while True:
            try:
                response = await self._http.get(url, params=params, headers=headers)
            except httpx.TransportError as exc:
                self._on_request("error")
                reason = "timeout" if isinstance(exc, httpx.TimeoutException) else "connection"
                if retries_done >= self._max_retries:
                    raise PollError(reason, f"{reason} after {retries_done} retries") from None
                await self._sleep(backoff_seconds(retries_done, None, self._rand))
                retries_done += 1
                self.retries += 1
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
            await self._sleep(backoff_seconds(retries_done, response.headers, self._rand))
            retries_done += 1
            self.retries += 1
