"""aggregate.listing: one listing's pass over the pages, items of every shape, and
incremental listings that stay exact.

The incremental part runs an in-process API with offset page tokens, listing newest first or in
creation order, whose sessions change between and *during* listings (a re-run moves a session
to page one, a creation shifts every later item down, a deletion shifts them up). Two trackers
poll copies of it that go through the same changes at the same points: one always reads every
page, the other plans incremental listings as the poller does. Whenever the incremental one
makes a full listing, its gauges and counters must be the full one's."""

from __future__ import annotations

import copy
import itertools
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import event as observe
from hypothesis import strategies as st

from exporter.aggregate import (
    Listing,
    ListingState,
    PollResult,
    RunTotals,
    RunTuple,
    SessionTracker,
    aggregate,
    read_run,
)
from tests.aggregate.helpers import (
    EPOCH,
    _unique,
    at,
    bound,
    invalid_items,
    jobs,
    newest_first,
    stamp,
    utc,
    valid_items,
)
from tests.helpers import SESSION, session


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
        "2026-04-22T12:34:41z",
        "2026-04-22T07:34:41-05:00",
        "2026-04-22T12:34:41+0000",
        "2026-04-22T12:34:41.0000000",
        "2026-04-22T12:34:41.0000000Z",
    ],
)
def test_timestamps_without_a_zone_are_utc(stamp: str) -> None:
    listed = {"session_id": "a", "last_updated_at": stamp}
    assert aggregate([[listed]]).snapshot.last_updated == 1776861281.0


def test_stamps_with_and_without_a_zone_are_ordered_in_utc() -> None:
    # Newest first in UTC, whatever each stamp's spelling: the listing stays in order.
    page = [
        {"session_id": "a", "last_updated_at": "2026-04-22T12:30:00"},
        {"session_id": "b", "last_updated_at": "2026-04-22T14:20:00+02:00"},
        {"session_id": "c", "last_updated_at": "2026-04-22T12:10:00Z"},
        {"session_id": "d", "last_updated_at": "2026-04-22T07:00:00-05:00"},
    ]
    tracker = SessionTracker()
    result = aggregate([page], tracker)
    assert tracker.state.ordered
    assert result.snapshot.last_updated == utc("2026-04-22T12:30:00+00:00")
    # One out of order by an hour (13:05 UTC after 12:30) turns the order off.
    late = {"session_id": "e", "last_updated_at": "2026-04-22T15:05:00+02:00"}
    tracker = SessionTracker()
    result = aggregate([[*page[:2], late, *page[2:]]], tracker)
    assert not tracker.state.ordered
    assert result.snapshot.last_updated == utc("2026-04-22T13:05:00+00:00")


def test_a_stamp_out_of_range_in_utc_is_an_invalid_item() -> None:
    items = [
        {"session_id": "a", "last_updated_at": "0001-01-01T00:30:00+01:00"},
        {"session_id": "b", "last_updated_at": "2026-01-01T00:00:00"},
    ]
    snap = aggregate([items]).snapshot
    assert (snap.never_run, snap.invalid_items) == (1, 1)


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


def test_a_session_listed_twice_counts_once() -> None:
    result = aggregate([[session("a")], [session("a", turns=7), session("b")]])
    assert result.snapshot.sessions == 2
    assert result.snapshot.turns == 2 + 2  # the first listing of a counts, not the second


@settings(deadline=None)
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


@settings(deadline=None)
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


def test_a_boolean_where_a_count_belongs_is_never_taken_for_an_unchanged_run() -> None:
    tracker = SessionTracker()
    aggregate([[session("a", turns=1)]], tracker)
    result = aggregate([[session("a", turns=True)]], tracker)
    assert result.snapshot.invalid_items == 1


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


# What a session's index_ids may be: none in three spellings, one, two, repeats, reordered.
BINDINGS: tuple[Any, ...] = (None, [], ["i1"], ["i1", "i2"], ["i2"], ["i2", "i1", "i1"], "gone")


@dataclass
class Api:
    """Sessions as the API lists them: ``items[offset:offset + size]`` is a page."""

    order: str
    items: list[dict[str, Any]] = field(default_factory=list)
    clock: float = 0.0
    created: int = 0

    def newest_first(self) -> bool:
        stamps = [datetime.fromisoformat(item["last_updated_at"]) for item in self.items]
        aware = [s if s.tzinfo else s.replace(tzinfo=timezone.utc) for s in stamps]
        return all(a >= b for a, b in itertools.pairwise(aware))

    def page(self, offset: int, size: int) -> tuple[list[dict[str, Any]], int | None]:
        end = offset + size
        return copy.deepcopy(self.items[offset:end]), end if end < len(self.items) else None

    def _fresh(self, job: Any) -> dict[str, Any]:
        self.created += 1
        item = {
            "session_id": f"s{self.created}",
            "last_updated_at": stamp(self.clock, naive=self.created % 3 == 0),
            "job_metadata": copy.deepcopy(job),
        }
        bind(item, self.created)
        return item

    def apply(self, event: tuple[Any, ...]) -> None:
        kind, where, job, dt = event
        self.clock += dt
        if kind == "create":
            item = self._fresh(job)
            if self.order == "newest-first":
                self.items.insert(0, item)
            else:
                self.items.append(item)
            return
        if not self.items:
            return
        index = where % len(self.items)
        if kind == "delete":
            del self.items[index]
            return
        item = self.items[index]
        naive = "+" not in item["last_updated_at"]
        item["last_updated_at"] = stamp(self.clock, naive=naive)
        if kind == "rerun":
            item["job_metadata"] = copy.deepcopy(job)
        elif kind == "rebind":  # bound to other indexes (which updates it, as any change)
            bind(item, where // 7)
        if self.order == "newest-first":
            self.items.insert(0, self.items.pop(index))


def bind(item: dict[str, Any], choice: int) -> None:
    binding = BINDINGS[choice % len(BINDINGS)]
    if binding == "gone":
        item.pop("index_ids", None)
    else:
        item["index_ids"] = copy.deepcopy(binding)


def by_index(items: list[dict[str, Any]]) -> tuple[tuple[str, int], ...]:
    """llamacloud_chat_sessions_by_index counted from scratch, every index shown."""
    counts: dict[str, int] = {}
    none = 0
    for item in items:
        indexes = set(item.get("index_ids") or ())
        none += not indexes
        for index_id in indexes:
            counts[index_id] = counts.get(index_id, 0) + 1
    shown = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return (*shown, ("other", 0), ("none", none))


def list_once(
    api: Api,
    tracker: SessionTracker,
    events: dict[int, list[tuple[Any, ...]]],
    page_size: int,
    cutoff: float | None,
    overlap: float,
    remember: bool = True,
) -> tuple[PollResult, int]:
    """One listing; ``events[k]`` happen after page k is read (0: before the first).

    With ``remember``, pages are keyed by their body as the poller does, so a body the last
    listing read whole is taken unread (:meth:`Listing.reuse`).
    """
    listing = Listing(tracker, cutoff, overlap)
    for event in events.get(0, ()):
        api.apply(event)
    offset: int | None = 0
    pages = 0
    while offset is not None:
        items, offset = api.page(offset, page_size)
        pages += 1
        body = json.dumps([items, offset])
        key = (len(body), hash(body)) if remember else None
        reused = listing.reuse(key) if key is not None else None
        if reused is not None:
            observe("a page taken unread")
            _token, empty, stop = reused
            assert empty == (not items)
        else:
            stop = listing.add(items, key, None)
        for event in events.get(pages, ()):
            api.apply(event)
        if stop or not items:
            break
    for k in sorted(events):  # what a shorter listing did not wait for happens anyway
        if k > pages:
            for event in events[k]:
                api.apply(event)
    return listing.finish(), pages


def gauges(result: PollResult) -> tuple[Any, ...]:
    s = result.snapshot
    return (
        s.by_status(),
        s.input_tokens,
        s.output_tokens,
        s.turns,
        s.duration_seconds,
        s.last_updated,
        s.by_index,
    )


changes = st.tuples(
    st.sampled_from(["rerun", "rerun", "touch", "rebind", "create", "create", "delete"]),
    st.integers(0, 1000),
    jobs,
    st.floats(0, 20),
)
# Per poll: the changes and after which page each happens (0: before the listing).
polls = st.lists(
    st.lists(
        st.tuples(st.integers(0, 6), changes).map(
            # Most deletions between listings: one during a listing ends the comparison.
            lambda p: (0, p[1]) if p[1][0] == "delete" and p[1][1] % 4 else p
        ),
        max_size=5,
    ),
    min_size=2,
    max_size=14,
)


@settings(
    max_examples=int(os.environ.get("INCREMENTAL_EXAMPLES", "100")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    order=st.sampled_from(["newest-first", "created"]),
    start=st.lists(changes.map(lambda c: ("create", 0, c[2], c[3])), max_size=30),
    history=polls,
    page_size=st.integers(1, 6),
    full_every=st.integers(2, 6),
    overlap=st.sampled_from([0.0, 5.0, 300.0]),
    interval=st.floats(0, 100),
)
def test_auto_equals_full_after_every_full_listing(
    order: str,
    start: list[tuple[Any, ...]],
    history: list[list[tuple[int, tuple[Any, ...]]]],
    page_size: int,
    full_every: int,
    overlap: float,
    interval: float,
) -> None:
    full_api = Api(order)
    for event in start:
        full_api.apply(event)
    auto_api = copy.deepcopy(full_api)
    full, auto, plain = SessionTracker(), SessionTracker(), SessionTracker()
    full_totals, auto_totals, plain_totals = RunTotals(), RunTotals(), RunTotals()
    plain_api = copy.deepcopy(full_api)
    full_pages = auto_pages = 0
    compared = 0
    previous_full = True
    for poll in history:
        events: dict[int, list[tuple[Any, ...]]] = {}
        for after, event in poll:
            events.setdefault(after, []).append(event)
        events.setdefault(0, []).insert(0, ("tick", 0, None, interval))
        a, n = list_once(full_api, full, events, page_size, None, overlap)
        full_totals += a.new_runs
        full_pages += n
        if list(events) == [0] and not a.missed and len(full) == len(full_api.items):
            # Nothing moved while it paged: the gauges are the listed items' own.
            assert a.snapshot.by_index == by_index(full_api.items)
        # Pages taken unread because their body did not change give what reading them gives.
        c, _ = list_once(plain_api, plain, events, page_size, None, overlap, remember=False)
        plain_totals += c.new_runs
        assert (gauges(a), full_totals, len(full), a.missed, a.removed) == (
            gauges(c),
            plain_totals,
            len(plain),
            c.missed,
            c.removed,
        )
        cutoff = auto.plan(auto=True, full_every=full_every, overlap=overlap)
        if cutoff is not None and not auto_api.newest_first():
            # Exact only while the API lists newest first: a created-order list can look
            # sorted by chance (one full listing in order turns incremental on) and is only
            # caught by a later listing. The newest-first runs are compared to the end.
            observe("incremental against a list not sorted newest first")
            break
        b, n = list_once(auto_api, auto, events, page_size, cutoff, overlap)
        auto_totals += b.new_runs
        auto_pages += n
        assert auto_api.items == full_api.items  # the same history for both
        live = {item["session_id"] for item in full_api.items}
        shifted = any(e[0] == "delete" for k, evs in events.items() if k > 0 for e in evs)
        if shifted and live - {sid for sid, *_ in full.rows()}:
            # A deletion while the listing paged shifted a session past it. Full listings
            # count it at the next poll; an incremental one only at the next full listing,
            # so a run it had in between is missed: the limit of offset tokens the README
            # states. Stop comparing here.
            observe("a listing skipped a session (a deletion shifted the pages)")
            break
        if live & {*a.removed, *b.removed}:
            # A session that moved during two listings in a row was missed by both and
            # dropped: it will count as created again. Full listings share that limit of
            # the two-listing rule, but not always at the same poll: stop comparing here.
            observe("a live session was dropped")
            break
        assert b.incremental <= (cutoff is not None)
        # A session deleted while auto read incrementally is first missed by auto's next full
        # listing, which is then followed by another: from there on they agree.
        if not b.incremental and (b.missed == 0 or previous_full):
            compared += 1
            assert gauges(b) == gauges(a)
            assert auto_totals == full_totals
            assert len(auto) == len(full)
        previous_full = not b.incremental
    assert auto_pages <= full_pages


def test_a_newest_first_listing_enables_incremental_and_stops_at_the_cutoff() -> None:
    tracker = SessionTracker()
    items = newest_first(1000)
    pages = [items[i : i + 100] for i in range(0, 1000, 100)]
    first = aggregate(pages, tracker)
    assert first.order_change == "incremental"
    assert tracker.state == ListingState(True, first.snapshot.last_updated, 0, False)
    cutoff = tracker.plan(auto=True, full_every=10, overlap=300)
    assert cutoff == first.snapshot.last_updated - 300
    # A change on page one. Page 4 (s699..s600) still holds s699, at the cutoff; page 5
    # is all older: the listing stops there.
    items[0] = at("s999", 999, turns=7)
    pages = [items[i : i + 100] for i in range(0, 1000, 100)]
    listing = Listing(tracker, cutoff, 300)
    stops = [listing.add(page) for page in pages[:5]]
    assert stops == [False, False, False, False, True]
    result = listing.finish()
    assert result.incremental and result.new_runs.runs == 1
    assert result.snapshot == aggregate(pages, SessionTracker()).snapshot


def test_an_order_broken_beyond_the_overlap_turns_incremental_off() -> None:
    tracker = SessionTracker()
    aggregate([newest_first(10)], tracker)
    cutoff = tracker.plan(auto=True, full_every=10, overlap=5)
    listing = Listing(tracker, cutoff, 5)
    # Within the overlap an increase is tolerated; beyond it the listing reads every page.
    assert not listing.add(newest_first(3, start=100) + newest_first(3, start=98))
    assert listing.incremental
    assert not listing.add(newest_first(2, start=50) + newest_first(2, start=200))
    assert not listing.incremental
    result = listing.finish()
    assert result.order_change == "full" and not result.incremental
    assert tracker.plan(auto=True, full_every=10, overlap=5) is None
    # A later full listing in order turns it back on.
    assert aggregate([newest_first(10, start=300)], tracker).order_change == "incremental"


def test_a_listing_out_of_order_never_turns_incremental_on() -> None:
    tracker = SessionTracker()
    result = aggregate([list(reversed(newest_first(10)))], tracker)
    assert result.order_change is None
    assert tracker.plan(auto=True, full_every=10, overlap=300) is None
    missing = [at("a", 5), at("b", None)]
    assert aggregate([missing], SessionTracker()).order_change is None


def test_a_session_stamped_in_the_future_never_hides_later_changes() -> None:
    tracker = SessionTracker()
    items = [at("future", 10**8), *newest_first(300)]
    aggregate([items[i : i + 100] for i in range(0, len(items), 100)], tracker)
    zero = EPOCH.timestamp()
    assert tracker.plan(auto=True, full_every=10, overlap=60) == zero + 10**8 - 60
    # Against the clock the cutoff is now less the overlap, not the future stamp's.
    assert tracker.plan(auto=True, full_every=10, overlap=60, now=zero + 250) == zero + 190
    listing = Listing(tracker, -1e20, 60)  # before year 1: a full listing, not a crash
    assert not listing.incremental


# A listing past 65,536 distinct index sets, where the slots' set ids move to a wider array.


def _bound_item(n: int) -> dict[str, object]:
    return {
        "session_id": f"s{n}",
        "last_updated_at": "2026-01-01T00:00:00Z",
        "shared_access": "query",
        "index_ids": [f"idx-{n}"],
        "job_metadata": {"is_error": False, "total_input_tokens": 1, "turns": 1},
    }


def test_a_page_past_65536_index_sets_with_a_session_listed_twice() -> None:
    items = [_bound_item(n) for n in range(70_000)]
    items.append(_bound_item(69_999))  # listed again in the same page, after the ids widened
    items.append(_bound_item(5))  # and one from before the widening
    tracker = SessionTracker()
    listing = Listing(tracker)
    listing.add(items)
    result = listing.finish()
    assert result.snapshot.sessions == 70_000
    assert result.snapshot.input_tokens == 70_000
    # The next listing of the same sessions keeps every one bound to its own index.
    again = Listing(tracker)
    again.add(items[:-2])
    second = again.finish()
    assert second.snapshot.sessions == 70_000
    assert sum(n for index_id, n in second.snapshot.by_index if index_id != "none") == 70_000
