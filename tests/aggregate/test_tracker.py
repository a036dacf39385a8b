"""aggregate.tracker: what each session contributes between listings: the baseline, new
runs, sessions missed and forgotten, a failed poll undone, a restored state, the next plan."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.aggregate import Listing, SessionTracker, aggregate, fingerprint
from tests.aggregate.helpers import _unique, bound, newest_first, valid_items
from tests.helpers import session


def test_first_poll_sets_the_baseline_only() -> None:
    tracker = SessionTracker()
    result = aggregate([[session("a"), session("b", job=None)]], tracker)
    assert result.baseline
    assert result.new_runs.runs == 0
    assert result.new_runs.sessions_created == 0


def test_changed_job_metadata_is_a_new_run() -> None:
    tracker = SessionTracker()
    aggregate([[session("a"), session("b"), session("c", job=None)]], tracker)
    result = aggregate(
        [
            [
                session("a"),  # unchanged: no run
                session("b", total_input_tokens=300, is_error=True, error="boom", duration_ms=250),
                session("c", total_output_tokens=7),  # first run of a known session
                session("d", job=None),  # new, never run
                session("e", total_input_tokens=5),  # new, with a run
            ]
        ],
        tracker,
    )
    runs = result.new_runs
    assert runs.runs == 3
    assert runs.errors == 1
    assert runs.sessions_created == 2
    assert runs.input_tokens == 300 + 100 + 5
    assert runs.output_tokens == 20 + 7 + 20
    assert runs.turns == 6
    assert runs.duration.count == 3
    assert runs.duration.total == pytest.approx(0.25 + 1.5 + 1.5)
    # 0.25 s falls in the 0.32 bucket, 1.5 s in 2.56.
    assert dict(runs.duration.cumulative())[0.32] == 1
    assert dict(runs.duration.cumulative())[2.56] == 3
    assert dict(runs.input_usage.cumulative())[16.0] == 1  # 5 tokens
    assert dict(runs.input_usage.cumulative())[math.inf] == 3


def test_a_session_absent_from_two_full_listings_in_a_row_is_forgotten() -> None:
    tracker = SessionTracker()
    aggregate([[session(f"s{i}") for i in range(10)]], tracker)
    once = aggregate([[session("s0"), session("s1")]], tracker)
    # Absent once: it may have moved while the listing paged. Kept, gauges included.
    assert len(tracker) == 10
    assert once.snapshot.ok == 10
    assert once.missed == 8
    assert set(once.changed or ()) == {f"s{i}" for i in range(2, 10)}  # flags to save
    twice = aggregate([[session("s0"), session("s1"), session("s2")]], tracker)
    assert len(tracker) == 3
    assert twice.snapshot.ok == 3
    assert set(twice.removed) == {f"s{i}" for i in range(3, 10)}
    # A session that comes back after it was forgotten is new again.
    again = aggregate([[session("s0"), session("s5")]], tracker)
    assert again.new_runs.sessions_created == 1


def test_a_session_missed_once_and_back_is_never_created_again() -> None:
    tracker = SessionTracker()
    aggregate([[session("a"), session("b", job=None)]], tracker)
    aggregate([[session("a")]], tracker)  # b moved while the listing paged
    back = aggregate([[session("a"), session("b", turns=4)]], tracker)
    assert back.new_runs.sessions_created == 0
    assert back.new_runs.runs == 1  # its run changed: counted once
    assert back.snapshot.by_status() == {"never_run": 0, "ok": 2, "error": 0}
    again = aggregate([[session("a")], [session("b", turns=4)]], tracker)
    assert again.new_runs.runs == 0
    assert again.missed == 0


def test_a_failed_poll_leaves_the_tracker_as_it_was() -> None:
    tracker = SessionTracker()
    aggregate([[session("a"), session("b")]], tracker)
    listing = Listing(tracker)
    listing.add([session("a", turns=9), session("new")])
    tracker.rollback()
    result = aggregate([[session("a", turns=9), session("b"), session("new")]], tracker)
    assert result.new_runs.runs == 2
    assert result.new_runs.sessions_created == 1


def test_a_failed_baseline_poll_stays_a_baseline() -> None:
    tracker = SessionTracker()
    listing = Listing(tracker)
    listing.add([session("a")])
    tracker.rollback()
    assert len(tracker) == 0
    assert aggregate([[session("a")]], tracker).baseline


def test_restored_baseline_counts_from_the_first_poll() -> None:
    first = SessionTracker()
    aggregate([[session("a"), session("b")]], first)
    restored = SessionTracker(first.rows())
    result = aggregate([[session("a"), session("b", turns=5), session("c")]], restored)
    assert not result.baseline
    assert result.new_runs.runs == 2
    assert result.new_runs.sessions_created == 1


@settings(deadline=None)
@given(
    st.lists(valid_items, max_size=30).map(_unique),
    st.lists(valid_items, max_size=30).map(_unique),
)
def test_runs_counted_match_the_changes(
    before: list[dict[str, Any]], after: list[dict[str, Any]]
) -> None:
    tracker = SessionTracker()
    aggregate([before], tracker)
    result = aggregate([after], tracker)
    old = {item["session_id"]: item["job_metadata"] for item in before}
    expected_created = sum(item["session_id"] not in old for item in after)

    def fp(job: Any) -> int:
        return 0 if job is None else fingerprint(job)

    expected_runs = sum(
        item["job_metadata"] is not None
        and (
            item["session_id"] not in old or fp(old[item["session_id"]]) != fp(item["job_metadata"])
        )
        for item in after
    )
    assert result.new_runs.sessions_created == expected_created
    assert result.new_runs.runs == expected_runs
    assert result.new_runs.duration.count <= result.new_runs.runs
    # Absent sessions are kept once (they may have moved during the listing).
    assert len(tracker) == len(old.keys() | {item["session_id"] for item in after})
    assert result.snapshot.sessions == len(tracker)


values = st.one_of(
    st.none(),
    st.integers(0, 2**53 - 1),
    st.floats(0, 2**53, exclude_max=True, allow_nan=False, allow_subnormal=True),
)


@settings(deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), values, values, values, values), max_size=60))
def test_gauge_sums_are_the_correctly_rounded_sums_of_what_is_stored(
    writes: list[tuple[int, Any, Any, Any, Any]],
) -> None:
    """Overwrites subtract exactly what they replace: the sums never drift from fsum."""
    from exporter.aggregate.contributions import Runs

    runs = Runs()
    runs.grow(10)
    for slot, *fields in writes:
        runs.put(slot, *fields)
    stored = [runs.get(slot) for slot in range(10)]
    assert runs.sums() == tuple(math.fsum(column) for column in zip(*stored, strict=True))


def test_saved_index_sets_restore() -> None:
    tracker = SessionTracker()
    aggregate([[bound("a", "i1", "i2"), bound("b")]], tracker)
    rows = list(tracker.rows())
    assert sorted(r.index_ids for r in rows) == [(), ("i1", "i2")]
    restored = SessionTracker(rows, tracker.state)
    result = aggregate([[bound("a", "i1", "i2"), bound("b")]], restored)
    assert result.snapshot.by_index == (("i1", 1), ("i2", 1), ("other", 0), ("none", 1))


def test_an_unreadable_saved_index_set_forces_a_full_listing() -> None:
    tracker = SessionTracker()
    aggregate([[bound("a", "i1")]], tracker)
    (row,) = tracker.rows()
    restored = SessionTracker([row._replace(index_ids=("",))], tracker.state)
    assert not restored.state.ordered  # the next listing reads every page


def test_plan_full_every_nth_poll_and_after_a_miss() -> None:
    tracker = SessionTracker()
    aggregate([newest_first(5)], tracker)
    plans = []
    for _ in range(7):
        cutoff = tracker.plan(auto=True, full_every=3, overlap=0)
        plans.append(cutoff is not None)
        listing = Listing(tracker, cutoff, 0)
        items = newest_first(5)
        for page in (items[:2], items[2:]):
            if listing.add(page):
                break
        assert listing.finish().incremental == plans[-1]
    assert plans == [True, True, False, True, True, False, True]
    assert tracker.plan(auto=False, full_every=3, overlap=0) is None
    # A full listing that misses a session is followed by another full one.
    tracker = SessionTracker()
    aggregate([newest_first(5)], tracker)
    assert aggregate([newest_first(4)], tracker).missed == 1
    assert tracker.plan(auto=True, full_every=10, overlap=0) is None


def test_projects_started_together_list_in_full_at_different_polls() -> None:
    """The baseline counts as ``phase`` polls since a full listing: with full_listing_every
    10, phase 3 lists in full again after 6 incremental polls, and every 10 polls after."""
    items = newest_first(20)
    pages = [items[i : i + 5] for i in range(0, 20, 5)]

    def poll(cutoff: float | None) -> bool:
        listing = Listing(tracker, cutoff, 0.0, phase=3)
        for page in pages:
            if listing.add(page):
                break
        return listing.finish().incremental

    tracker = SessionTracker()
    poll(None)
    fulls = []
    for n in range(22):
        if not poll(tracker.plan(auto=True, full_every=10, overlap=0.0)):
            fulls.append(n)
    assert fulls == [6, 16]
