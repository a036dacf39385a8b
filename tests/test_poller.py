"""Scheduling: bounded concurrency, one slow project never delays the others."""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from exporter.client import ApiClient
from exporter.config import Config
from exporter.logs import configure_logging
from exporter.metrics import StoreCollector
from exporter.poller import Poller, _Workers, concurrent_polls
from exporter.store import Store
from tests.helpers import project
from tests.hostile import Request, Writer, answer, drip, page, serve


def config(n: int, concurrency: int, interval: float = 0.01) -> Config:
    projects = tuple(project(f"p{i}", base_url="https://api.test") for i in range(n))
    return Config(projects=projects, max_concurrency=concurrency, poll_interval_seconds=interval)


def peak_in_flight(projects: int, limit: int) -> int:
    lock = threading.Lock()
    in_flight = 0
    peak = 0
    everyone = threading.Barrier(limit, timeout=30)

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        # The first `limit` projects (the semaphore admits them first) meet here, so the limit
        # is reached whatever the machine's speed.
        if request.url.params["project_id"] in {f"p{i}" for i in range(limit)}:
            everyone.wait()
        with lock:
            in_flight -= 1
        return httpx.Response(200, json={"items": []})

    async def run() -> bool:
        client = ApiClient(
            transport=httpx.MockTransport(handler), max_connections=concurrent_polls(limit)
        )
        try:
            return await Poller(config(projects, limit), Store(), client).poll_all_once()
        finally:
            client.close()

    assert asyncio.run(run())
    return peak


@pytest.mark.parametrize("limit", [1, 2, 5])
def test_at_most_max_concurrency_projects_at_once(limit: int) -> None:
    assert peak_in_flight(5, limit) == limit


def test_a_hanging_project_never_delays_the_others() -> None:
    polls: dict[str, int] = {}
    release = threading.Event()

    def handler(request: httpx.Request) -> httpx.Response:
        pid = request.url.params["project_id"]
        polls[pid] = polls.get(pid, 0) + 1
        if pid == "p0":
            release.wait(60)
        return httpx.Response(200, json={"items": [{"session_id": "s"}]})

    async def run() -> Store:
        store = Store()
        client = ApiClient(transport=httpx.MockTransport(handler))
        poller = Poller(config(3, 2), store, client)
        stop = asyncio.Event()
        task = asyncio.create_task(poller.run(stop))
        try:
            while min(polls.get("p1", 0), polls.get("p2", 0)) < 5:
                await asyncio.sleep(0.01)
            assert polls["p0"] == 1
            assert not store.get("p0").polled
        finally:
            stop.set()
            release.set()
            await asyncio.wait_for(task, 10)
            client.close()
        return store

    store = asyncio.run(asyncio.wait_for(run(), 60))
    assert store.get("p1").up and store.get("p2").up


def test_an_unexpected_error_costs_one_poll_not_the_daemon() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug")
        return httpx.Response(200, json={"items": []})

    async def run() -> Store:
        store = Store()
        client = ApiClient(transport=httpx.MockTransport(handler))
        poller = Poller(config(1, 1), store, client)
        try:
            assert not await poller.poll_all_once()
            assert store.get("p0").last_error == "internal"
            assert await poller.poll_all_once()
        finally:
            client.close()
        return store

    assert asyncio.run(run()).get("p0").up


def test_hanging_projects_in_every_slot_never_starve_a_healthy_one() -> None:
    # Four projects whose server drips its answers (each read well inside the timeout, the
    # whole never ending) against four slots: a healthy fifth project is still polled.
    drips = {f"p{i}" for i in range(4)}
    body = page([{"session_id": f"session-{i}"} for i in range(100)])  # minutes, a byte at a time

    def behaviour(request: Request) -> Writer:
        if request.query["project_id"] in drips:
            return drip(f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        return answer(200, body)

    async def run(url: str) -> Store:
        projects = tuple(project(f"p{i}", base_url=url) for i in range(5))
        store = Store()
        client = ApiClient(timeout=1.0, max_retries=0, max_connections=concurrent_polls(4))
        poller = Poller(
            Config(projects=projects, max_concurrency=4, poll_interval_seconds=0.05), store, client
        )
        stop = asyncio.Event()
        task = asyncio.create_task(poller.run(stop))
        try:
            # Not a timing bound: without a deadline the drips hold every slot for good, and
            # p4 is never polled however long this waits.
            for _ in range(1200):
                if store.get("p4").up and store.get("p4").last_success is not None:
                    successes.append(store.get("p4").last_success)
                    if len(set(successes)) >= 3:
                        break
                await asyncio.sleep(0.05)
            assert len(set(successes)) >= 3, "the healthy project was not polled"
            assert all(store.get(f"p{i}").last_error == "timeout" for i in range(4))
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
            client.close()
        return store

    successes: list[float] = []
    for server in serve(behaviour):
        asyncio.run(asyncio.wait_for(run(server.url), 120))


def test_an_internal_error_is_logged_without_locals_or_the_key(
    capsys: pytest.CaptureFixture[str],
) -> None:
    key = "llx-0123456789abcdefghijklmnopqrstuvwxyzABCD"

    def handler(request: httpx.Request) -> httpx.Response:
        raise RuntimeError("a bug, deep in a frame that can see the request")

    async def run() -> None:
        polled = project("p0", base_url="https://api.test", key=key)
        client = ApiClient(transport=httpx.MockTransport(handler))
        try:
            await Poller(Config(projects=(polled,)), Store(), client).poll_all_once()
        finally:
            client.close()

    configure_logging("info", "json")
    try:
        asyncio.run(run())
    finally:
        configure_logging("info", "console")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    error = next(line for line in lines if line["event"] == "poll_internal_error")
    frames = error["exception"][0]["frames"]
    assert frames  # the traceback is there, to find the bug by
    assert not any("locals" in frame for frame in frames)
    assert key[4:12] not in json.dumps(lines)


# Arbitrary JSON, with the shapes of the API's pages and items mixed in so that examples
# reach past the page checks into the items.
NUMBERS = (
    st.integers()
    | st.floats()
    | st.sampled_from([1e308, 1.7e308, 2.0**64, 2**63, 10**400, -(10**400)])
)
TEXT = st.text(max_size=12) | st.sampled_from(
    ["a", "b", "c", "\ud800", "2026-01-01T00:00:00", "x" * 5000]
)
ANY_JSON = st.recursive(
    st.none() | st.booleans() | NUMBERS | TEXT,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(TEXT, children, max_size=3),
    max_leaves=12,
)
JOB = st.fixed_dictionaries(
    {},
    optional={
        name: ANY_JSON | NUMBERS
        for name in (
            "duration_ms",
            "error",
            "is_error",
            "total_input_tokens",
            "total_output_tokens",
            "turns",
        )
    },
)
ITEM = st.fixed_dictionaries(
    {"session_id": TEXT | ANY_JSON},
    optional={"job_metadata": st.none() | JOB | ANY_JSON, "last_updated_at": TEXT | ANY_JSON},
)
PAGE = st.fixed_dictionaries(
    {"items": st.lists(ITEM | ANY_JSON, max_size=6)},
    optional={"next_page_token": st.none() | TEXT | ANY_JSON},
)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(PAGE | ANY_JSON, min_size=1, max_size=3), st.booleans())
def test_any_json_as_pages_never_crashes_or_makes_a_number_infinite(
    pages: list[Any], twice: bool
) -> None:

    bodies = []
    for index, p in enumerate(pages):
        if isinstance(p, dict):  # the pages chain up: page i links to page i + 1
            p = {k: v for k, v in p.items() if k != "next_page_token"}
            if index + 1 < len(pages):
                p["next_page_token"] = str(index + 1)
        bodies.append(json.dumps(p).encode())  # NaN and Infinity included
    well_shaped = all(isinstance(p, dict) and isinstance(p.get("items"), list) for p in pages)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=bodies[int(request.url.params.get("page_token", 0))])

    async def run() -> Store:
        store = Store()
        client = ApiClient(transport=httpx.MockTransport(handler), max_retries=0)
        poller = Poller(config(1, 1), store, client)
        try:
            for _ in range(2 if twice else 1):
                await poller.poll_all_once()
        finally:
            client.close()
        return store

    store = asyncio.run(run())
    assert store.get("p0").last_error != "internal"
    if well_shaped:  # a bad item is skipped and counted; it never fails the page
        assert store.get("p0").up, store.get("p0").last_error
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store))
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            assert math.isfinite(sample.value), sample


def test_an_error_outside_the_listing_never_stops_a_project_loop() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"items": [{"session_id": "s"}]})

    async def run() -> Store:
        store = Store()
        failures = []

        def listener(state: object) -> None:
            if not failures:  # the first publish fails, as a render bug would
                failures.append(state)
                raise OverflowError("int too large to convert to float")

        store.subscribe(listener)
        client = ApiClient(transport=httpx.MockTransport(handler))
        poller = Poller(config(1, 1), store, client)
        stop = asyncio.Event()
        task = asyncio.create_task(poller.run(stop))
        try:
            for _ in range(600):
                if failures and store.get("p0").up:
                    break
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
            client.close()
        return store

    store = asyncio.run(asyncio.wait_for(run(), 60))
    assert store.get("p0").up  # polled again after the failure
    assert dict(store.get("p0").poll_errors) == {"internal": 1}


def test_a_project_loop_that_dies_is_started_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever kills a project's loop (here its scheduling, once), the project is polled
    again and shows as down in between: never unpolled with up at 1."""
    monkeypatch.setattr("exporter.poller.LOOP_RESTART_SECONDS", 0.01, raising=False)
    polls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal polls
        polls += 1
        return httpx.Response(200, json={"items": []})

    draws = 0

    def rand() -> float:
        nonlocal draws
        draws += 1
        if draws == 1:
            raise RuntimeError("the schedule broke")
        return 0.5

    store = Store()

    async def run() -> None:
        client = ApiClient(transport=httpx.MockTransport(handler))
        stop = asyncio.Event()
        poller = Poller(config(1, 1), store, client, rand=rand)
        task = asyncio.create_task(poller.run(stop))
        try:
            for _ in range(1000):
                if polls >= 3:
                    break
                await asyncio.sleep(0.01)
        finally:
            stop.set()
            await task
            client.close()

    asyncio.run(run())
    assert polls >= 3
    assert dict(store.get("p0").poll_errors) == {"internal": 1}


def test_a_reload_that_raises_max_concurrency_gives_the_polls_their_connections() -> None:
    # Four projects meet in the server: they are polled at once only if the reload both
    # widened the lanes and grew the client's pool (sized for max_concurrency 1) with them.
    everyone = threading.Barrier(4, timeout=30)

    def handler(request: httpx.Request) -> httpx.Response:
        everyone.wait()
        return httpx.Response(200, json={"items": []})

    async def run() -> bool:
        client = ApiClient(
            transport=httpx.MockTransport(handler), max_connections=concurrent_polls(1)
        )
        poller = Poller(config(4, 1), Store(), client)
        try:
            assert await poller.apply(config(4, 4)) == []  # no restart needed
            assert client.max_connections == concurrent_polls(4)
            return await poller.poll_all_once()
        finally:
            client.close()

    assert asyncio.run(asyncio.wait_for(run(), 60))


def test_worker_threads_are_kept_between_hops_and_never_make_one_wait() -> None:
    """``in_thread`` runs each call on a daemon worker: one left idle by the last call takes
    the next (no thread start per hop); a call blocked on a worker never holds up another;
    and a worker idle for its time ends."""
    workers = _Workers(idle_seconds=0.2)

    async def hop(fn: Callable[[], Any]) -> Any:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()

        def job() -> Callable[[], None]:
            result = fn()
            return lambda: loop.call_soon_threadsafe(done.set_result, result)

        workers.submit(job)
        return await done

    async def run() -> None:
        first = await hop(threading.get_ident)
        second = await hop(threading.get_ident)
        assert first == second  # the idle worker took it
        release = threading.Event()
        blocked = asyncio.ensure_future(hop(lambda: release.wait(30)))
        # While that worker waits, another call gets a worker of its own.
        other = await asyncio.wait_for(hop(threading.get_ident), 10)
        assert other and not blocked.done()
        release.set()
        assert await asyncio.wait_for(blocked, 10)

    before = {t.ident for t in threading.enumerate()}
    asyncio.run(asyncio.wait_for(run(), 60))
    started = [t for t in threading.enumerate() if t.ident not in before]
    assert started and all(t.daemon and t.name == "llamacloud-poll" for t in started)
    deadline = time.monotonic() + 30  # idle workers end on their own
    while any(t.is_alive() for t in started) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.is_alive() for t in started)
