"""The client's corner cases, against httpx.MockTransport (no server needed)."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from exporter import __version__
from exporter.client import (
    ApiClient,
    PollError,
    RateLimiter,
    backoff_seconds,
    retry_after_seconds,
)
from exporter.config import ProjectConfig, Secret

KEY = "llx-test-key-0123456789"
PROJECT = ProjectConfig(
    id="proj-1",
    name="p",
    organization_id="org-1",
    base_url="https://api.example.test",
    page_size=2,
    api_key=Secret(KEY),
)

Handler = Callable[[httpx.Request], httpx.Response]


class Harness:
    def __init__(self, handler: Handler, max_retries: int = 5) -> None:
        self.requests: list[httpx.Request] = []
        self.sleeps: list[float] = []
        self.codes: list[str] = []

        def record(request: httpx.Request) -> httpx.Response:
            self.requests.append(request)
            return handler(request)

        self.client = ApiClient(
            max_retries=max_retries,
            transport=httpx.MockTransport(record),
            rand=lambda: 0.0,
            on_request=self.codes.append,
            wait=self.wait,
        )

    def wait(self, seconds: float) -> bool:
        """Backoff waits are recorded, not slept: the tests assert them, not the clock."""
        self.sleeps.append(seconds)
        return False

    def list(self, max_pages: int = 100) -> list[list[Any]]:
        try:
            return list(self.client.pages(PROJECT, max_pages))
        finally:
            self.client.close()

    def fails(self, max_pages: int = 100) -> PollError:
        with pytest.raises(PollError) as info:
            self.list(max_pages)
        return info.value


def pages_handler(pages: dict[str | None, dict[str, Any]]) -> Handler:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=pages[request.url.params.get("page_token")])

    return handle


@pytest.mark.parametrize("last", [{}, {"next_page_token": None}, {"next_page_token": ""}])
def test_follows_tokens_to_the_end(last: dict[str, Any]) -> None:
    h = Harness(
        pages_handler(
            {
                None: {"items": [1, 2], "next_page_token": "t1"},
                "t1": {"items": [3, 4], "next_page_token": "t2"},
                "t2": {"items": [5], **last},
            }
        )
    )
    assert h.list() == [[1, 2], [3, 4], [5]]
    first = h.requests[0]
    assert first.headers["authorization"] == f"Bearer {KEY}"
    assert first.headers["user-agent"] == f"llamacloud-exporter/{__version__}"
    assert first.url.path == "/api/v1/chat"
    assert dict(first.url.params) == {
        "project_id": "proj-1",
        "page_size": "2",
        "organization_id": "org-1",
    }
    assert h.requests[2].url.params["page_token"] == "t2"
    assert h.codes == ["200", "200", "200"]


def test_an_empty_page_ends_the_listing() -> None:
    h = Harness(
        pages_handler(
            {
                None: {"items": [1]} | {"next_page_token": "t"},
                "t": {"items": [], "next_page_token": "u"},
            }
        )
    )
    assert h.list() == [[1], []]


def test_a_repeated_token_fails_instead_of_looping() -> None:
    h = Harness(
        pages_handler(
            {
                None: {"items": [1], "next_page_token": "a"},
                "a": {"items": [2], "next_page_token": "b"},
                "b": {"items": [3], "next_page_token": "a"},
            }
        )
    )
    assert h.fails().reason == "pagination_loop"
    assert len(h.requests) == 3


def test_more_than_max_pages_fails() -> None:
    counter = iter(range(10**6))

    def endless(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"items": [1], "next_page_token": f"t{next(counter)}"})

    h = Harness(endless)
    assert h.fails(max_pages=5).reason == "too_many_pages"
    assert len(h.requests) == 5


def test_exactly_max_pages_is_fine() -> None:
    h = Harness(pages_handler({None: {"items": [1], "next_page_token": "a"}, "a": {"items": [2]}}))
    assert h.list(max_pages=2) == [[1], [2]]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"<html>oops</html>", "invalid_response"),
        (b'{"items": [1, 2', "invalid_response"),
        (b"[1, 2]", "invalid_response"),
        (b'{"items": {"a": 1}}', "invalid_response"),
        (b'{"items": [], "next_page_token": 5}', "invalid_response"),
    ],
)
def test_a_bad_body_fails_the_poll(body: bytes, reason: str) -> None:
    h = Harness(lambda r: httpx.Response(200, content=body))
    assert h.fails().reason == reason


def sequence(*responses: httpx.Response | Exception) -> Handler:
    queue = list(responses)

    def handle(request: httpx.Request) -> httpx.Response:
        item = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(item, Exception):
            raise item
        return item

    return handle


OK = httpx.Response(200, json={"items": [1]})


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
def test_retryable_statuses_back_off_exponentially(status: int) -> None:
    h = Harness(sequence(*[httpx.Response(status, json={"detail": "x"})] * 4, OK))
    assert h.list() == [[1]]
    assert h.sleeps == [0.5, 1.0, 2.0, 4.0]
    assert h.codes == [str(status)] * 4 + ["200"]


def test_backoff_is_capped_and_jittered() -> None:
    assert backoff_seconds(10, None, lambda: 0.0) == 8.0
    assert backoff_seconds(0, None, lambda: 1.0) == pytest.approx(0.375)
    assert 0.375 <= backoff_seconds(0, None, lambda: 0.5) <= 0.5


def test_retry_after_seconds_and_http_date() -> None:
    assert retry_after_seconds(httpx.Headers({"retry-after": "7"})) == 7
    assert retry_after_seconds(httpx.Headers({"retry-after-ms": "1500"})) == 1.5
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert retry_after_seconds(httpx.Headers({"retry-after": date}), now) == pytest.approx(
        30, abs=1
    )
    assert retry_after_seconds(httpx.Headers({"retry-after": "soon"})) is None


def test_429_obeys_retry_after() -> None:
    date = email.utils.formatdate(time.time() + 20, usegmt=True)
    h = Harness(
        sequence(
            httpx.Response(429, headers={"Retry-After": "3"}, json={"detail": "slow down"}),
            httpx.Response(503, headers={"Retry-After": date}),
            httpx.Response(429, headers={"Retry-After": "600"}),  # too long: normal backoff
            OK,
        )
    )
    assert h.list() == [[1]]
    assert h.sleeps[0] == 3
    assert 15 < h.sleeps[1] <= 20
    assert h.sleeps[2] == 2.0


def test_retries_run_out() -> None:
    h = Harness(sequence(httpx.Response(503, json={"detail": "down"})), max_retries=2)
    err = h.fails()
    assert err.reason == "server_error"
    assert err.status == 503
    assert len(h.requests) == 3
    assert "down" in str(err) and "after 2 retries" in str(err)


@pytest.mark.parametrize(("status", "reason"), [(401, "auth"), (403, "auth"), (404, "not_found")])
def test_config_problems_are_not_retried(status: int, reason: str) -> None:
    h = Harness(sequence(httpx.Response(status, json={"detail": f"Invalid key {KEY}"})))
    err = h.fails()
    assert err.reason == reason
    assert err.status == status
    assert len(h.requests) == 1
    assert h.sleeps == []
    assert KEY not in str(err)  # the server echoed the key; it is scrubbed


def test_other_client_errors_are_not_retried() -> None:
    h = Harness(sequence(httpx.Response(422, json={"detail": [{"msg": "bad"}]})))
    err = h.fails()
    assert (err.reason, len(h.requests)) == ("client_error", 1)


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (httpx.ConnectError("refused"), "connection"),
        (httpx.ReadTimeout("slow"), "timeout"),
        (httpx.RemoteProtocolError("eof"), "connection"),
    ],
)
def test_transport_errors_are_retried(exc: Exception, reason: str) -> None:
    h = Harness(sequence(exc, exc, OK))
    assert h.list() == [[1]]
    assert h.codes == ["error", "error", "200"]
    h2 = Harness(sequence(exc), max_retries=1)
    assert h2.fails().reason == reason
    assert len(h2.requests) == 2


def test_x_should_retry_overrides_the_status() -> None:
    h = Harness(sequence(httpx.Response(400, headers={"x-should-retry": "true"}), OK))
    assert h.list() == [[1]]
    h2 = Harness(sequence(httpx.Response(503, headers={"x-should-retry": "false"})))
    assert len([h2.fails()]) == 1 and len(h2.requests) == 1


def test_rate_limiter_spaces_requests() -> None:
    now = [100.0]
    limiter = RateLimiter(2.0, clock=lambda: now[0])
    assert [limiter.delay() for _ in range(3)] == [0.0, 0.5, 1.0]
    now[0] += 10
    assert limiter.delay() == 0.0


def test_max_requests_per_second_spaces_the_pages() -> None:
    sleeps: list[float] = []
    client = ApiClient(
        transport=httpx.MockTransport(
            pages_handler(
                {
                    None: {"items": [1], "next_page_token": "a"},
                    "a": {"items": [2], "next_page_token": "b"},
                    "b": {"items": [3]},
                }
            )
        ),
        wait=lambda seconds: bool(sleeps.append(seconds)),
        max_requests_per_second=10,
        clock=lambda: 5.0,  # no time passes: every request after the first waits its turn
    )
    try:
        assert list(client.pages(PROJECT, 10)) == [[1], [2], [3]]
    finally:
        client.close()
    assert sleeps == pytest.approx([0.1, 0.2])


def test_forget_closes_a_project_connection() -> None:
    h = Harness(pages_handler({None: {"items": [1]}}))
    assert list(h.client.pages(PROJECT, 10)) == [[1]]
    first = h.client._client(PROJECT.id)
    h.client.forget(PROJECT.id)
    assert first.is_closed
    assert h.client._client(PROJECT.id) is not first  # a project that comes back reconnects
    h.client.close()
