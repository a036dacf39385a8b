"""One poll's pass over the listed items: the hot loop, page by page.

:class:`Listing` folds each page into a :class:`~.tracker.SessionTracker` (what did not change
since it was read is only looked up), takes an unchanged page body unread, stops an
incremental listing at its cutoff, and at the end hands out the snapshot and the new runs.
It reaches the tracker only through the members the tracker's docstring names.
"""

from __future__ import annotations

from array import array
from collections.abc import Hashable, Iterable
from datetime import datetime, timedelta, timezone
from typing import Any
from zlib import crc32

from .indexes import Detail, InvalidIndexIds
from .pages import PageSummary, memo_hash
from .runs import (
    FP_MASK,
    NEVER_RUN,
    InvalidItem,
    PollResult,
    RunCounter,
    RunTuple,
    fingerprint,
    naive_utc,
    parse_datetime_slow,
    read_run,
    utc_timestamp,
)
from .tracker import (
    MISSED,
    SLOT_BITS,
    SLOT_MASK,
    ListingState,
    SessionTracker,
)


class Listing:
    """One poll's pass over the listed items: feed pages, then :meth:`finish`."""

    def __init__(
        self,
        tracker: SessionTracker,
        cutoff: float | None = None,
        overlap: float = 300.0,
        detail: Detail | None = None,
        phase: int = 0,
        exact: bool = False,
    ) -> None:
        """Start a listing into ``tracker``; with ``cutoff`` (Unix seconds) it is incremental:
        it stops after a page whose sessions were all last updated before the cutoff.
        ``detail``: how many indexes keep their own series, and the error classes (the
        defaults when None). ``phase``: a baseline listing counts as that many polls since a
        full listing, so projects that start together do not all list in full at the same
        later poll. ``exact`` (``runs: exact``): a session that changed since it was counted is
        handed to the tracker to have its history read, and its run is not counted here;
        else the listed run is counted when it differs from the one seen last."""
        tracker.start()
        self._exact = exact
        self._tracker = tracker
        self._detail = Detail() if detail is None else detail
        self._phase = phase
        self._counting = tracker.has_baseline
        self._cut_aware = self._cut_naive = None
        if cutoff is not None:
            try:
                self._cut_aware = datetime.fromtimestamp(cutoff, timezone.utc)
            except (OverflowError, OSError, ValueError):  # before year 1: read every page
                cutoff = None
            else:
                self._cut_naive = self._cut_aware.replace(tzinfo=None)
        self._cutoff = cutoff
        self._overlap = timedelta(seconds=overlap)
        self._stopped = False
        self._unordered = False  # an item newer than the one before it, or without a stamp
        self._broken = False  # ... newer by more than the overlap, or without a stamp
        self._previous: datetime | None = None
        self._pages: dict[Hashable, PageSummary] = {}  # read whole by this listing
        self._newest: datetime | None = None
        self._invalid = 0
        self._created = 0
        self._counter = RunCounter(self._detail.classify)

    @property
    def incremental(self) -> bool:
        """Still reading up to a cutoff (an order break turns a listing into a full one)."""
        return self._cutoff is not None and not self._broken

    def add(
        self, items: Iterable[Any], key: Hashable | None = None, token: str | None = None
    ) -> bool:
        """Fold one page in; True when an incremental listing should stop here.

        Runs once per listed session, so it is written for speed: what did not change since
        it was first read (same fingerprint) is only looked up, not checked again; the
        newest timestamp is only compared where the order goes up (the first item, and any
        newer than the one before it, hold the maximum). With ``key`` (the page body's
        identity) and ``token`` (its next page token), the page is remembered so that the
        same body in the next listing costs a lookup per session (:meth:`reuse`).
        """
        tracker = self._tracker
        index = tracker.index
        seen = tracker.seen
        flags = tracker.flags
        versions = tracker.versions
        exact = self._exact
        check_versions = exact and tracker.state.versioned
        check_missed = tracker.missed > 0
        newest = self._newest
        entry = self._previous
        entry_unordered, entry_broken = self._unordered, self._broken
        # Order within the page first, then against the page before: what a page says about
        # order is a property of its body alone, and is remembered with it.
        self._unordered = self._broken = False
        previous: datetime | None = None
        first = page_newest = None
        cut_naive = self._cut_naive
        all_old = cut_naive is not None
        any_valid = missing = False
        invalid = 0
        remember = key is not None
        nonempty = bool(items)
        slots: list[int] = []
        fps: list[int] = []  # fingerprint and index set of each session, for the page memo
        sets: list[int] = []
        indexes = tracker.indexes
        index_sets, set_lists = indexes.ids, indexes.lists
        by_key, intern = indexes.by_key, indexes.intern
        fromisoformat = datetime.fromisoformat
        slot_bits, slot_mask = SLOT_BITS, SLOT_MASK
        for item in items:
            if type(item) is not dict:
                invalid += 1
                continue
            sid = item.get("session_id")
            if type(sid) is not str or not sid:
                invalid += 1
                continue
            job = item.get("job_metadata")
            stamp = item.get("last_updated_at")
            value = index.get(sid)
            run: RunTuple | None = None
            try:
                if job is None:
                    fp = NEVER_RUN
                elif type(job) is not dict:
                    raise InvalidItem("job_metadata is not an object")
                elif value is None:
                    run = read_run(job)
                    fp = run[5]
                else:
                    # What is unchanged was checked when it was first read.
                    fp = fingerprint(job)
                    if value >> slot_bits != fp:
                        run = read_run(job, fp)
                if stamp is None:
                    updated = None
                elif type(stamp) is not str:
                    raise InvalidItem("last_updated_at is not a string")
                else:
                    try:
                        updated = fromisoformat(stamp)
                    except ValueError:
                        updated = parse_datetime_slow(stamp)
                    # One kind of datetime in the loop, so every comparison below is a plain
                    # one: naive, in UTC (a naive against an aware one would raise).
                    if updated.tzinfo is not None:
                        updated = naive_utc(updated, stamp)
                # A tracked session mostly lists what it listed last time: one list compare.
                listed = item.get("index_ids")
                if listed is None:
                    index_set = 0
                elif type(listed) is not list:
                    raise InvalidItem("index_ids is not a list")
                elif not listed:
                    index_set = 0
                elif value is not None and listed == set_lists[index_sets[value & slot_mask]]:
                    index_set = index_sets[value & slot_mask]
                else:
                    index_set = by_key.get(tuple(listed), -1)
                    if index_set < 0:
                        index_set = intern(listed)
                        # Past 65,536 sets the slots' ids move to a wider array.
                        index_sets = indexes.ids
            except (InvalidItem, InvalidIndexIds, TypeError):
                invalid += 1
                continue
            # With exact counting a session's version holds its last_updated_at as well.
            ver = (
                (fp ^ crc32(stamp.encode("utf-8", "replace"))) & FP_MASK if exact and stamp else fp
            )
            any_valid = True
            if updated is None:
                self._unordered = self._broken = missing = True
                all_old = False
            else:
                if previous is None:
                    first = updated
                    if page_newest is None or updated > page_newest:
                        page_newest = updated
                elif updated > previous:
                    self._unordered = True
                    if page_newest is None or updated > page_newest:
                        page_newest = updated
                    if updated - previous > self._overlap:
                        self._broken = True
                previous = updated
                if all_old and updated >= cut_naive:  # type: ignore[operator]
                    all_old = False
            if value is None:
                slot = tracker.store(sid, None, fp, run, index_set, ver)
                if self._counting:
                    self._created += 1
                    if run is not None:
                        self._new_run(slot, sid, NEVER_RUN, run, job, updated)
            else:
                slot = value & slot_mask
                if seen[slot]:  # listed twice: counted once
                    remember = False  # what a duplicate means depends on the pages before
                    continue
                seen[slot] = 1
                old_fp = value >> slot_bits
                changed = run is not None or old_fp != fp
                if not changed and versions[slot] != ver:
                    if check_versions:
                        changed = True  # ran again with the same figures
                    else:  # versions of another kind until now: not a change
                        tracker.reversion(sid, value, ver)
                if changed:
                    tracker.store(sid, value, fp, run, index_set, ver)
                    if self._counting:
                        self._new_run(slot, sid, old_fp, run, job, updated)
                elif (check_missed and flags[slot] & MISSED) or index_sets[slot] != index_set:
                    # Run unchanged, but absent from the last full listing (it moved while
                    # that one paged) or bound to other indexes.
                    tracker.relist(sid, value, index_set)
            if remember:
                slots.append(slot)
                fps.append(ver)
                sets.append(index_set)
        self._invalid += invalid
        summary = PageSummary(
            token,
            nonempty,
            any_valid,
            _packed(slots) if remember else range(0),  # what is not kept is not packed
            memo_hash(fps, sets) if remember else 0,
            invalid,
            first,
            previous,
            page_newest,
            self._unordered,
            self._broken,
            missing,
        )
        if remember:
            self._pages[key] = summary
        return self._join(summary, entry, entry_unordered, entry_broken, all_old, newest)

    def _join(
        self,
        page: PageSummary,
        entry: datetime | None,
        entry_unordered: bool,
        entry_broken: bool,
        all_old: bool,
        newest: datetime | None,
    ) -> bool:
        """Fold a page's order and newest timestamp into the listing's; True: stop here."""
        unordered = entry_unordered or page.unordered
        broken = entry_broken or page.broken
        if entry is not None and page.first is not None and _later(page.first, entry):
            unordered = True
            broken = broken or _gap(entry, page.first) > self._overlap
        self._unordered, self._broken = unordered, broken
        if page.newest is not None and (newest is None or _later(page.newest, newest)):
            newest = page.newest
        self._newest = newest
        if page.last is not None:
            self._previous = page.last
        stop = all_old and page.valid and self.incremental
        self._stopped = self._stopped or stop
        return stop

    def reuse(self, key: Hashable) -> tuple[str | None, bool, bool] | None:
        """Take a page body the last listing read whole, unparsed: (its next page token,
        whether it had no items, whether to stop here), or None to have it parsed.

        Taken when reading it again would change nothing (:meth:`SessionTracker.take`).
        """
        page = self._tracker.take(key)
        if page is None:
            return None
        self._invalid += page.invalid
        self._pages[key] = page
        all_old = self._cut_aware is not None and not page.missing
        if all_old and page.newest is not None:
            cut = self._cut_naive if page.newest.tzinfo is None else self._cut_aware
            all_old = page.newest < cut  # type: ignore[operator]
        stop = self._join(
            page, self._previous, self._unordered, self._broken, all_old, self._newest
        )
        return page.token, not page.nonempty, stop

    def _new_run(
        self,
        slot: int,
        sid: str,
        old_fp: int,
        run: RunTuple | None,
        job: Any,
        updated: datetime | None,
    ) -> None:
        """A session met after the baseline changed, or is new: its history is to be read
        (exact), or its listed run is counted (latest)."""
        if self._exact:
            self._tracker.changed(sid, old_fp)
        elif run is not None:
            ts = None if updated is None else utc_timestamp(updated)
            self._counter.count(run, job.get("error"), sid, ts)
            self._tracker.uncounted(sid, slot)

    def _last_updated(self) -> float | None:
        return None if self._newest is None else utc_timestamp(self._newest)

    def finish(self) -> PollResult:
        tracker = self._tracker
        baseline = not self._counting
        full = not self._stopped
        removed, missed, changed, forgotten = tracker.end(full, self._pages)
        old = tracker.state
        newest = self._last_updated()
        if full:
            # Turned on by a listing in newest-first order; kept through a few races inside
            # the overlap, so sessions that move while it pages do not turn it off.
            ordered = not self._unordered or (old.ordered and not self._broken)
            ordered = ordered and newest is not None
            state = ListingState(
                ordered, newest, self._phase if baseline else 0, bool(missed), self._exact
            )
        else:
            if newest is None or (old.newest is not None and old.newest > newest):
                newest = old.newest
            state = ListingState(
                True, newest, old.since_full + 1, False, old.versioned and self._exact
            )
        change = None
        if state.ordered != old.ordered:
            change = "incremental" if state.ordered else "full"
        tracker.state = state
        snapshot = tracker.snapshot(self._detail.max_index_series, newest, self._invalid)
        new_runs = self._counter.totals(self._created)
        return PollResult(
            snapshot,
            new_runs,
            changed,
            tuple(removed),
            baseline,
            incremental=not full,
            missed=len(missed),
            order_change=change,
            forgotten=tuple(forgotten),
        )


def _packed(slots: list[int]) -> range | array[int]:
    """Slots as a range when they are consecutive (a page of sessions first seen together),
    else as an array of 4 bytes each."""
    if (
        slots
        and slots[-1] - slots[0] == len(slots) - 1
        and slots == list(range(slots[0], slots[-1] + 1))
    ):
        return range(slots[0], slots[-1] + 1)
    return array("I", slots)


def _later(a: datetime, b: datetime) -> bool:
    """a > b, where either may lack a zone (read as UTC)."""
    try:
        return a > b
    except TypeError:  # naive against aware
        return utc_timestamp(a) > utc_timestamp(b)


def _gap(earlier: datetime, later: datetime) -> timedelta:
    try:
        return later - earlier
    except TypeError:  # naive against aware: both are UTC
        return timedelta(seconds=utc_timestamp(later) - utc_timestamp(earlier))


def aggregate(pages: Iterable[Iterable[Any]], tracker: SessionTracker | None = None) -> PollResult:
    """All pages of one listing at once: the convenient form for tests and tools."""
    listing = Listing(SessionTracker() if tracker is None else tracker)
    for page in pages:
        listing.add(page)
    return listing.finish()
