"""What the client tests share: a project, a harness over httpx.MockTransport, listings of a
hostile server."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from exporter.client import ApiClient, PollError
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
            return [page.items for page in self.client.pages(PROJECT, max_pages)]
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


def hostile_project(url: str, key: str = KEY) -> ProjectConfig:
    return ProjectConfig("proj-1", "p", "", url, 100, Secret(key))


def listing(client: ApiClient, project: ProjectConfig, max_bytes: int = 1 << 20) -> PollError:
    try:
        with pytest.raises(PollError) as info:
            list(client.pages(project, 100, max_bytes))
        return info.value
    finally:
        client.close()
