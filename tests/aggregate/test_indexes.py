"""Bounded detail: sessions by index and failed runs by error class, capped by config."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.aggregate import Listing, RunTotals, SessionTracker, aggregate
from exporter.aggregate.indexes import Detail, IndexSets, pick_indexes
from exporter.config import ConfigError, load_config, parse_config
from tests.helpers import BACKTRACKING, REPO, WORDS, python_in_a_child, session

ENV = {"LLAMA_CLOUD_API_KEY": "llx-k"}


def detail(**raw: Any) -> Detail:
    return parse_config({"projects": [{"id": "p"}], "detail": raw}, ENV).detail


def detail_problems(**raw: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config({"projects": [{"id": "p"}], "detail": raw}, ENV)
    return info.value.problems


def bound(sid: str, *index_ids: str | None, **job: Any) -> dict[str, Any]:
    item = session(sid, **job)
    item["index_ids"] = None if index_ids == (None,) else list(index_ids)
    return item


def failed(sid: str, error: str | None) -> dict[str, Any]:
    return session(sid, is_error=True, error=error)


# ------------------------------------------------------------------------------ config


def test_defaults_cap_indexes_at_20_and_ship_common_error_classes() -> None:
    config = parse_config({"projects": [{"id": "p"}]}, ENV)
    assert config.detail.max_index_series == 20
    assert config.detail.class_names[-1] == "other"
    assert {"timeout", "rate_limit"} <= set(config.detail.class_names)
    assert detail(error_classes=[]).class_names == ("other",)


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
    ("raw", "problem"),
    [
        (
            {"error_classes": [{"name": "bad", "match": "(unclosed"}]},
            "detail.error_classes[0].match: invalid regular expression (RE2 syntax, as in "
            "Prometheus): missing ): (unclosed",
        ),
        ({"error_classes": [{"name": "x"}]}, "detail.error_classes[0].match: required"),
        (
            {"error_classes": [{"name": "Timeout!", "match": "t"}]},
            "detail.error_classes[0].name: must be a lowercase word",
        ),
        ({"error_classes": [{"name": "other", "match": "t"}]}, "name: other is reserved"),
        (
            {"error_classes": [{"name": "other\n", "match": "t"}]},
            "detail.error_classes[0].name: must be a lowercase word",
        ),
        (
            {"error_classes": [{"name": "a", "match": "x"}, {"name": "a", "match": "y"}]},
            "detail.error_classes[1].name: duplicate class a",
        ),
        (
            {"error_classes": [{"name": "a", "match": "x", "regex": "y"}]},
            "detail.error_classes[0].regex: unknown key",
        ),
        ({"error_classes": "timeout"}, "detail.error_classes: must be a list"),
        ({"max_index_series": -1}, "detail.max_index_series: must be between 0 and 1000"),
        ({"max_index_series": "20"}, "detail.max_index_series: must be a whole number"),
        ({"max_index_sereis": 5}, "detail.max_index_sereis: unknown key"),
    ],
)
def test_bad_detail_is_a_config_error_with_its_key_path(raw: dict[str, Any], problem: str) -> None:
    found = detail_problems(**raw)
    assert any(p.startswith(problem) or problem in p for p in found), found


def test_a_repeated_class_name_is_said_even_when_the_first_class_has_a_problem() -> None:
    """Every problem at once: the broken expression and the name used twice."""
    found = detail_problems(
        error_classes=[{"name": "a", "match": "("}, {"name": "a", "match": "x"}]
    )
    assert found == [
        "detail.error_classes[0].match: invalid regular expression (RE2 syntax, as in "
        "Prometheus): missing ): (",
        "detail.error_classes[1].name: duplicate class a",
    ]


@pytest.mark.parametrize(
    ("match", "reason"),
    [
        ("(?i)timed? ?out(?= after)", "invalid perl operator: (?="),  # lookahead
        ("(?<!no )timeout", "invalid perl operator: (?<!"),  # lookbehind
        (r"(\w+) \1", r"invalid escape sequence: \1"),  # backreference
        ("(?i)time++out", "bad repetition operator: ++"),  # possessive
        ("(?>time)out", "invalid perl operator: (?>"),  # atomic group
        ("timeout\\Z", r"invalid escape sequence: \Z"),  # RE2 spells it \z
    ],
)
def test_what_re2_cannot_run_in_linear_time_is_a_config_error(match: str, reason: str) -> None:
    """Never handed to a backtracking engine instead: the key path and RE2's reason."""
    classes = [
        {"name": "a", "match": "a"},
        {"name": "b", "match": "b"},
        {"name": "c", "match": match},
    ]
    assert detail_problems(error_classes=classes) == [
        f"detail.error_classes[2].match: invalid regular expression (RE2 syntax, as in "
        f"Prometheus): {reason}"
    ]


def test_an_expression_past_the_memory_bound_is_a_config_error() -> None:
    """Linear in the text, and in the expression's size: that is bounded too."""
    many = "|".join(r"(?:\w+\s?){1000}" + name for name in "abcdefghijklmnopqrst")
    assert detail_problems(error_classes=[{"name": "big", "match": many}]) == [
        "detail.error_classes[0].match: invalid regular expression (RE2 syntax, as in "
        "Prometheus): pattern too large - compile failed"
    ]
    three = "|".join(r"(?:\w+\s?){1000}" + name for name in "abc")
    assert (
        detail(error_classes=[{"name": "big", "match": three}]).classify("w " * 1000 + "c") == "big"
    )


def test_a_backtracking_class_classifies_4_kib_of_words_at_once() -> None:
    """In Python's re this search of the first 4 KiB of an error never ends (and holds the
    interpreter); in RE2 it is linear. A child process, so that a hang fails the test."""
    code = f"""
from exporter.config import parse_config
raw = {{"projects": [{{"id": "p"}}], "detail": {{"error_classes": [
    {{"name": "slow", "match": {BACKTRACKING!r}}}]}}}}
d = parse_config(raw, {ENV!r}).detail
print(d.classify({WORDS!r}), d.classify({WORDS!r} * 3), d.classify("upstream call: timeout"))
"""
    assert python_in_a_child(code).split() == ["other", "other", "slow"]


def test_re2_semantics_where_they_differ_from_python() -> None:
    d = detail(
        error_classes=[
            {"name": "word", "match": r"^\w+$"},  # \w is ASCII in RE2, as in Prometheus
            {"name": "letters", "match": r"^\pL+$"},
            {"name": "ending", "match": "end$"},  # $ is the end of the text only
        ]
    )
    assert d.classify("timeout") == "word"
    assert d.classify("délai") == "letters"
    assert d.classify("the end") == "ending"
    assert d.classify("the end\n") == "other"
    # A lone surrogate (the standard library's JSON parser lets one through) is still text.
    assert (
        detail(error_classes=[{"name": "t", "match": "(?i)timed out"}]).classify("\ud800 Timed out")
        == "t"
    )


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


def test_the_detail_section_reports_every_problem_at_once() -> None:
    problems = detail_problems(
        max_index_series=1.5, error_classes=[{"name": "a", "match": "["}, "b"]
    )
    assert len(problems) == 3, problems


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


def test_a_remembered_page_is_read_again_when_a_session_was_rebound_since() -> None:
    """A body read whole and met again unchanged is taken unread, unless one of its sessions
    is now bound otherwise (an incremental listing met it elsewhere in between)."""
    tracker = SessionTracker()
    first = [bound("a", "i1")]
    listing = Listing(tracker)
    listing.add(first, key="page-a")
    listing.add([bound("b", "i1")], key="page-c")  # i1 stays in use
    listing.finish()
    listing = Listing(tracker, cutoff=4e9)  # 2096: it stops after its first page
    assert listing.add([bound("a", "i2")], key="page-b")
    result = listing.finish()
    assert result.incremental  # which keeps the pages remembered before
    assert result.snapshot.by_index[:2] == (("i1", 1), ("i2", 1))
    listing = Listing(tracker)
    # page-a's body again, as it was: the tracker now says i2, so it must be parsed.
    assert listing.reuse("page-a") is None
    listing.add(first, key="page-a")
    assert listing.reuse("page-c") is not None  # unchanged, and nobody on it moved
    assert listing.finish().snapshot.by_index[0] == ("i1", 2)


def test_saved_index_sets_restore() -> None:
    tracker = SessionTracker()
    aggregate([[bound("a", "i1", "i2"), bound("b")]], tracker)
    rows = list(tracker.rows())
    assert sorted(r[-1] for r in rows) == [(), ("i1", "i2")]
    restored = SessionTracker(rows, tracker.state)
    result = aggregate([[bound("a", "i1", "i2"), bound("b")]], restored)
    assert result.snapshot.by_index == (("i1", 1), ("i2", 1), ("other", 0), ("none", 1))


def test_an_unreadable_saved_index_set_forces_a_full_listing() -> None:
    tracker = SessionTracker()
    aggregate([[bound("a", "i1")]], tracker)
    (row,) = tracker.rows()
    restored = SessionTracker([(*row[:-1], ("",))], tracker.state)
    assert not restored.state.ordered  # the next listing reads every page


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


def test_the_example_config_spells_out_the_built_in_classes() -> None:
    """config.example.yaml shows the classes a config without error_classes gets."""
    example = load_config(REPO / "config.example.yaml", ENV)
    shown = [(c.name, c.match.pattern) for c in example.detail.error_classes]
    assert shown == [(c.name, c.match.pattern) for c in Detail().error_classes]
    assert example.detail.max_index_series == Detail().max_index_series


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


def test_a_remembered_page_is_read_again_when_its_index_set_id_names_another_set() -> None:
    """Set ids are reused once no session holds them: a page remembered with the old meaning
    must not be taken unread for the new one."""
    tracker = SessionTracker()
    listing = Listing(tracker)
    listing.add([bound("s", "a")], key="page-p")  # s holds the first set id, for ("a",)
    listing.add([bound("t", "z")], key="page-t")
    listing.finish()
    listing = Listing(tracker, cutoff=4e9)  # incremental: page-p stays remembered
    listing.add([bound("s", "b")], key="page-q")  # ("a",) is held by nobody now: freed
    listing.finish()
    listing = Listing(tracker, cutoff=4e9)
    listing.add([bound("s", "c")], key="page-r")  # ("c",) takes the freed id
    listing.finish()
    listing = Listing(tracker)
    assert listing.reuse("page-p") is None  # s's id is page-p's again, meaning ("c",) now
    listing.add([bound("s", "a")], key="page-p")
    result = listing.finish()
    assert ("a", 1) in result.snapshot.by_index and ("c", 1) not in result.snapshot.by_index
