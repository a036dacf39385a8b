"""One poll's pass over the listed items: the hot loop, page by page.

:class:`Listing` folds each page into the tracker (what did not change since it was read is
only looked up), takes an unchanged page body unread, stops an incremental listing at its
cutoff, and at the end hands out the snapshot and the new runs.
"""

from __future__ import annotations

from array import array
from collections.abc import Hashable, Iterable
from datetime import datetime, timedelta, timezone
from typing import Any

from .indexes import Detail, InvalidIndexIds, index_series, pick_indexes
from .runs import (
    DURATION_BUCKETS,
    NEVER_RUN,
    TOKEN_BUCKETS,
    Exemplar,
    InvalidItem,
    PollResult,
    ProjectSnapshot,
    RunTotals,
    RunTuple,
    _HistogramBuilder,
    _parse_timestamp_slow,
    fingerprint,
    latest,
    read_run,
    utc_timestamp,
)
from .tracker import (
    _SLOT_BITS,
    _SLOT_MASK,
    _STATUS_MASK,
    MISSED,
    ListingState,
    SessionTracker,
    _packed,
    _PageSummary,
)


class Listing:
    """One poll's pass over the listed items: feed pages, then :meth:`finish`."""

    def __init__(
        self,
        tracker: SessionTracker,
        cutoff: float | None,
        overlap: float,
        detail: Detail,
        phase: int = 0,
    ) -> None:
        self._tracker = tracker
        self._detail = detail
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
        self._changed_flags: list[str] = []
        self._pages: dict[Hashable, _PageSummary] = {}  # read whole by this listing
        self._newest: datetime | None = None
        self._invalid = 0
        self._runs = 0
        self._errors = 0
        self._error_classes: dict[str, int] = {}
        self._runs_exemplar: Exemplar | None = None
        self._errors_exemplar: Exemplar | None = None
        self._created = 0
        self._new_input = 0.0
        self._new_output = 0.0
        self._new_turns = 0.0
        self._duration_hist = _HistogramBuilder(DURATION_BUCKETS)
        self._input_hist = _HistogramBuilder(TOKEN_BUCKETS)
        self._output_hist = _HistogramBuilder(TOKEN_BUCKETS)

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
        index = tracker._index
        seen = tracker._seen
        check_missed = tracker._missed > 0
        newest = self._newest
        entry = self._previous
        entry_unordered, entry_broken = self._unordered, self._broken
        # Order within the page first, then against the page before: what a page says about
        # order is a property of its body alone, and is remembered with it.
        self._unordered = self._broken = False
        previous: datetime | None = None
        first = page_newest = None
        cut_naive, cut_aware = self._cut_naive, self._cut_aware
        all_old = cut_aware is not None
        any_valid = missing = False
        invalid = seen_count = 0
        remember = key is not None
        nonempty = bool(items)
        slots: list[int] = []
        fps: list[int] = []  # fingerprint and index set of each session, for the page memo
        sets: list[int] = []
        indexes = tracker._indexes
        index_sets, set_lists = indexes.ids, indexes.lists
        by_key, intern = indexes.by_key, indexes.intern
        fromisoformat = datetime.fromisoformat
        slot_bits, slot_mask = _SLOT_BITS, _SLOT_MASK
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
                else:
                    # What is unchanged was checked when it was first read.
                    fp = fingerprint(job)
                    if value is None or value >> slot_bits != fp:
                        run = read_run(job, fp)
                if stamp is None:
                    updated = None
                elif type(stamp) is not str:
                    raise InvalidItem("last_updated_at is not a string")
                else:
                    try:
                        updated = fromisoformat(stamp)
                    except ValueError:
                        updated = _parse_timestamp_slow(stamp)
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
            except (InvalidItem, InvalidIndexIds, TypeError):
                invalid += 1
                continue
            any_valid = True
            if updated is None:
                self._unordered = self._broken = missing = True
                all_old = False
            else:
                if previous is None:
                    first = updated
                    if page_newest is None or _later(updated, page_newest):
                        page_newest = updated
                elif (
                    updated > previous
                    if (updated.tzinfo is None) is (previous.tzinfo is None)
                    else _later(updated, previous)
                ):
                    self._unordered = True
                    if page_newest is None or _later(updated, page_newest):
                        page_newest = updated
                    if _gap(previous, updated) > self._overlap:
                        self._broken = True
                previous = updated
                if all_old and updated >= (cut_naive if updated.tzinfo is None else cut_aware):  # type: ignore[operator]
                    all_old = False
            if value is None:
                slot = self._store(sid, None, fp, run, index_set)
                if self._counting:
                    self._created += 1
                    if run is not None:
                        self._count_run(run, job, sid, updated)
            else:
                slot = value & slot_mask
                if seen[slot]:  # listed twice: counted once
                    remember = False  # what a duplicate means depends on the pages before
                    continue
                seen[slot] = 1
                seen_count += 1
                if run is not None or value >> slot_bits != fp:
                    self._store(sid, value, fp, run, index_set)
                    if self._counting and run is not None:
                        self._count_run(run, job, sid, updated)
                elif check_missed and tracker._flags[slot] & MISSED:
                    # Absent from the last full listing, back now: it moved while that one
                    # paged.
                    if tracker._undo is not None:
                        tracker._undo.append((sid, value, slot, *tracker._slot(slot)))
                    tracker._flags[slot] &= ~MISSED
                    tracker._missed -= 1
                    self._changed_flags.append(sid)
                    if index_sets[slot] != index_set:
                        indexes.move(slot, index_set)
                elif index_sets[slot] != index_set:  # bound to other indexes, run unchanged
                    if tracker._undo is not None:
                        tracker._undo.append((sid, value, slot, *tracker._slot(slot)))
                    indexes.move(slot, index_set)
            if remember:
                slots.append(slot)
                fps.append(fp)
                sets.append(index_set)
        tracker._seen_count += seen_count
        self._invalid += invalid
        summary = _PageSummary(
            token,
            nonempty,
            any_valid,
            _packed(slots) if remember else range(0),  # what is not kept is not packed
            _memo_hash(fps, sets) if remember else 0,
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
        page: _PageSummary,
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

        Taken only when each of its sessions is tracked with the fingerprint it had on the
        page and not yet seen by this listing, and none is flagged missed: then reading it
        again would change nothing but the marks this makes.
        """
        page = self._tracker._pages.get(key)
        if page is None:
            return None
        tracker = self._tracker
        seen, flags = tracker._seen, tracker._flags
        slots = page.slots
        fps, index_sets = tracker._fps, tracker._indexes.ids
        if _memo_hash(map(fps.__getitem__, slots), map(index_sets.__getitem__, slots)) != page.fps:
            return None
        for slot in slots:
            if seen[slot] or flags[slot] & MISSED:
                return None
        for slot in slots:
            seen[slot] = 1
        tracker._seen_count += len(slots)
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

    def _store(
        self, sid: str, old: int | None, fp: int, run: RunTuple | None, index_set: int
    ) -> int:
        """Write a session's new fingerprint, contribution and index set, logging the old
        for undo."""
        tracker = self._tracker
        flags = tracker._flags
        indexes = tracker._indexes
        if old is None:
            tracker._seen_count += 1
            slot = tracker._free.pop() if tracker._free else tracker._new_slot()
            tracker._seen[slot] = 1
            if tracker._undo is not None:
                tracker._undo.append((sid, None, slot, 0, 0.0, 0.0, 0.0, 0.0, 0))
            indexes.ids[slot] = index_set
            indexes.counts[index_set] += 1
        else:
            slot = old & _SLOT_MASK
            if tracker._undo is not None:
                tracker._undo.append((sid, old, slot, *tracker._slot(slot)))
            if indexes.ids[slot] != index_set:
                indexes.move(slot, index_set)
            tracker._status[flags[slot] & _STATUS_MASK] -= 1
            if flags[slot] & MISSED:
                tracker._missed -= 1
                self._changed_flags.append(sid)
        tracker._index[sid] = (fp << _SLOT_BITS) | slot
        fresh = old is None
        if run is None:
            status = 0
            if not fresh:
                tracker._runs.put(slot, 0, 0, 0, 0)
        else:
            is_error, d, i, o, t, _ = run
            status = 2 if is_error else 1
            tracker._runs.put(slot, i, o, t, d, fresh)
        flags[slot] = status
        tracker._fps[slot] = fp
        tracker._status[status] += 1
        return slot

    def _count_run(self, run: RunTuple, job: Any, sid: str, updated: datetime | None) -> None:
        is_error, d, i, o, t, _ = run
        ts = None if updated is None else utc_timestamp(updated)
        self._runs += 1
        self._runs_exemplar = latest(self._runs_exemplar, (sid, 1.0, ts))
        if is_error:
            self._errors += 1
            self._errors_exemplar = latest(self._errors_exemplar, (sid, 1.0, ts))
            name = self._detail.classify(job.get("error"))
            self._error_classes[name] = self._error_classes.get(name, 0) + 1
        if i is not None:
            self._new_input += i
            self._input_hist.observe(i)
        if o is not None:
            self._new_output += o
            self._output_hist.observe(o)
        if t is not None:
            self._new_turns += t
        if d is not None:
            self._duration_hist.observe(d / 1000.0, sid, ts)

    def _last_updated(self) -> float | None:
        return None if self._newest is None else utc_timestamp(self._newest)

    def finish(self) -> PollResult:
        tracker = self._tracker
        baseline = not self._counting
        full = not self._stopped
        removed: list[str] = []
        missed: list[str] = []
        if full and len(tracker._index) != tracker._seen_count:
            seen = tracker._seen
            flags = tracker._flags
            for sid, value in list(tracker._index.items()):
                slot = value & _SLOT_MASK
                if seen[slot]:
                    continue
                if flags[slot] & MISSED:
                    tracker._missed -= 1
                    tracker._remove(sid, value)
                    removed.append(sid)
                else:
                    flags[slot] |= MISSED
                    tracker._missed += 1
                    missed.append(sid)
        tracker._indexes.release()
        if tracker._indexes.reused:
            # An index set id freed before names another set now: a page remembered by an
            # earlier listing that holds it would be taken for what it meant then. (This
            # listing's pages are sound: a slot's set changes only as its item is read.)
            tracker._pages = {} if removed else self._pages
            tracker._indexes.reused = False
        elif removed:
            tracker._pages = {}  # freed slots may be taken by other sessions
        elif full:
            tracker._pages = self._pages
        else:
            tracker._pages.update(self._pages)
        old = tracker.state
        newest = self._last_updated()
        if full:
            # Turned on by a listing in newest-first order; kept through a few races inside
            # the overlap, so sessions that move while it pages do not turn it off.
            ordered = not self._unordered or (old.ordered and not self._broken)
            ordered = ordered and newest is not None
            state = ListingState(ordered, newest, self._phase if baseline else 0, bool(missed))
        else:
            if newest is None or (old.newest is not None and old.newest > newest):
                newest = old.newest
            state = ListingState(True, newest, old.since_full + 1, False)
        change = None
        if state.ordered != old.ordered:
            change = "incremental" if state.ordered else "full"
        tracker.state = state
        if tracker._undo is None:
            changed = None
        else:
            names = dict.fromkeys(sid for sid, *_ in tracker._undo)
            names.update(dict.fromkeys(self._changed_flags))
            names.update(dict.fromkeys(missed))
            changed = tuple(sid for sid in names if sid in tracker._index)
        tracker._has_baseline = True
        tracker._undo = None
        tracker._seen = bytearray()  # a byte per session, needed only while a listing runs
        never_run, ok, error = tracker._status
        total_in, total_out, turns, duration_ms = tracker._runs.sums()
        unbound, per_index = tracker._indexes.by_index()
        tracker._shown = pick_indexes(per_index, tracker._shown, self._detail.max_index_series)
        snapshot = ProjectSnapshot(
            never_run=never_run,
            ok=ok,
            error=error,
            input_tokens=total_in,
            output_tokens=total_out,
            turns=turns,
            duration_seconds=duration_ms / 1000.0,
            last_updated=newest,
            invalid_items=self._invalid,
            by_index=index_series(unbound, per_index, tracker._shown),
        )
        new_runs = RunTotals(
            runs=self._runs,
            errors=self._errors,
            input_tokens=self._new_input,
            output_tokens=self._new_output,
            turns=self._new_turns,
            sessions_created=self._created,
            duration=self._duration_hist.build(),
            input_usage=self._input_hist.build(),
            output_usage=self._output_hist.build(),
            errors_by_class=tuple(sorted(self._error_classes.items())),
            runs_exemplar=self._runs_exemplar,
            errors_exemplar=self._errors_exemplar,
        )
        return PollResult(
            snapshot,
            new_runs,
            changed,
            tuple(removed),
            baseline,
            incremental=not full,
            missed=len(missed),
            order_change=change,
        )


def _memo_hash(fps: Iterable[int], sets: Iterable[int]) -> int:
    """What a remembered page's sessions must still hold for the page to be taken unread:
    their fingerprints and index sets, in order."""
    return hash((array("I", fps).tobytes(), array("I", sets).tobytes()))


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
    listing = (SessionTracker() if tracker is None else tracker).begin()
    for page in pages:
        listing.add(page)
    return listing.finish()
