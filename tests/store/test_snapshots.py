"""store.snapshots: the latest state of every project, swapped whole."""

from __future__ import annotations

from exporter.aggregate import SessionTracker, aggregate
from exporter.store import Store
from tests.helpers import project, session


def test_a_failed_poll_keeps_the_snapshot_and_counters() -> None:
    store = Store([project("p")])
    tracker = SessionTracker()
    store.record_success("p", aggregate([[session("a")]], tracker), duration=1, finished=10)
    store.record_success(
        "p",
        aggregate([[session("a", turns=4)]], tracker),
        duration=1,
        finished=20,
    )
    before = store.get("p")
    after = store.record_failure("p", "timeout", duration=2, finished=30)
    assert after.snapshot is before.snapshot
    assert after.totals is before.totals
    assert after.totals.runs == 1
    assert (after.up, after.last_success, after.last_poll_finished) == (False, 20, 30)
    assert dict(store.record_failure("p", "timeout", duration=2, finished=40).poll_errors) == {
        "timeout": 2
    }


def test_readers_get_whole_states_that_never_change() -> None:
    store = Store([project("p")])
    seen = store.projects()
    store.record_success("p", aggregate([[session("a")]]), duration=1, finished=10)
    assert seen[0].snapshot is None
    assert store.projects()[0].snapshot is not None


def test_api_requests_are_counted_by_code() -> None:
    store = Store()
    for code in ("200", "200", "503", "error"):
        store.count_request(code)
    assert store.api_requests() == {"200": 2, "503": 1, "error": 1}
