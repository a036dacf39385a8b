"""Bounded detail: which indexes listed sessions are bound to, and what kind of error a run had.

Both become label values, so both are capped by config: a project shows at most
``detail.max_index_series`` indexes by name (the rest summed as ``other``), and an error's text
only picks one of the configured class names (else ``other``); no text from the API is ever
a label value beyond an index id that made the cut.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..patterns import Pattern, compile_pattern

NONE = "none"  # sessions bound to no index
OTHER = "other"  # indexes past the cap; errors that match no class
DEFAULT_MAX_INDEX_SERIES = 20
MAX_INDEX_ID_LENGTH = 256  # an index id longer than this makes the item invalid
# Only the start of an error's text is matched: even in linear time (RE2), a regular
# expression's cost must not follow whatever length the API sends.
ERROR_TEXT_LIMIT = 4096
# An index outside the shown ones replaces the smallest shown one only when it has this
# much more (a share, and at least this many sessions), so series do not flap.
SWAP_MARGIN = 0.1
SWAP_MIN = 2
RESERVED = (OTHER, NONE)  # label values no index can take


@dataclass(frozen=True)
class ErrorClass:
    name: str
    match: Pattern


# Errors a chat run reports most: shipped so the panel says something before anyone
# writes a class; ``detail.error_classes: []`` turns them off (every error is "other").
_DEFAULT_CLASSES = (
    ("timeout", r"(?i)timed? ?out|deadline exceeded"),
    ("rate_limit", r"(?i)rate.?limit|too many requests|quota"),
    ("context_length", r"(?i)context (length|window)|maximum context|too many tokens"),
    ("not_found", r"(?i)not found|does not exist"),
    ("server_error", r"(?i)internal (server )?error|service unavailable|bad gateway"),
)


@dataclass(frozen=True)
class Detail:
    max_index_series: int = DEFAULT_MAX_INDEX_SERIES
    error_classes: tuple[ErrorClass, ...] = field(
        default_factory=lambda: tuple(
            ErrorClass(name, compile_pattern(match)) for name, match in _DEFAULT_CLASSES
        )
    )

    @property
    def class_names(self) -> tuple[str, ...]:
        """Every ``error_class`` label value, ``other`` last."""
        return (*(c.name for c in self.error_classes), OTHER)

    def classify(self, error: Any) -> str:
        """The first class whose expression the error text matches, else ``other``."""
        if type(error) is str and error:
            text = error[:ERROR_TEXT_LIMIT]
            for error_class in self.error_classes:
                if error_class.match.search(text):
                    return error_class.name
        return OTHER


class InvalidIndexIds(ValueError):
    pass


class IndexSets:
    """Per tracked slot, the id of the session's set of bound indexes; per set, how many
    sessions hold it.

    Sessions share a few sets (most are bound to none, or one of a handful of indexes), so
    a slot costs two bytes (four past 65,535 distinct sets) and a set's indexes are stored
    once. Set 0 is "no index". A listing looks sets up by the ``index_ids`` list as listed
    (as a tuple), so an unchanged session costs a dict lookup.
    """

    __slots__ = ("by_key", "counts", "free", "ids", "lists", "reused", "sets")

    def __init__(self) -> None:
        self.ids = array("H")
        self.sets: list[tuple[str, ...]] = [()]  # by set id: its indexes, each once
        self.lists: list[list[str]] = [[]]  # by set id: index_ids as listed when interned
        self.by_key: dict[tuple[Any, ...], int] = {}
        self.counts = [0]
        self.free: list[int] = []
        self.reused = False  # a freed id was given to another set since this was cleared

    def grow(self, count: int) -> None:
        self.ids.extend(array(self.ids.typecode, bytes(self.ids.itemsize * count)))

    def intern(self, listed: list[Any]) -> int:
        """The id of a listed ``index_ids`` seen for the first time; raises InvalidIndexIds."""
        for index_id in listed:
            if (
                type(index_id) is not str
                or not index_id
                or len(index_id) > MAX_INDEX_ID_LENGTH
                or not index_id.isprintable()
            ):
                raise InvalidIndexIds("index_ids holds something other than an index id")
        key = tuple(listed)
        indexes = tuple(dict.fromkeys(listed))
        if self.free:
            set_id = self.free.pop()
            self.sets[set_id] = indexes
            self.lists[set_id] = list(key)
            self.reused = True
        else:
            set_id = len(self.sets)
            self.sets.append(indexes)
            self.lists.append(list(key))
            self.counts.append(0)
            if set_id > 0xFFFF and self.ids.typecode == "H":
                self.ids = array("I", self.ids)
        self.by_key[key] = set_id
        return set_id

    def move(self, slot: int, set_id: int) -> None:
        """Bind a slot to another set (0: none)."""
        counts = self.counts
        counts[self.ids[slot]] -= 1
        counts[set_id] += 1
        self.ids[slot] = set_id

    def put(self, slot: int, indexes: Iterable[str]) -> None:
        """Bind a fresh slot to a saved set of indexes (restoring a state file)."""
        listed = list(indexes)
        if not listed:
            self.counts[0] += 1
            return
        set_id = self.by_key.get(tuple(listed))
        if set_id is None:
            set_id = self.intern(listed)
        self.ids[slot] = set_id
        self.counts[set_id] += 1

    def release(self) -> bool:
        """Forget sets no session holds any more, their ids free for others (see ``reused``);
        True when one was freed."""
        free = set(self.free)
        freed = [i for i in range(1, len(self.counts)) if not self.counts[i] and i not in free]
        if not freed:
            return False
        gone = set(freed)
        self.by_key = {key: i for key, i in self.by_key.items() if i not in gone}
        for set_id in freed:
            self.sets[set_id] = ()
            self.lists[set_id] = []
        self.free.extend(freed)
        return True

    def clear(self) -> None:
        self.ids[:] = array(self.ids.typecode, bytes(self.ids.itemsize * len(self.ids)))
        self.sets, self.lists, self.by_key, self.counts, self.free = [()], [[]], {}, [0], []
        self.reused = False

    def by_index(self) -> tuple[int, dict[str, int]]:
        """Sessions bound to no index, and per index the sessions bound to it."""
        per: dict[str, int] = {}
        for set_id in range(1, len(self.counts)):
            n = self.counts[set_id]
            if n:
                for index_id in self.sets[set_id]:
                    per[index_id] = per.get(index_id, 0) + n
        return self.counts[0], per


def pick_indexes(counts: Mapping[str, int], shown: Iterable[str], limit: int) -> tuple[str, ...]:
    """The indexes that keep their own series: the ``limit`` with most sessions, except that
    one already shown stays until another has more by the margin (so series do not flap).

    One sort each way, then a single pass: the strongest of the rest replaces the weakest
    shown while it has the margin over it.
    """
    kept = [i for i in shown if counts.get(i, 0) > 0 and i not in RESERVED][:limit]
    taken = {*kept, *RESERVED}  # an index named like a catch-all series stays in "other"
    rest = sorted((i for i in counts if i not in taken), key=lambda i: (-counts[i], i))
    fill = max(0, limit - len(kept))
    kept += rest[:fill]
    rest = rest[fill:]
    kept.sort(key=lambda i: (counts[i], i))  # weakest first
    # Swapping the weakest shown for the strongest of the rest, again and again, is this pass:
    # once one of the rest lacks the margin over the weakest left, no later one has it.
    swaps = 0
    while swaps < len(rest) and swaps < len(kept):
        weakest, best = counts[kept[swaps]], counts[rest[swaps]]
        if best < weakest + max(SWAP_MIN, weakest * SWAP_MARGIN):
            break
        kept[swaps] = rest[swaps]
        swaps += 1
    return tuple(sorted(kept, key=lambda i: (-counts[i], i)))


def index_series(
    none: int, counts: Mapping[str, int], shown: tuple[str, ...]
) -> tuple[tuple[str, int], ...]:
    """The label values and samples of ``llamacloud_chat_sessions_by_index``: the shown
    indexes, then ``other`` (the sum over the rest) and ``none``."""
    named = set(shown)
    other = sum(n for i, n in counts.items() if i not in named)
    return (*((i, counts[i]) for i in shown), (OTHER, other), (NONE, none))


def fold_skips(
    saved: tuple[tuple[str, int], ...],
    new: tuple[tuple[str, int], ...],
    shown: Iterable[str],
    limit: int,
) -> tuple[tuple[str, int], ...]:
    """``new`` index skips added to the ``saved`` totals under the cap: an index keeps its own
    series when it has one already, or when it is shown (``sessions_by_index``) and fewer than
    ``limit`` have one; the rest go to ``other``. A count never moves from one series to
    another, so every series only grows."""
    if not new:
        return saved
    sums = dict(saved)
    shown = set(shown)
    named = sum(1 for i in sums if i not in RESERVED)
    for index_id, n in new:
        if index_id in RESERVED:
            index_id = OTHER
        elif index_id not in sums:
            if index_id in shown and named < limit:
                named += 1
            else:
                index_id = OTHER
        sums[index_id] = sums.get(index_id, 0) + n
    return tuple(sorted(sums.items()))
