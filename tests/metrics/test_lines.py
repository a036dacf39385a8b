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
    st.integers(-(10**18), 10**18),
    st.floats(),  # NaN and the infinities too
    st.sampled_from([0, 10**6 - 1, 10**6, 999999.9999999999, True]),
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


# Between two renders: a poll that failed, one that listed these sessions, or a reload that
# renamed the project, changed its objective or the error classes.
EVENTS = st.one_of(
    st.tuples(st.just("failed")),
    st.tuples(st.just("listed"), polled_sessions()),
    st.tuples(st.just("renamed"), TEXT, st.none() | st.floats(0.0001, 1)),
    st.tuples(
        st.just("classes"),
        st.sampled_from([("timeout", "other"), ("quota", "timeout", "other"), ("other",)]),
    ),
)


@settings(max_examples=80, deadline=None)
@given(name=TEXT, org=TEXT, events=st.lists(EVENTS, min_size=1, max_size=6))
def test_every_family_is_written_as_prometheus_client_writes_it(
    name: str, org: str, events: list[Any]
) -> None:
    """After any sequence of polls and reloads, both text formats equal prometheus_client's
    of the same store: the lines a poll writes, and those it keeps of the state before (a
    group of families whose inputs did not change keeps its pieces)."""
    pid = 'p"1\\\n'
    store = Store([project(pid, name, organization_id=org), project("p2")])
    store.set_error_classes(("timeout", "other"))
    collector = StoreCollector(store)
    exposition = TextExposition(collector, store)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    tracker = SessionTracker()
    for i, (kind, *args) in enumerate(events):
        if kind == "failed":
            store.record_failure(pid, "timeout", duration=0.5 + i, finished=1e9 + i)
        elif kind == "listed":
            result = aggregate(args, tracker)
            store.record_success(pid, result, duration=0.25 * i, finished=1e9 + i)
        elif kind == "renamed":
            renamed, objective = args
            store.update_info(
                project(pid, renamed, organization_id=org, error_ratio_objective=objective)
            )
        else:
            store.set_error_classes(args[0])
        assert exposition.render() == generate_latest(registry)
        assert exposition.render(openmetrics=True) == openmetrics_latest(registry)


@given(NUMBER)
def test_a_value_is_written_as_go_writes_it(value: float) -> None:
    assert go_float(value) == floatToGoString(value)
