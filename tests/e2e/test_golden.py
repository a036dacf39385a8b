"""A fixed data set in, the exact exposition text out: a renamed metric or label is a diff.

Set UPDATE_GOLDEN=1 to rewrite tests/golden/ after a deliberate change, and review the diff.
"""

from __future__ import annotations

import asyncio
import itertools
import os

from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from exporter.client import ApiClient
from exporter.config import Config, ProjectConfig, Secret
from exporter.metrics import StoreCollector
from exporter.poller import Poller
from exporter.simulator import DEFAULT_API_KEY, Simulator
from exporter.store import Store
from tests.helpers import TESTS, session

GOLDEN = TESTS / "golden"


def render(sim: Simulator, steps: list[dict[str, list[object]]]) -> str:
    projects = tuple(
        ProjectConfig(
            id=pid,
            name=name,
            organization_id=org,
            base_url=sim.base_url,
            page_size=2,
            api_key=Secret(DEFAULT_API_KEY),
        )
        for pid, name, org in (("alpha", "production", "org-1"), ("beta", "beta", ""))
    )
    config = Config(projects=projects, max_retries=0)
    store = Store()
    clock = itertools.count(1_767_225_600, 60)
    ticks = itertools.count(0, 0.25)

    async def run() -> None:
        client = ApiClient(max_retries=0, on_request=store.count_request)
        poller = Poller(
            config,
            store,
            client,
            clock=lambda: float(next(clock)),
            monotonic=lambda: float(next(ticks)),
        )
        try:
            for data in steps:
                for pid, items in data.items():
                    sim.set_sessions(pid, items)
                for project in projects:
                    await poller.poll(project)
        finally:
            client.close()

    asyncio.run(run())
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store))
    return generate_latest(registry).decode()


def check(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"exposition differs from {path}"


def test_golden_exposition(sim: Simulator) -> None:
    baseline = {
        "alpha": [
            session("a1"),
            session("a2", is_error=True, error="tool failed", total_input_tokens=5000),
            session("a3", job=None),
            {"session_id": "a4", "last_updated_at": "2026-04-23T08:00:00Z", "job_metadata": None},
            "not an object",
        ],
        "beta": [],
    }
    later = {
        "alpha": [
            session("a1", duration_ms=40_000, total_output_tokens=900, turns=12),
            session("a2", is_error=True, error="tool failed", total_input_tokens=5000),
            session("a3", is_error=None, error="quota exceeded", total_input_tokens=3),
            session("a5", total_input_tokens=70, duration_ms=90),
            {"session_id": "a6", "job_metadata": {"total_input_tokens": "lots"}},
            dict(session("a7", is_error=True, error="Request timed out"), index_ids=None),
            dict(session("a8"), index_ids=["idx-abc123"]),
        ],
        "beta": [session("b1", job=None)],
    }
    check("two_polls.prom", render(sim, [baseline, later]))
