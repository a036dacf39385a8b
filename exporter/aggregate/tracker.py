"""What each tracked session contributes, packed for memory, between listings.

:class:`SessionTracker` keeps, per project, each session's fingerprint, status and flags,
its most recent run and its bound indexes, with exact running sums; it plans the next
listing and undoes a failed one. A listing (:mod:`.listing`) reads pages into it through
the members its docstring names; this module knows nothing of listings.
"""

from __future__ import annotations

import zlib
from array import array
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

from .contributions import Runs
from .indexes import IndexSets, InvalidIndexIds, index_series, pick_indexes
from .pages import PageSummary, memo_hash
from .runs import FP_MASK, NEVER_RUN, ProjectSnapshot, RunTuple


class SavedSession(NamedTuple):
    """A session as the state file keeps it."""

    session_id: str
    fingerprint: int
    flags: int  # status | missed | runs counted (see ``SessionTracker``)
    input_tokens: float  # of its most recent run
    output_tokens: float
    turns: float
    duration_ms: float
    index_ids: tuple[str, ...]
    # What it was last listed with: the fingerprint, and with ``runs: exact`` its
    # last_updated_at too (:func:`version`); None: the fingerprint alone.
    version: int | None = None
    counted: int | None = None  # stop events of its history counted; None: unknown
    last_fp: int | None = None  # the last counted run's fingerprint, if not the listed one
    pending: bool = False  # changed since counted: its history is to be read


# Undo log entry: session id, its old index value (None: new), slot, old flags and run, its
# old index set and version.
_Undo = tuple[str, int | None, int, int, float, float, float, float, int, int]

# A tracked session's value in ``SessionTracker.index``: ``fingerprint << SLOT_BITS | slot``.
SLOT_BITS = 32
SLOT_MASK = (1 << SLOT_BITS) - 1
_STATUS_MASK = 3  # flags: 0 never_run, 1 ok, 2 error ...
MISSED = 4  # ... and absent from the last full listing (kept until absent from two)
# ... and in the high four bits the stop events of its history counted so far, 0 to 14; 15
# means more (kept in a dict) or unknown (a session of the baseline, or counted as latest).
COUNT_SHIFT = 4
_COUNT_ELSEWHERE = 15
_COUNT_MASK = _COUNT_ELSEWHERE << COUNT_SHIFT
_FLAG_BITS = _STATUS_MASK | MISSED | _COUNT_MASK
# A saved row of a session the last full listings dropped: not tracked, only where counting
# left off, should it come back (``SessionTracker._graves``).
DROPPED = 8


def version(fp: int, stamp: str) -> int:
    """What says that a session changed, with ``runs: exact``: its run's fingerprint and its
    ``last_updated_at`` (a run like the one before changes only the latter)."""
    return (fp ^ zlib.crc32(stamp.encode("utf-8", "replace"))) & FP_MASK


@dataclass(frozen=True, slots=True)
class ListingState:
    """What decides a project's next listing; kept in the state file."""

    ordered: bool = False  # the last full listing was newest first: incremental allowed
    newest: float | None = None  # newest last_updated_at of the last complete listing
    since_full: int = 0  # incremental listings since the last full one
    full_next: bool = False  # a full listing missed sessions: confirm with another
    # Sessions' versions hold their last_updated_at (a full listing with ``runs: exact``
    # wrote them): a version that differs then means a change.
    versioned: bool = False


class SessionTracker:
    """What each listed session contributes, per project, packed for memory.

    A dict maps each session id to ``fingerprint << SLOT_BITS | slot``; per slot, a byte holds
    the status, the missed flag and the runs counted, ``versions`` the version, and
    :class:`~.contributions.Runs` the most recent run's input and output tokens, turns and
    duration. Gauges are exact sums over those (correctly rounded, so the
    order sessions were met in never changes a value), which lets a listing that reads only
    what changed give the same gauges as one that reads it all.

    Updated in place as pages arrive, with an undo log so a poll that fails half way
    leaves it as it was.

    A listing calls :meth:`start`; its hot loop reads ``index``, ``flags``, ``versions`` and
    ``indexes`` directly (a method call per session would cost more than the rest of the
    loop) and marks each session it meets in ``seen``, and writes nothing else but through
    :meth:`store`, :meth:`relist`, :meth:`reversion`, :meth:`changed` and :meth:`uncounted`;
    it takes a remembered page with :meth:`take`, and ends with :meth:`end`, a new ``state``
    and :meth:`snapshot`. Reads of session histories (``runs: exact``) then take
    :meth:`to_read` and report with :meth:`read`, :meth:`drop_pending` and :meth:`requeue`.
    """

    __slots__ = (
        "_counted",
        "_free",
        "_graves",
        "_has_baseline",
        "_last",
        "_missed",
        "_pages",
        "_pending_undo",
        "_runs",
        "_saved_missed",
        "_saved_status",
        "_shown",
        "_status",
        "_top",
        "_undo",
        "flags",
        "index",
        "indexes",
        "pending",
        "seen",
        "state",
        "versions",
    )

    def __init__(
        self, sessions: Iterable[SavedSession] | None = None, state: ListingState | None = None
    ) -> None:
        """Restore a baseline from the sessions a state file saved."""
        self.index: dict[str, int] = {}  # session id: fingerprint << SLOT_BITS | slot
        self.flags = bytearray()  # by slot: status | MISSED | runs counted
        # Each slot's version (:func:`version`, or the fingerprint alone): what a listing
        # compares to see a change, and a remembered page is checked by.
        self.versions = array("I")
        self._counted: dict[str, int] = {}  # runs counted, where the flags cannot hold them
        # Sessions changed since they were counted, longest waiting first: their history is
        # to be read (``runs: exact``).
        self.pending: dict[str, None] = {}
        # The fingerprint of the last run counted, where it is not the one listed: the
        # session changed since, or a read counted a run the listing has not shown yet.
        self._last: dict[str, int] = {}
        self._pending_undo: list[tuple[str, bool]] = []
        # Sessions the last two full listings dropped, with where counting left off (stop
        # events counted, the last counted run's fingerprint): a live session that moved
        # during two listings in a row comes back and must not have its runs counted again.
        self._graves: tuple[dict[str, tuple[int | None, int]], ...] = ({}, {})
        self._runs = Runs()
        self.indexes = IndexSets()
        self._shown: tuple[str, ...] = ()  # indexes with their own series, most sessions first
        # Page bodies read whole by the last listings, by key: what reading one again gives.
        self._pages: dict[Hashable, PageSummary] = {}
        self._free: list[int] = []
        self._top = 0  # slots below it have been used; the rest of the capacity never was
        self._status = [0, 0, 0]
        self._missed = 0
        self.seen = bytearray()  # by slot: met by the listing under way
        self._undo: list[_Undo] | None = None
        self._saved_status: list[int] = []
        self._saved_missed = 0
        self._has_baseline = sessions is not None
        self.state = state if state is not None and self._has_baseline else ListingState()
        for row in sessions or ():
            sid, fp, flags, i, o, t, d, indexes, ver, counted, last_fp, pending = (
                row if type(row) is SavedSession else SavedSession(*row)
            )
            if flags & DROPPED:
                self._graves[1][sid] = (counted, fp if last_fp is None else last_fp)
                continue
            slot = self._new_slot()
            fp &= FP_MASK
            self.index[sid] = (fp << SLOT_BITS) | slot
            self.flags[slot] = flags & (_STATUS_MASK | MISSED)
            self._set_counted(sid, slot, counted)
            self.versions[slot] = fp if ver is None else ver & FP_MASK
            if last_fp is not None:
                self._last[sid] = last_fp & FP_MASK
            if pending:
                self.pending[sid] = None
            self._runs.put_new(slot, i, o, t, d)
            try:
                self.indexes.put(slot, indexes)
            except InvalidIndexIds:  # an edited file: the next listing reads every page
                self.indexes.put(slot, ())
                self.state = ListingState()
            self._status[flags & _STATUS_MASK] += 1
            if flags & MISSED:
                self._missed += 1

    def _new_slot(self) -> int:
        """A slot never used yet; capacity grows by a sixteenth at a time, not slot by slot."""
        if self._top == len(self.flags):
            more = max(64, self._top // 16)
            self.flags.extend(bytes(more))
            self.versions.extend(array("I", bytes(4 * more)))
            self.seen.extend(bytes(more))
            self._runs.grow(more)
            self.indexes.grow(more)
        self._top += 1
        return self._top - 1

    @property
    def has_baseline(self) -> bool:
        return self._has_baseline

    @property
    def missed(self) -> int:
        """How many sessions are flagged missed."""
        return self._missed

    def __len__(self) -> int:
        return len(self.index)

    def rows(self, names: Iterable[str] | None = None) -> Iterator[SavedSession]:
        """Saved form of every session, or of the named ones still tracked."""
        index = self.index
        if names is None:
            items: Iterable[tuple[str, int]] = index.items()
        else:
            items = ((sid, index[sid]) for sid in names if sid in index)
        indexes = self.indexes
        fps, last, pending = self.versions, self._last, self.pending
        for sid, value in items:
            slot = value & SLOT_MASK
            yield SavedSession(
                sid,
                value >> SLOT_BITS,
                self.flags[slot] & (_STATUS_MASK | MISSED),
                *self._runs.get(slot),
                indexes.sets[indexes.ids[slot]],
                fps[slot],
                self.counted(sid, slot),
                last.get(sid),
                sid in pending,
            )

    def grave_rows(self, names: Iterable[str] | None = None) -> Iterator[SavedSession]:
        """Saved form of the dropped sessions kept for a while (all, or the named ones)."""
        older, newer = self._graves
        for sid in (*older, *newer) if names is None else names:
            grave = newer.get(sid) or older.get(sid)
            if grave is not None and sid not in self.index:
                counted, last_fp = grave
                yield SavedSession(sid, last_fp, DROPPED, 0, 0, 0, 0, (), 0, counted)

    def plan(
        self, *, auto: bool, full_every: int, overlap: float, now: float | None = None
    ) -> float | None:
        """The cutoff of the next listing, or None for a full one.

        Incremental only in ``auto``, after a full listing showed newest-first order, and
        never for the ``full_every``-th poll or right after a full listing missed sessions.
        The cutoff is the last listing's newest ``last_updated_at`` less the overlap, or
        ``now`` less the overlap when that is earlier (a session stamped in the future must
        not hide the changes after it).
        """
        state = self.state
        if (
            not auto
            or not self._has_baseline
            or not state.ordered
            or state.full_next
            or state.newest is None
            or state.since_full + 1 >= full_every
        ):
            return None
        newest = state.newest if now is None else min(state.newest, now)
        return newest - overlap

    def start(self) -> None:
        """A listing begins: what it meets is marked in ``seen``, what it changes is logged
        for :meth:`rollback` (but in a baseline listing, which a rollback undoes whole)."""
        self.seen = bytearray(len(self.flags))
        self._undo = [] if self._has_baseline else None
        self._saved_status = list(self._status)
        self._saved_missed = self._missed
        self._pending_undo = []

    def store(
        self,
        sid: str,
        old: int | None,
        fp: int,
        run: RunTuple | None,
        index_set: int,
        ver: int | None = None,
    ) -> int:
        """Write a new or changed session (``old``: its value in ``index``, None when new): its
        fingerprint, contribution, index set and version (None: the fingerprint), logging
        the old for undo; its slot. A new session has no runs counted yet (after the
        baseline) or an unknown number (in the baseline)."""
        flags = self.flags
        indexes = self.indexes
        if old is None:
            slot = self._free.pop() if self._free else self._new_slot()
            self.seen[slot] = 1
            if self._undo is not None:
                self._undo.append((sid, None, slot, 0, 0.0, 0.0, 0.0, 0.0, 0, 0))
            indexes.ids[slot] = index_set
            indexes.counts[index_set] += 1
            counted = 0 if self._has_baseline else _COUNT_MASK
            grave = self._grave(sid)
            if grave is not None:  # back after two listings missed it: go on from there
                n, self._last[sid] = grave
                if n is None or n >= _COUNT_ELSEWHERE:
                    counted = _COUNT_MASK
                    if n is not None:
                        self._counted[sid] = n
                else:
                    counted = n << COUNT_SHIFT
        else:
            slot = old & SLOT_MASK
            if self._undo is not None:
                self._undo.append((sid, old, slot, *self._slot(slot)))
            if indexes.ids[slot] != index_set:
                indexes.move(slot, index_set)
            self._status[flags[slot] & _STATUS_MASK] -= 1
            if flags[slot] & MISSED:
                self._missed -= 1
            counted = flags[slot] & _COUNT_MASK
        self.index[sid] = (fp << SLOT_BITS) | slot
        fresh = old is None
        if run is None:
            status = 0
            if not fresh:
                self._runs.put(slot, 0, 0, 0, 0)
        else:
            is_error, d, i, o, t, _ = run
            status = 2 if is_error else 1
            if fresh:
                self._runs.put_new(slot, i, o, t, d)
            else:
                self._runs.put(slot, i, o, t, d)
        flags[slot] = status | counted
        self.versions[slot] = fp if ver is None else ver
        self._status[status] += 1
        return slot

    def _grave(self, sid: str) -> tuple[int | None, int] | None:
        if not (self._graves[0] or self._graves[1]):
            return None
        return self._graves[1].get(sid) or self._graves[0].get(sid)

    def counted(self, sid: str, slot: int) -> int | None:
        """How many stop events of the session's history are counted; None: unknown."""
        n = self.flags[slot] >> COUNT_SHIFT
        return n if n != _COUNT_ELSEWHERE else self._counted.get(sid)

    def _set_counted(self, sid: str, slot: int, n: int | None) -> None:
        if n is not None and n < _COUNT_ELSEWHERE:
            self._counted.pop(sid, None)
            field = n << COUNT_SHIFT
        else:
            if n is None:
                self._counted.pop(sid, None)
            else:
                self._counted[sid] = n
            field = _COUNT_MASK
        self.flags[slot] = (self.flags[slot] & ~_COUNT_MASK) | field

    def changed(self, sid: str, old_fp: int) -> None:
        """A listing met a tracked or new session that changed since it was counted (its
        fingerprint was ``old_fp``; NEVER_RUN for a new one): its history is to be read."""
        fresh = sid not in self._last
        if fresh:
            self._last[sid] = old_fp
        if sid not in self.pending:
            self.pending[sid] = None
            self._pending_undo.append((sid, fresh))

    def uncounted(self, sid: str, slot: int) -> None:
        """A listing counted the session's run itself (``runs: latest``): how many runs of its
        history are counted is not known any more."""
        self._set_counted(sid, slot, None)
        self._last.pop(sid, None)

    def to_read(self, limit: int) -> list[tuple[str, int, int | None]]:
        """The ``limit`` sessions waiting longest for a read: (id, fingerprint of the last
        run counted, stop events counted or None)."""
        out: list[tuple[str, int, int | None]] = []
        for sid in self.pending:
            if len(out) >= limit:
                break
            value = self.index.get(sid)
            if value is None:  # not tracked any more
                continue
            slot = value & SLOT_MASK
            out.append((sid, self._last.get(sid, value >> SLOT_BITS), self.counted(sid, slot)))
        return out

    def read(self, sid: str, counted: int, last_fp: int) -> None:
        """A read of the session's history counted its runs up to ``counted`` stop events, the
        last with fingerprint ``last_fp``."""
        self.pending.pop(sid, None)
        value = self.index.get(sid)
        if value is None:
            self._last.pop(sid, None)
            return
        self._set_counted(sid, value & SLOT_MASK, counted)
        if last_fp == value >> SLOT_BITS:
            self._last.pop(sid, None)
        else:
            self._last[sid] = last_fp

    def drop_pending(self, sid: str) -> None:
        """The session's history is gone (404): its changes are not counted."""
        self.pending.pop(sid, None)
        self._last.pop(sid, None)

    def requeue(self, sid: str) -> None:
        """A read failed: the session waits again, behind the others."""
        if self.pending.pop(sid, 0) is None:
            self.pending[sid] = None

    def take_pending_runs(self) -> list[tuple[str, RunTuple | None]]:
        """Every pending session, with its listed run where it differs from the last one
        counted, as ``runs: latest`` would have counted it (its error text is not kept:
        class ``other``), else None; none is pending afterwards."""
        out: list[tuple[str, RunTuple | None]] = []
        for sid in self.pending:
            value = self.index.get(sid)
            if value is None:
                continue
            fp, slot = value >> SLOT_BITS, value & SLOT_MASK
            if fp != NEVER_RUN and fp != self._last.get(sid, fp):
                i, o, t, d = self._runs.get(slot)
                is_error = self.flags[slot] & _STATUS_MASK == 2
                out.append((sid, (is_error, d, i, o, t, fp)))
            else:
                out.append((sid, None))
            self._set_counted(sid, slot, None)
            self._last.pop(sid, None)
        self.pending.clear()
        return out

    def relist(self, sid: str, value: int, index_set: int) -> None:
        """A session listed again with its run unchanged, but flagged missed (it moved while
        the last full listing paged: it is back) or bound to other indexes."""
        slot = value & SLOT_MASK
        if self._undo is not None:
            self._undo.append((sid, value, slot, *self._slot(slot)))
        if self.flags[slot] & MISSED:
            self.flags[slot] &= ~MISSED
            self._missed -= 1
        if self.indexes.ids[slot] != index_set:
            self.indexes.move(slot, index_set)

    def reversion(self, sid: str, value: int, ver: int) -> None:
        """A session's version, where versions did not hold its last_updated_at yet: not a
        change (see ``ListingState.versioned``)."""
        slot = value & SLOT_MASK
        if self._undo is not None:
            self._undo.append((sid, value, slot, *self._slot(slot)))
        self.versions[slot] = ver

    def take(self, key: Hashable) -> PageSummary | None:
        """The page body the last listings read whole under ``key``, its sessions marked seen,
        when reading it again would change nothing but those marks: each of its sessions
        tracked with the fingerprint and index set it had on the page, none seen yet by this
        listing nor flagged missed. Else None: it is to be read."""
        page = self._pages.get(key)
        if page is None:
            return None
        seen, flags = self.seen, self.flags
        slots = page.slots
        fps, index_sets = self.versions, self.indexes.ids
        if memo_hash(map(fps.__getitem__, slots), map(index_sets.__getitem__, slots)) != page.memo:
            return None
        for slot in slots:
            if seen[slot] or flags[slot] & MISSED:
                return None
        for slot in slots:
            seen[slot] = 1
        return page

    def end(
        self, full: bool, pages: dict[Hashable, PageSummary]
    ) -> tuple[list[str], list[str], tuple[str, ...] | None, list[str]]:
        """The listing under way ended; ``pages``: the bodies it read whole, to remember.

        A full listing drops the sessions it did not meet that were flagged missed, and flags
        the others it did not meet. Returns the sessions dropped, those flagged, those to
        save (written or flagged; None for all of them, after a baseline listing), and the
        dropped sessions forgotten for good (two full listings after they were dropped).
        """
        removed: list[str] = []
        missed: list[str] = []
        forgotten: list[str] = []
        if full and self._has_baseline:
            older, newer = self._graves
            forgotten = [sid for sid in older if sid not in self.index]
            self._graves = ({sid: g for sid, g in newer.items() if sid not in self.index}, {})
        if full and len(self.index) != self.seen.count(1):
            seen = self.seen
            flags = self.flags
            for sid, value in list(self.index.items()):
                slot = value & SLOT_MASK
                if seen[slot]:
                    continue
                if flags[slot] & MISSED:
                    self._missed -= 1
                    self._remove(sid, value)
                    removed.append(sid)
                else:
                    flags[slot] |= MISSED
                    self._missed += 1
                    missed.append(sid)
        self.indexes.release()
        if self.indexes.reused:
            # An index set id freed before names another set now: a page remembered by an
            # earlier listing that holds it would be taken for what it meant then. (This
            # listing's pages are sound: a slot's set changes only as its item is read.)
            self._pages = {} if removed else pages
            self.indexes.reused = False
        elif removed:
            self._pages = {}  # freed slots may be taken by other sessions
        elif full:
            self._pages = pages
        else:
            self._pages.update(pages)
        if self._undo is None:
            changed = None
        else:
            names = dict.fromkeys(sid for sid, *_ in self._undo)
            names.update(dict.fromkeys(missed))
            changed = tuple(sid for sid in names if sid in self.index)
        self._has_baseline = True
        self._undo = None
        self._pending_undo = []
        self.seen = bytearray()  # a byte per session, needed only while a listing runs
        return removed, missed, changed, forgotten

    def snapshot(
        self, max_index_series: int, last_updated: float | None, invalid_items: int
    ) -> ProjectSnapshot:
        """The gauges of every tracked session, as a listing ends; the indexes shown by name
        are picked again (one shown stays until another has more by the margin)."""
        never_run, ok, error = self._status
        total_in, total_out, turns, duration_ms = self._runs.sums()
        unbound, per_index = self.indexes.by_index()
        self._shown = pick_indexes(per_index, self._shown, max_index_series)
        return ProjectSnapshot(
            never_run=never_run,
            ok=ok,
            error=error,
            input_tokens=total_in,
            output_tokens=total_out,
            turns=turns,
            duration_seconds=duration_ms / 1000.0,
            last_updated=last_updated,
            invalid_items=invalid_items,
            by_index=index_series(unbound, per_index, self._shown),
        )

    def rollback(self) -> None:
        """Undo the listing under way: a failed poll changes nothing."""
        undo = self._undo
        self._undo = None
        for sid, fresh in reversed(self._pending_undo):
            self.pending.pop(sid, None)
            if fresh:
                self._last.pop(sid, None)
        self._pending_undo = []
        if undo is None:  # a failed baseline poll: start afresh
            self.index.clear()
            self._counted.clear()
            self._last.clear()
            self.pending.clear()
            self._free = []
            self._top = 0
            self.flags[:] = bytes(len(self.flags))
            self.versions[:] = array("I", bytes(4 * len(self.versions)))
            self._pages = {}
            self._runs.clear()
            self.indexes.clear()
            self._status = [0, 0, 0]
            self._missed = 0
            return
        indexes = self.indexes
        for sid, old, slot, flags, i, o, t, d, index_set, ver in reversed(undo):
            if old is None:
                del self.index[sid]
                self._last.pop(sid, None)
                self._counted.pop(sid, None)
                self._free.append(slot)
                self.versions[slot] = 0
                indexes.counts[indexes.ids[slot]] -= 1
                indexes.ids[slot] = 0
            else:
                self.index[sid] = old
                self.versions[slot] = ver
                indexes.move(slot, index_set)
            self.flags[slot] = flags
            self._runs.put(slot, i, o, t, d)
        self._status = self._saved_status
        self._missed = self._saved_missed

    def _slot(self, slot: int) -> tuple[int, float, float, float, float, int, int]:
        """A slot's flags, run, index set and version, as the undo log keeps them."""
        return (
            self.flags[slot],
            *self._runs.get(slot),
            self.indexes.ids[slot],
            self.versions[slot],
        )

    def _remove(self, sid: str, value: int) -> None:
        slot = value & SLOT_MASK
        del self.index[sid]
        self._graves[1][sid] = (self.counted(sid, slot), self._last.get(sid, value >> SLOT_BITS))
        self._counted.pop(sid, None)
        self._last.pop(sid, None)
        self.pending.pop(sid, None)
        self._status[self.flags[slot] & _STATUS_MASK] -= 1
        self.flags[slot] = 0
        self.versions[slot] = 0
        self._runs.put(slot, 0, 0, 0, 0)
        self.indexes.counts[self.indexes.ids[slot]] -= 1
        self.indexes.ids[slot] = 0
        self._free.append(slot)
