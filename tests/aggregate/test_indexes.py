"""aggregate.indexes: bounded detail, sessions by index and failed runs by error class,
capped by config."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.aggregate import Listing, SessionTracker, aggregate
from exporter.aggregate.indexes import Detail, IndexSets, pick_indexes
from tests.aggregate.helpers import bound, detail
from tests.helpers import session


def failed(sid: str, error: str | None) -> dict[str, Any]:
    return session(sid, is_error=True, error=error)


def test_error_classes_are_taken_in_order() -> None:
    d = detail(
        error_classes=[
            {"name": "timeout", "match": "(?i)timed? ?out"},
            {"name": "anything", "match": "."},
        ]
    )
    assert d.class_names == ("timeout", "anything", "other")
    assert d.classify("Request TIMED OUT after 30 s") == "timeout"
    assert d.classify("Index not found") == "anything"  # the first match wins
    assert d.classify("") == "other"
    assert d.classify(None) == "other"


def test_only_the_start_of_a_long_error_is_matched() -> None:
    d = detail(error_classes=[{"name": "late", "match": "needle"}])
    assert d.classify("x" * 5000 + "needle") == "other"
    assert d.classify("needle" + "x" * 5000) == "late"


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("Timed out while retrieving nodes", "timeout"),
        ("context deadline exceeded", "timeout"),
        ("Rate limit exceeded by the model provider", "rate_limit"),
        ("429 Too Many Requests", "rate_limit"),
        ("Context length exceeded", "context_length"),
        ("prompt has too many tokens", "context_length"),
        ("Index not found", "not_found"),
        ("The index does not exist", "not_found"),
        ("Internal server error", "server_error"),
        ("502 Bad Gateway", "server_error"),
        ("Model returned an empty response", "other"),
    ],
)
def test_the_built_in_classes_name_the_usual_errors(text: str, name: str) -> None:
    assert Detail().classify(text) == name


# ------------------------------------------------------------------------ by index


def test_sessions_count_under_each_index_they_are_bound_to() -> None:
    result = aggregate(
        [
            [
                bound("a", "i1", "i2"),
                bound("b", "i1"),
                bound("c", "i1", "i1"),  # a repeat counts once
                bound("d", None),
                bound("e"),  # []
                {k: v for k, v in session("f").items() if k != "index_ids"},
            ]
        ]
    )
    assert result.snapshot.by_index == (("i1", 3), ("i2", 1), ("other", 0), ("none", 3))


@pytest.mark.parametrize(
    "index_ids",
    ["i1", {"i1": 1}, [1], [None], [""], ["x" * 257], ["line\nbreak"], [["nested"]]],
)
def test_index_ids_of_the_wrong_shape_make_the_item_invalid(index_ids: Any) -> None:
    item = dict(session("a"), index_ids=index_ids)
    result = aggregate([[item, bound("b", "i1")]])
    assert result.snapshot.invalid_items == 1
    assert result.snapshot.by_index == (("i1", 1), ("other", 0), ("none", 0))


def test_indexes_past_the_cap_are_summed_as_other() -> None:
    items = [bound(f"s{i}", f"i{i % 5}") for i in range(15)] + [bound("x", "i0", "i1")]
    tracker = SessionTracker()
    listing = Listing(tracker, detail=Detail(max_index_series=2))
    listing.add(items)
    result = listing.finish()
    # i0 and i1 have 4 sessions each, the rest 3: "other" sums them (a session in two
    # indexes past the cap would count twice, as it does in two shown ones).
    assert result.snapshot.by_index == (("i0", 4), ("i1", 4), ("other", 9), ("none", 0))
    listing = Listing(tracker, detail=Detail(max_index_series=0))
    listing.add(items)
    assert listing.finish().snapshot.by_index == (("other", 17), ("none", 0))


def test_an_index_named_like_a_catch_all_series_stays_in_other() -> None:
    result = aggregate([[bound("a", "none"), bound("b", "other"), bound("c")]])
    assert result.snapshot.by_index == (("other", 2), ("none", 1))


def test_shown_indexes_do_not_flap() -> None:
    counts = {"a": 100, "b": 50, "c": 49}
    shown = pick_indexes(counts, (), 2)
    assert shown == ("a", "b")
    # c overtakes b by a little: b keeps its series.
    assert pick_indexes({"a": 100, "b": 50, "c": 52}, shown, 2) == ("a", "b")
    # ... by more than the margin: c takes it.
    assert pick_indexes({"a": 100, "b": 50, "c": 56}, shown, 2) == ("a", "c")
    # An index with no sessions left gives its place up at once.
    assert pick_indexes({"a": 100, "c": 1}, shown, 2) == ("a", "c")
    # A lower cap keeps the biggest of the shown.
    assert pick_indexes(counts, ("b", "a"), 1) == ("a",)


@given(
    st.dictionaries(st.sampled_from("abcdefgh"), st.integers(1, 50)),
    st.lists(st.sampled_from("abcdefgh"), unique=True),
    st.integers(0, 5),
)
def test_the_picked_indexes_are_capped_and_listed(
    counts: dict[str, int], shown: list[str], limit: int
) -> None:
    picked = pick_indexes(counts, shown, limit)
    assert len(picked) == min(limit, len(counts))
    assert set(picked) <= set(counts)
    assert list(picked) == sorted(picked, key=lambda i: (-counts[i], i))
    # No index left out has more than the margin over the smallest shown.
    if picked:
        smallest = counts[picked[-1]]
        assert all(
            counts[i] < smallest + max(2, smallest * 0.1) or i in shown
            for i in counts
            if i not in picked
        )


def test_a_rebound_session_moves_and_a_failed_poll_moves_it_back() -> None:
    tracker = SessionTracker()
    aggregate([[bound("a", "i1"), bound("b", "i1")]], tracker)
    listing = Listing(tracker)
    listing.add([bound("a", "i2"), bound("new", "i3")])
    tracker.rollback()
    result = aggregate([[bound("a", "i1"), bound("b", "i1")]], tracker)
    assert result.snapshot.by_index == (("i1", 2), ("other", 0), ("none", 0))
    assert result.changed == ()  # nothing to save: the rollback left it as it was
    result = aggregate([[bound("a", "i2"), bound("b", "i1")]], tracker)
    assert result.snapshot.by_index == (("i1", 1), ("i2", 1), ("other", 0), ("none", 0))
    assert result.changed == ("a",)  # saved: a restart must know it moved
    assert result.new_runs.runs == 0  # binding another index is not a run


def test_removed_sessions_leave_their_indexes() -> None:
    tracker = SessionTracker()
    aggregate([[bound("a", "i1"), bound("b", "i2")]], tracker)
    aggregate([[bound("b", "i2")]], tracker)  # missed once: still counted
    result = aggregate([[bound("b", "i2")]], tracker)
    assert result.removed == ("a",)
    assert result.snapshot.by_index == (("i2", 1), ("other", 0), ("none", 0))


def test_index_sets_free_what_no_session_holds() -> None:
    sets = IndexSets()
    sets.grow(4)
    first = sets.intern(["i1"])
    sets.ids[0] = first
    sets.counts[first] += 1
    sets.move(0, 0)
    assert sets.release()
    assert not sets.release()  # already free
    assert sets.intern(["i2"]) == first  # the id is taken again
    assert sets.sets[first] == ("i2",)


# ----------------------------------------------------------------------- error classes


def test_failed_runs_are_counted_by_class() -> None:
    d = Detail(
        error_classes=detail(
            error_classes=[
                {"name": "timeout", "match": "(?i)timed? ?out"},
                {"name": "limit", "match": "(?i)rate limit"},
            ]
        ).error_classes
    )
    tracker = SessionTracker()
    listing = Listing(tracker, detail=d)
    listing.add([session("a"), session("b")])
    listing.finish()  # the baseline: nothing counted
    listing = Listing(tracker, detail=d)
    listing.add(
        [
            failed("a", "Request timed out"),
            failed("b", "Rate limit exceeded"),
            failed("c", "Timeout"),
            failed("d", None),  # is_error without a text
            session("e", is_error=None, error="boom"),  # an error by its text alone
            session("f", error="ignored", is_error=False),  # not a failed run
        ]
    )
    result = listing.finish()
    assert result.new_runs.errors == 5
    assert result.new_runs.errors_by_class == (("limit", 1), ("other", 2), ("timeout", 2))


def swap_one_at_a_time(counts: dict[str, int], shown: list[str], limit: int) -> tuple[str, ...]:
    """pick_indexes as its rule reads: swap the weakest shown for the strongest of the rest
    while the margin holds, sorting again after each swap."""
    kept = [i for i in shown if counts.get(i, 0) > 0][:limit]
    rest = sorted((i for i in counts if i not in kept), key=lambda i: (-counts[i], i))
    while rest and len(kept) < limit:
        kept.append(rest.pop(0))
    while rest and kept:
        kept.sort(key=lambda i: (counts[i], i))
        weakest = counts[kept[0]]
        if counts[rest[0]] < weakest + max(2, weakest * 0.1):
            break
        kept[0], rest[0] = rest[0], kept[0]
        rest.sort(key=lambda i: (-counts[i], i))
    return tuple(sorted(kept, key=lambda i: (-counts[i], i)))


@given(
    st.dictionaries(st.sampled_from("abcdefghijklmnop"), st.integers(1, 40)),
    st.lists(st.sampled_from("abcdefghijklmnopq"), unique=True),
    st.integers(0, 8),
)
def test_one_pass_picks_what_swapping_one_at_a_time_picks(
    counts: dict[str, int], shown: list[str], limit: int
) -> None:
    assert pick_indexes(counts, shown, limit) == swap_one_at_a_time(counts, shown, limit)


def test_picking_among_many_indexes_takes_one_sort() -> None:
    """50,000 indexes, 1,000 shown and all overtaken: the strongest 1,000 take their place."""
    counts = {f"i{n}": n for n in range(50_000)}
    shown = [f"i{n}" for n in range(1, 1001)]
    picked = pick_indexes(counts, shown, 1000)
    assert picked[0] == "i49999" and len(picked) == 1000
