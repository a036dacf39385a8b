"""metrics.collector: the collector renders the store and never reaches the API."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from exporter.aggregate import aggregate
from exporter.metrics import StoreCollector
from exporter.store import Store
from tests.helpers import parse_metrics, project, session, value


def test_a_project_removed_from_the_store_leaves_no_series() -> None:
    def render(pids: list[str]) -> str:
        store = Store([project(p) for p in pids])
        for p in pids:
            store.record_success(p, aggregate([[session("a")]]), duration=1, finished=1)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(StoreCollector(store))
        return generate_latest(registry).decode()

    assert 'project_id="gone"' in render(["kept", "gone"])
    text = render(["kept"])
    assert 'project_id="gone"' not in text
    assert value(parse_metrics(text), "llamacloud_up", project_id="kept") == 1


def test_help_texts_say_values_come_from_the_last_poll() -> None:
    store = Store([project("p")])
    store.record_success("p", aggregate([[session("a")]]), duration=1, finished=1)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store))
    helps = {
        line.split()[2]: line
        for line in generate_latest(registry).decode().splitlines()
        if line.startswith("# HELP llamacloud_chat")
    }
    assert helps
    assert all("last" in line and "poll" in line for line in helps.values()), helps
