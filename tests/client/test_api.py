"""client.api: pages followed to the end, retries and backoff as the SDK does them, the
rate limit, and one bounded pool of connections; against httpx.MockTransport for corner cases
and a hostile server on loopback for the pool."""

from __future__ import annotations

import email.utils
import threading
import time
from typing import Any

import httpx
import pytest

from exporter import __version__
from exporter.client import ApiClient, PollError
from exporter.client.api import RateLimiter, backoff_seconds, retry_after_seconds
from exporter.config import ProjectConfig
from exporter.simulator import DEFAULT_API_KEY, Simulator
from tests.client.helpers import (
    KEY,
    PROJECT,
    Handler,
    Harness,
    hostile_project,
    listing,
    pages_handler,
)
from tests.helpers import project, wait_for
from tests.hostile import Hostile, Request, Writer, answer, drip, page


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
        assert [p.items for p in client.pages(PROJECT, 10)] == [[1], [2], [3]]
    finally:
        client.close()
    assert sleeps == pytest.approx([0.1, 0.2])


def test_projects_with_their_own_keys_share_a_bounded_pool_of_connections() -> None:
    """300 projects, each with its own key, listed by more threads than there are connections:
    every listing succeeds (the simulator answers 403 to a key sent for another project), and
    the server never sees more connections open than the pool's bound."""
    keys = {f"proj-{i:03d}": f"llx-key-{i:03d}" for i in range(300)}
    failures: list[BaseException] = []
    with Simulator(projects=0, api_keys=keys, sessions_per_project=3, seed=3) as sim:
        projects = [project(pid, base_url=sim.base_url, key=key) for pid, key in keys.items()]
        client = ApiClient(max_connections=3, max_retries=0)

        def work(share: list[ProjectConfig]) -> None:
            try:
                for project in share:
                    assert sum(len(p.items or []) for p in client.pages(project, 10)) == 3
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=work, args=(projects[i::12],)) for i in range(12)]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(120)
        finally:
            client.close()
        assert not failures, failures[:3]
        assert sim.request_count == 300
        assert 1 <= sim.peak_connections <= 3
        assert {r.authorization for r in sim.requests} == {f"Bearer {k}" for k in keys.values()}


def test_a_request_cut_on_a_kept_alive_connection_spares_the_next_project(
    hostile: Hostile,
) -> None:
    """One pooled connection serves three projects in turn: the second one's answer drips on
    the socket the first one left open, and is cut at its deadline; the third one, on the same
    pool, is answered on a fresh connection."""
    body = page([{"session_id": f"s{i}"} for i in range(200)])
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    dripping = "llx-drip-0123456789"

    def behaviour(request: Request) -> Writer:
        if request.headers.get("Authorization") == f"Bearer {dripping}":
            return drip(head + body, every=0.01)
        return answer(200, page([{"session_id": "s"}]))

    hostile.behaviour = behaviour
    client = ApiClient(timeout=1.0, max_retries=0, max_connections=1)
    try:
        assert [p.items for p in client.pages(hostile_project(hostile.url, KEY + "a"), 10)] == [
            [{"session_id": "s"}]
        ]
        with pytest.raises(PollError) as cut:
            list(client.pages(hostile_project(hostile.url, dripping), 10))
        assert cut.value.reason == "timeout"
        assert [p.items for p in client.pages(hostile_project(hostile.url, KEY + "c"), 10)] == [
            [{"session_id": "s"}]
        ]
        assert client._watchdog._active == set()
    finally:
        client.close()
    sent = [r.headers.get("Authorization") for r in hostile.requests]
    assert sent == [f"Bearer {KEY}a", f"Bearer {dripping}", f"Bearer {KEY}c"]


def test_a_pool_that_shrinks_closes_what_it_no_longer_needs() -> None:
    with Simulator(projects=4, sessions_per_project=1, seed=4) as sim:
        projects = [
            project(pid, base_url=sim.base_url, key=DEFAULT_API_KEY) for pid in sim.project_ids
        ]
        client = ApiClient(max_connections=4, max_retries=0)
        # The server answers none of the four first pages before it holds all four requests:
        # the pool has opened its four connections.
        sim.on_page(lambda *page: barrier.wait())
        barrier = threading.Barrier(4, timeout=30)
        try:
            threads = [
                threading.Thread(target=lambda p=p: list(client.pages(p, 10))) for p in projects
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            assert sim.peak_connections == 4
            sim.on_page(None)
            client.resize(1)
            assert client.max_connections == 1
            for listed in projects:
                list(client.pages(listed, 10))
            wait_for(lambda: sim.open_connections == 1, 10, "the surplus connections to close")
        finally:
            client.close()


def test_the_key_is_only_in_the_request_header() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Authorization"])
        assert KEY not in repr(request.headers)  # httpx masks it in a repr too
        return httpx.Response(200, json={"items": []})

    Harness(handler).list()
    assert seen == [f"Bearer {KEY}"]


def test_a_cookie_the_api_sets_goes_back_with_the_next_requests() -> None:
    # As the SDK's httpx client does (a load balancer's sticky session): only responses
    # that set one are read for cookies.
    pages = {
        None: {"items": [1], "next_page_token": "t1"},
        "t1": {"items": [2], "next_page_token": "t2"},
        "t2": {"items": [3]},
    }

    def handler(request: httpx.Request) -> httpx.Response:
        token = request.url.params.get("page_token")
        headers = {"Set-Cookie": "lb=node-7; Path=/"} if token == "t1" else {}
        return httpx.Response(200, json=pages[token], headers=headers)

    h = Harness(handler)
    assert h.list() == [[1], [2], [3]]
    assert [r.headers.get("cookie") for r in h.requests] == [None, None, "lb=node-7"]


def test_a_connection_failure_names_the_host_and_the_cause(hostile: Hostile) -> None:
    """A wrong base_url or no network: the message says where and why, not only "connection"."""
    from tests.helpers import free_port

    port = free_port()  # nothing listens there
    refused = listing(ApiClient(max_retries=1), hostile_project(f"http://127.0.0.1:{port}"))
    assert refused.reason == "connection"
    assert f"127.0.0.1:{port}" in str(refused) and "connection refused" in str(refused)
    assert "after 1 retries" in str(refused)

    unknown = listing(ApiClient(max_retries=0), hostile_project("http://no-such-host.invalid"))
    assert "no-such-host.invalid" in str(unknown) and "name resolution" in str(unknown)

    # A plain HTTP server spoken to over https: the TLS handshake fails.
    tls = listing(ApiClient(max_retries=0), hostile_project(hostile.url.replace("http", "https")))
    assert "TLS" in str(tls), str(tls)
