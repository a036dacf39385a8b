"""metrics.lines: the sample lines the exposition caches, written without prometheus_client's
objects, are byte for byte what prometheus_client writes of the same families."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.registry import CollectorRegistry
from prometheus_client.utils import floatToGoString

from exporter.aggregate import SessionTracker, aggregate
from exporter.metrics import StoreCollector, TextExposition
from exporter.metrics.lines import go_float
from exporter.store import Store
from tests.helpers import project, session

# Label values with what the text formats escape, and any code point.
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
NUMBER = st.one_of(
    st.integers(0, 10**18), st.floats(0, 1e15, allow_nan=False), st.sampled_from([0, 10**6 - 1])
)


@st.composite
def polled_sessions(draw: st.DrawFn) -> list[dict[str, Any]]:
    items = []
    for n in range(draw(st.integers(0, 6))):
        job: dict[str, Any] = {
            "total_input_tokens": draw(st.integers(0, 10**12)),
            "total_output_tokens": draw(st.integers(0, 10**6)),
            "duration_ms": draw(st.integers(0, 10**9)),
            "turns": draw(st.integers(0, 50)),
        }
        if draw(st.booleans()):
            job.update(is_error=True, error=draw(st.sampled_from(["timed out", "quota", "x"])))
        item = session(f"s{n}-{draw(TEXT)}", **job)
        item["index_ids"] = draw(st.lists(TEXT.filter(bool), max_size=3, unique=True))
        items.append(item)
    return items


@settings(max_examples=60, deadline=None)
@given(
    name=TEXT,
    org=TEXT,
    objective=st.none() | st.floats(0.0001, 1),
    polls=st.lists(st.none() | polled_sessions(), min_size=1, max_size=3),
)
def test_every_family_is_written_as_prometheus_client_writes_it(
    name: str, org: str, objective: float | None, polls: list[list[dict[str, Any]] | None]
) -> None:
    store = Store(
        [
            project('p"1\\\n', name, organization_id=org, error_ratio_objective=objective),
            project("p2"),
        ]
    )
    store.set_error_classes(("timeout", "other"))
    collector = StoreCollector(store)
    exposition = TextExposition(collector, store)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    tracker = SessionTracker()
    for i, polled in enumerate(polls):
        if polled is None:
            store.record_failure('p"1\\\n', "timeout", duration=0.5 + i, finished=1e9 + i)
        else:
            result = aggregate([polled], tracker)
            store.record_success('p"1\\\n', result, duration=0.25 * i, finished=1e9 + i)
        assert exposition.render() == generate_latest(registry)
        assert exposition.render(openmetrics=True) == openmetrics_latest(registry)


@given(NUMBER)
def test_a_value_is_written_as_go_writes_it(value: float) -> None:
    assert go_float(value) == floatToGoString(value)
