"""aggregate.runs: one run read from job_metadata, its status, the buckets, and what runs
add up to (totals, exemplars, their saved form)."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.aggregate import DURATION_BUCKETS, TOKEN_BUCKETS, RunTotals, SessionTracker, aggregate
from exporter.aggregate.contributions import Exact
from exporter.aggregate.runs import fingerprint, read_run
from tests.aggregate.helpers import utc
from tests.helpers import session


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


def test_errors_by_class_add_up_and_survive_the_state_file_form() -> None:
    a = RunTotals(errors=2, errors_by_class=(("other", 1), ("timeout", 1)))
    b = RunTotals(errors=3, errors_by_class=(("limit", 2), ("timeout", 1)))
    total = a + b
    assert total.errors_by_class == (("limit", 2), ("other", 1), ("timeout", 2))
    assert RunTotals.from_dict(total.to_dict()) == total
    edited = total.to_dict()
    del edited["errors_by_class"]  # every saved form has them
    with pytest.raises(ValueError, match="errors_by_class: missing"):
        RunTotals.from_dict(edited)


_count = st.one_of(st.none(), st.integers(0, 2**53 - 1), st.floats(0, 2.0**53, exclude_max=True))
_job = st.fixed_dictionaries(
    {},
    optional={
        "duration_ms": _count,
        "total_input_tokens": _count,
        "total_output_tokens": _count,
        "turns": _count,
        "error": st.one_of(st.none(), st.text(max_size=5)),
        "is_error": st.one_of(st.none(), st.booleans()),
    },
)


@given(_job)
def test_a_run_read_whole_has_the_fingerprint_a_listing_compares(job: dict[str, Any]) -> None:
    # A new session's run is read whole; a known one's is compared by fingerprint alone.
    assert read_run(job)[5] == fingerprint(job)


@given(st.lists(st.floats(0, 2.0**53, exclude_max=True) | st.integers(0, 2**60), max_size=30))
def test_an_exact_sum_is_the_correctly_rounded_sum(values: list[float]) -> None:
    total = Exact()
    for value in values:
        total.add(value)
    for value in values[::2]:
        total.add(value, -1)
    kept = values[1::2]
    assert total.value() == float(sum(Fraction(v) for v in kept))
