from __future__ import annotations

import itertools
import math
from datetime import datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.aggregate import (
    DURATION_BUCKETS,
    TOKEN_BUCKETS,
    Listing,
    RunTotals,
    RunTuple,
    SessionTracker,
    aggregate,
    fingerprint,
    read_run,
)
from tests.helpers import SESSION, session


def test_buckets_follow_the_genai_conventions() -> None:
    assert DURATION_BUCKETS[0] == 0.01
    assert DURATION_BUCKETS[-1] == 81.92
    assert all(b == pytest.approx(a * 2) for a, b in itertools.pairwise(DURATION_BUCKETS))
    assert TOKEN_BUCKETS[0] == 1
    assert TOKEN_BUCKETS[-1] == 67108864
    assert all(b == a * 4 for a, b in itertools.pairwise(TOKEN_BUCKETS))


@pytest.mark.parametrize(
    ("job", "status"),
    [
        (None, "never_run"),
        ({"is_error": True}, "error"),
        ({"is_error": True, "error": ""}, "error"),
        ({"is_error": False, "error": "boom"}, "ok"),
        ({"error": "boom"}, "error"),
        ({"is_error": None, "error": "boom"}, "error"),
        ({"is_error": None, "error": ""}, "ok"),
        ({"is_error": None, "error": None}, "ok"),
        ({}, "ok"),
    ],
)
def test_status_rule(job: dict[str, Any] | None, status: str) -> None:
    snap = aggregate([[{"session_id": "a", "job_metadata": job}]]).snapshot
    assert snap.by_status() == {"never_run": 0, "ok": 0, "error": 0, status: 1}


def utc(stamp: str) -> float:
    """Unix seconds of an ISO 8601 timestamp with a zone."""
    return datetime.fromisoformat(stamp).timestamp()


def run_of(job: Any) -> RunTuple | None:
    """(is_error, duration_ms, input, output, turns, fingerprint); None: never ran."""
    return None if job is None else read_run(job)


def test_example_session_from_the_api_reference() -> None:
    result = aggregate([[SESSION]])
    snap = result.snapshot
    assert (snap.never_run, snap.ok, snap.error) == (0, 1, 0)
    assert snap.input_tokens == 100
    assert snap.output_tokens == 20
    assert snap.turns == 2
    assert snap.duration_seconds == 1.5
    assert snap.last_updated == utc("2026-04-22T12:34:41.342245+00:00")


@pytest.mark.parametrize(
    "stamp",
    [
        "2026-04-22T12:34:41",
        "2026-04-22T12:34:41Z",
        "2026-04-22T12:34:41+00:00",
        "2026-04-22T14:34:41+02:00",
        "2026-04-22T12:34:41.000Z",
        "2026-04-22T12:34:41.0000000",
    ],
)
def test_timestamps_without_a_zone_are_utc(stamp: str) -> None:
    listed = {"session_id": "a", "last_updated_at": stamp}
    assert aggregate([[listed]]).snapshot.last_updated == 1776861281.0


def test_missing_null_and_unknown_fields_are_tolerated() -> None:
    items = [
        {"session_id": "a", "last_updated_at": "2026-01-01T00:00:00"},
        {"session_id": "b", "last_updated_at": None, "job_metadata": None, "new_field": [1]},
        {
            "session_id": "c",
            "job_metadata": {
                "duration_ms": None,
                "total_input_tokens": None,
                "turns": None,
                "something_new": {"x": 1},
            },
        },
    ]
    snap = aggregate([items]).snapshot
    assert (snap.never_run, snap.ok, snap.error, snap.invalid_items) == (2, 1, 0, 0)
    assert snap.input_tokens == 0
    assert snap.last_updated == utc("2026-01-01T00:00:00+00:00")


@pytest.mark.parametrize(
    "item",
    [
        "not an object",
        None,
        [1, 2],
        {"last_updated_at": "2026-01-01T00:00:00"},
        {"session_id": None},
        {"session_id": 12},
        {"session_id": ""},
        {"session_id": "x", "job_metadata": "yes"},
        {"session_id": "x", "job_metadata": {"total_input_tokens": "12"}},
        {"session_id": "x", "job_metadata": {"total_input_tokens": True}},
        {"session_id": "x", "job_metadata": {"total_output_tokens": -3}},
        {"session_id": "x", "job_metadata": {"duration_ms": float("nan")}},
        {"session_id": "x", "job_metadata": {"is_error": "true"}},
        {"session_id": "x", "job_metadata": {"error": 500}},
        {"session_id": "x", "last_updated_at": "yesterday"},
        {"session_id": "x", "last_updated_at": 1700000000},
    ],
)
def test_items_of_the_wrong_shape_are_skipped_and_counted(item: Any) -> None:
    result = aggregate([[item, session("good")]])
    assert result.snapshot.invalid_items == 1
    assert result.snapshot.sessions == 1
    assert result.snapshot.input_tokens == 100


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


def test_a_session_listed_twice_counts_once() -> None:
    result = aggregate([[session("a")], [session("a", turns=7), session("b")]])
    assert result.snapshot.sessions == 2
    assert result.snapshot.turns == 2 + 2  # the first listing of a counts, not the second


def test_restored_baseline_counts_from_the_first_poll() -> None:
    first = SessionTracker()
    aggregate([[session("a"), session("b")]], first)
    restored = SessionTracker(first.rows())
    result = aggregate([[session("a"), session("b", turns=5), session("c")]], restored)
    assert not result.baseline
    assert result.new_runs.runs == 2
    assert result.new_runs.sessions_created == 1


# Property tests ------------------------------------------------------------------------------

counts = st.one_of(st.none(), st.integers(0, 10**7), st.floats(0, 1e7, allow_nan=False))
jobs = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {},
        optional={
            "duration_ms": counts,
            "total_input_tokens": counts,
            "total_output_tokens": counts,
            "turns": counts,
            "is_error": st.one_of(st.none(), st.booleans()),
            "error": st.one_of(st.none(), st.text(max_size=5)),
        },
    ),
)
valid_items = st.builds(
    lambda sid, job: {"session_id": f"s{sid}", "job_metadata": job},
    st.integers(0, 50),
    jobs,
)
invalid_items = st.one_of(
    st.integers(),
    st.text(),
    st.builds(lambda j: {"job_metadata": j}, jobs),
    st.builds(lambda n: {"session_id": "bad", "job_metadata": {"turns": n}}, st.text()),
    st.builds(
        lambda n: {"session_id": "bad", "job_metadata": {"total_input_tokens": n}},
        st.integers(max_value=-1),
    ),
)


def _unique(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return list({item["session_id"]: item for item in items}.values())


@settings(max_examples=200, deadline=None)
@given(st.lists(valid_items, max_size=40).map(_unique), st.integers(1, 7))
def test_totals_equal_the_sum_of_the_parts(items: list[dict[str, Any]], page: int) -> None:
    pages = [items[i : i + page] for i in range(0, len(items), page)]
    snap = aggregate(pages).snapshot
    runs = [run_of(item["job_metadata"]) for item in items]
    assert snap.sessions == len(items)
    assert snap.never_run == sum(r is None for r in runs)
    assert snap.error == sum(r is not None and r[0] for r in runs)
    assert snap.input_tokens == pytest.approx(sum(r[2] or 0 for r in runs if r))
    assert snap.turns == pytest.approx(sum(r[4] or 0 for r in runs if r))
    # Splitting one listing into pages changes nothing.
    assert aggregate([items]).snapshot == snap


@settings(max_examples=200, deadline=None)
@given(
    st.lists(valid_items, max_size=30).map(_unique),
    st.lists(invalid_items, max_size=10),
    st.randoms(use_true_random=False),
)
def test_invalid_items_never_change_the_totals(
    items: list[dict[str, Any]], bad: list[Any], rnd: Any
) -> None:
    clean = aggregate([items]).snapshot
    mixed_items: list[Any] = [*items, *bad]
    rnd.shuffle(mixed_items)
    mixed = aggregate([mixed_items]).snapshot
    assert mixed.invalid_items == len(bad)
    assert (mixed.never_run, mixed.ok, mixed.error) == (clean.never_run, clean.ok, clean.error)
    assert mixed.input_tokens == pytest.approx(clean.input_tokens)
    assert mixed.turns == pytest.approx(clean.turns)


@settings(max_examples=100, deadline=None)
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


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), values, values, values, values), max_size=60))
def test_gauge_sums_are_the_correctly_rounded_sums_of_what_is_stored(
    writes: list[tuple[int, Any, Any, Any, Any]],
) -> None:
    """Overwrites subtract exactly what they replace: the sums never drift from fsum."""
    from exporter.aggregate.tracker import _Runs

    runs = _Runs()
    runs.grow(10)
    for slot, *fields in writes:
        runs.put(slot, *fields)
    stored = [runs.get(slot) for slot in range(10)]
    assert runs.sums() == tuple(math.fsum(column) for column in zip(*stored, strict=True))


def test_a_boolean_where_a_count_belongs_is_never_taken_for_an_unchanged_run() -> None:
    tracker = SessionTracker()
    aggregate([[session("a", turns=1)]], tracker)
    result = aggregate([[session("a", turns=True)]], tracker)
    assert result.snapshot.invalid_items == 1


# Exemplars ------------------------------------------------------------------------------------


def stamped(sid: str, when: str, **job: Any) -> dict[str, Any]:
    return dict(session(sid, **job), last_updated_at=when)


def test_exemplars_point_at_the_latest_run_counted() -> None:
    tracker = SessionTracker()
    aggregate([[session("old")]], tracker)
    result = aggregate(
        [
            [
                stamped("b", "2026-05-01T10:00:00Z", duration_ms=30, is_error=True),
                stamped("a", "2026-05-01T12:00:00Z", duration_ms=35),  # later, listed after
                stamped("c", "2026-05-01T09:00:00Z", duration_ms=5000, is_error=True),
                stamped("d", "2026-05-01T11:00:00Z", duration_ms=None),  # no duration
            ]
        ],
        tracker,
    )
    totals = result.new_runs
    noon = utc("2026-05-01T12:00:00+00:00")
    assert totals.runs_exemplar == ("a", 1.0, noon)
    assert totals.errors_exemplar == ("b", 1.0, utc("2026-05-01T10:00:00+00:00"))
    buckets = dict(zip((*DURATION_BUCKETS, math.inf), totals.duration.exemplars, strict=True))
    assert buckets[0.04] == ("a", 0.035, noon)  # 30 ms and 35 ms share it: the later wins
    assert buckets[5.12] == ("c", 5.0, utc("2026-05-01T09:00:00+00:00"))
    assert sum(e is not None for e in buckets.values()) == 2
    # Added to the totals, a later poll's exemplars replace older ones, bucket by bucket.
    later = aggregate([[stamped("a", "2026-05-02T00:00:00Z", duration_ms=5001)]], tracker)
    merged = totals + later.new_runs
    assert merged.runs_exemplar is not None and merged.runs_exemplar[0] == "a"
    assert merged.errors_exemplar == totals.errors_exemplar
    assert merged.duration.exemplars[DURATION_BUCKETS.index(5.12)][0] == "a"
    assert merged.duration.exemplars[DURATION_BUCKETS.index(0.04)] == buckets[0.04]


def test_a_stamped_run_is_later_than_one_without_a_stamp() -> None:
    tracker = SessionTracker()
    aggregate([[session("x")]], tracker)
    item = session("a")
    item["last_updated_at"] = None
    result = aggregate([[stamped("b", "2026-05-01T10:00:00Z"), item]], tracker)
    assert result.new_runs.runs_exemplar is not None
    assert result.new_runs.runs_exemplar[0] == "b"


def test_exemplars_survive_the_saved_form_and_bad_ones_are_dropped() -> None:
    tracker = SessionTracker()
    aggregate([[session("x")]], tracker)
    totals = aggregate([[stamped("a", "2026-05-01T10:00:00Z", is_error=True)]], tracker).new_runs
    data = totals.to_dict()
    assert RunTotals.from_dict(data) == totals
    data["exemplars"]["runs"] = ["a", float("nan"), 1.0]
    data["exemplars"]["errors"] = [7, 1.0, None]
    data["exemplars"]["duration"] = ["not", "a", "list", "of", "the", "right", "length"]
    restored = RunTotals.from_dict(data)
    assert (restored.runs_exemplar, restored.errors_exemplar) == (None, None)
    assert restored.duration.exemplars == ()
    assert restored.runs == totals.runs  # counters are kept whatever the exemplars were


def test_a_run_stamped_in_the_future_holds_the_exemplar_for_one_poll_only() -> None:
    tracker = SessionTracker()
    aggregate([[session("x")]], tracker)
    first = aggregate([[stamped("a", "2030-01-01T00:00:00Z")]], tracker).new_runs
    second = aggregate([[stamped("b", "2026-05-01T10:00:00Z")]], tracker).new_runs
    totals = RunTotals() + first + second
    assert totals.runs_exemplar is not None and totals.runs_exemplar[0] == "b"


@pytest.mark.parametrize(
    "saved",
    [
        ["s", 1.0, 10**400],  # float() overflows
        ["s", 10**400, None],
        ["\ud800", 1.0, None],  # cannot be encoded: would break every scrape
        ["", 1.0, None],
        ["s", "1", None],
        ["s", 1.0, float("inf")],
    ],
)
def test_a_bad_saved_exemplar_is_dropped(saved: list[Any]) -> None:
    data = RunTotals(runs=3).to_dict()
    data["exemplars"]["runs"] = saved
    restored = RunTotals.from_dict(data)
    assert restored.runs_exemplar is None and restored.runs == 3
