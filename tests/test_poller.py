"""Scheduling: bounded concurrency, one slow project never delays the others."""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest

from exporter.client import ApiClient
from exporter.config import Config, ProjectConfig, Secret
from exporter.poller import Poller
from exporter.store import Store


def config(n: int, concurrency: int, interval: float = 0.01) -> Config:
    projects = tuple(
        ProjectConfig(f"p{i}", f"p{i}", "", "https://api.test", 100, Secret("k")) for i in range(n)
    )
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
        client = ApiClient(transport=httpx.MockTransport(handler))
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
