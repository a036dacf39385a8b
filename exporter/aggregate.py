"""Pure aggregation: listed session items in, snapshot and new runs out.

No I/O, no clock and no globals live here, so every rule of the metric contract can be
tested with plain data. The one piece of memory, :class:`SessionTracker`, is a plain
object owned by the caller.
"""

from __future__ import annotations

import math
import zlib
from array import array
from bisect import bisect_left
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any

from .detail import Detail, IndexSets, InvalidIndexIds, index_series, pick_indexes

# OpenTelemetry GenAI semantic conventions: durations double from 10 ms, tokens grow by four.
DURATION_BUCKETS: tuple[float, ...] = tuple(round(0.01 * 2**i, 2) for i in range(14))
TOKEN_BUCKETS: tuple[float, ...] = tuple(float(4**i) for i in range(14))

STATUSES = ("never_run", "ok", "error")
NEVER_RUN = 0  # fingerprint of a session that has no job_metadata

_FP_BITS = 28
_FP_MASK = (1 << _FP_BITS) - 1
_GEN_BITS = 32
_GEN_MASK = (1 << _GEN_BITS) - 1
_NONE = -7  # stands for a missing or null field inside a fingerprint
_BOOL = -8  # marks a boolean where a count belongs


class InvalidItem(ValueError):
    """An item whose shape breaks the API reference; it is skipped and counted."""


def parse_datetime(value: str) -> datetime:
    """ISO 8601, naive when it has no zone (the caller reads that as UTC)."""
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return _parse_timestamp_slow(value)


def utc_timestamp(dt: datetime) -> float:
    """Unix seconds; a datetime without a zone is UTC."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def parse_timestamp(value: str) -> float:
    return utc_timestamp(parse_datetime(value))


def _parse_timestamp_slow(value: str) -> datetime:
    """Forms that Python 3.10's ``fromisoformat`` rejects: ``Z`` and odd fractions."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    head, dot, rest = text.partition(".")
    if dot:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        frac, zone = rest[:digits], rest[digits:]
        text = f"{head}.{(frac + '000000')[:6]}{zone}"
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise InvalidItem("last_updated_at is not an ISO 8601 timestamp") from None


_NUMBER = frozenset({int, float, type(None)})
# Counts must stay below 2**53 (exact in a float): one larger, summed over a project,
# would make a gauge or a counter +Inf for good. 2**53 ms is 285,000 years.
_MAX = float(2**53)

# (is_error, duration_ms, input_tokens, output_tokens, turns, fingerprint): a plain tuple,
# because one is read for every listed session and a dataclass costs more than the rest.
RunTuple = tuple[bool, Any, Any, Any, Any, int]


def read_run(job_metadata: Any, fp: int | None = None) -> RunTuple:
    """Read a non-null ``job_metadata``, or raise :class:`InvalidItem`.

    Counts are numbers from 0 to below 2**53, or missing/null; ``error`` a string or null;
    ``is_error`` a boolean or null. ``fp``: its :func:`fingerprint`, when already known.
    """
    if type(job_metadata) is not dict:
        raise InvalidItem("job_metadata is not an object")
    get = job_metadata.get
    d = get("duration_ms")
    i = get("total_input_tokens")
    o = get("total_output_tokens")
    t = get("turns")
    if not (
        type(d) in _NUMBER and type(i) in _NUMBER and type(o) in _NUMBER and type(t) in _NUMBER
    ):
        raise InvalidItem("a count is not a number")
    if not (
        (d is None or 0 <= d < _MAX)
        and (i is None or 0 <= i < _MAX)
        and (o is None or 0 <= o < _MAX)
        and (t is None or 0 <= t < _MAX)
    ):
        raise InvalidItem("a count is negative, too large or not finite")
    error = get("error")
    if error is not None and type(error) is not str:
        raise InvalidItem("error is not a string")
    flag = get("is_error")
    if flag is None:
        is_error = bool(error)
    elif flag is True or flag is False:
        is_error = flag
    else:
        raise InvalidItem("is_error is not a boolean")
    return is_error, d, i, o, t, fingerprint(job_metadata) if fp is None else fp


def fingerprint(job_metadata: dict[str, Any]) -> int:
    """A 28-bit digest of the run's fields (never 0, which means "never run").

    Checks nothing: a listing compares it with the one it saved first, and reads the run
    (:func:`read_run`) only when it differs. Raises TypeError for an unhashable value.
    Numbers hash the same in every process (strings do not: the error text goes through
    crc32), so fingerprints saved in a state file stay valid after a restart.
    """
    get = job_metadata.get
    d = get("duration_ms")
    i = get("total_input_tokens")
    o = get("total_output_tokens")
    t = get("turns")
    flag = get("is_error")
    error = get("error")
    if type(error) is str:
        error = zlib.crc32(error.encode("utf-8", "replace"))
    # A boolean hashes as 0 or 1: where a count belongs it must not pass for one (a run
    # whose fingerprint did not change is not checked again).
    if type(d) is bool or type(i) is bool or type(o) is bool or type(t) is bool:
        d, i, o, t = ((_BOOL, x) if type(x) is bool else x for x in (d, i, o, t))
    return (
        hash(
            (
                _NONE if d is None else d,
                _NONE if i is None else i,
                _NONE if o is None else o,
                _NONE if t is None else t,
                _NONE if flag is None else flag,
                _NONE if error is None else error,
            )
        )
        & _FP_MASK
    ) or 1


@dataclass(frozen=True, slots=True)
class Run:
    """The most recent run of one session, as read from its ``job_metadata``."""

    is_error: bool
    duration_seconds: float | None
    input_tokens: float | None
    output_tokens: float | None
    turns: float | None
    fingerprint: int


def parse_run(job_metadata: Any) -> Run | None:
    """Read ``job_metadata`` into a :class:`Run`; None means the session never ran."""
    if job_metadata is None:
        return None
    is_error, d, i, o, t, fingerprint = read_run(job_metadata)
    return Run(
        is_error=is_error,
        duration_seconds=None if d is None else d / 1000.0,
        input_tokens=None if i is None else float(i),
        output_tokens=None if o is None else float(o),
        turns=None if t is None else float(t),
        fingerprint=fingerprint,
    )


def run_status(run: Run | None) -> str:
    if run is None:
        return "never_run"
    return "error" if run.is_error else "ok"


# The latest run a counter or a bucket counted: its session, the value it added and when it
# ran (its last_updated_at in Unix seconds; None when it has none). Shown as an OpenMetrics
# exemplar, so a spike on a dashboard leads to a session.
Exemplar = tuple[str, float, float | None]


def latest(current: Exemplar | None, candidate: Exemplar | None) -> Exemplar | None:
    """Within one listing, the later run of two: a stamped one beats one without; a tie goes
    to the candidate (counted after). Across polls a newer poll's exemplar always wins
    (:func:`newer`), so a run stamped in the future holds an exemplar for one poll only."""
    if candidate is None:
        return current
    if current is None:
        return candidate
    if candidate[2] is None:
        return candidate if current[2] is None else current
    return candidate if current[2] is None or candidate[2] >= current[2] else current


def newer(old: Exemplar | None, new: Exemplar | None) -> Exemplar | None:
    """The exemplar of the later poll, when it has one."""
    return old if new is None else new


def read_exemplar(value: Any) -> Exemplar | None:
    """An exemplar from its saved form, or None for anything else: an exemplar is a pointer to
    a session, and a bad one is dropped rather than costing the counters (or a scrape)."""
    if type(value) not in (list, tuple) or len(value) != 3:
        return None
    sid, amount, ts = value
    if type(sid) is not str or not sid:
        return None
    try:
        sid.encode("utf-8")  # an unpaired surrogate would break every scrape
        amount = float(amount) if type(amount) in (int, float) else math.nan
        ts = None if ts is None else float(ts) if type(ts) in (int, float) else math.nan
    except (UnicodeEncodeError, OverflowError):  # OverflowError: an integer of 310 digits
        return None
    if not math.isfinite(amount) or (ts is not None and not math.isfinite(ts)):
        return None
    return sid, amount, ts


@dataclass(frozen=True, slots=True)
class Histogram:
    """Bucket counts (not cumulative; the last one is +Inf), their sum and count, and per
    bucket the latest observation's exemplar (empty when none was kept)."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    total: float = 0.0
    exemplars: tuple[Exemplar | None, ...] = ()

    @classmethod
    def empty(cls, bounds: tuple[float, ...]) -> Histogram:
        return cls(bounds, (0,) * (len(bounds) + 1))

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> Iterator[tuple[float, int]]:
        """(upper bound, cumulative count) pairs ending with +Inf, as exposition needs."""
        running = 0
        for bound, n in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += n
            yield bound, running

    def __add__(self, other: Histogram) -> Histogram:
        if not other.exemplars or not self.exemplars:
            exemplars = other.exemplars or self.exemplars
        else:
            exemplars = tuple(map(newer, self.exemplars, other.exemplars))
        return Histogram(
            self.bounds,
            tuple(a + b for a, b in zip(self.counts, other.counts, strict=True)),
            self.total + other.total,
            exemplars,
        )


class _HistogramBuilder:
    __slots__ = ("bounds", "counts", "exemplars", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0
        self.exemplars: list[Exemplar | None] = []

    def observe(self, value: float, sid: str | None = None, ts: float | None = None) -> None:
        """Count ``value``; with ``sid``, keep it as its bucket's exemplar if it is the latest."""
        bucket = bisect_left(self.bounds, value)
        self.counts[bucket] += 1
        self.total += value
        if sid is not None:
            if not self.exemplars:
                self.exemplars = [None] * len(self.counts)
            self.exemplars[bucket] = latest(self.exemplars[bucket], (sid, value, ts))

    def build(self) -> Histogram:
        return Histogram(self.bounds, tuple(self.counts), self.total, tuple(self.exemplars))


@dataclass(frozen=True, slots=True)
class RunTotals:
    """Counters of runs observed since the baseline; a poll adds its new runs to them."""

    runs: int = 0
    errors: int = 0
    input_tokens: float = 0.0
    output_tokens: float = 0.0
    turns: float = 0.0
    sessions_created: int = 0
    duration: Histogram = field(default_factory=lambda: Histogram.empty(DURATION_BUCKETS))
    input_usage: Histogram = field(default_factory=lambda: Histogram.empty(TOKEN_BUCKETS))
    output_usage: Histogram = field(default_factory=lambda: Histogram.empty(TOKEN_BUCKETS))
    # Failed runs by ``detail.error_classes`` name (``other`` for no match), sorted by name.
    errors_by_class: tuple[tuple[str, int], ...] = ()
    runs_exemplar: Exemplar | None = None
    errors_exemplar: Exemplar | None = None

    def __add__(self, other: RunTotals) -> RunTotals:
        return RunTotals(
            runs=self.runs + other.runs,
            errors=self.errors + other.errors,
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            turns=self.turns + other.turns,
            sessions_created=self.sessions_created + other.sessions_created,
            duration=self.duration + other.duration,
            input_usage=self.input_usage + other.input_usage,
            output_usage=self.output_usage + other.output_usage,
            errors_by_class=_add_counts(self.errors_by_class, other.errors_by_class),
            runs_exemplar=newer(self.runs_exemplar, other.runs_exemplar),
            errors_exemplar=newer(self.errors_exemplar, other.errors_exemplar),
        )

    def to_dict(self) -> dict[str, Any]:
        """A plain form for the state file."""
        return {
            "runs": self.runs,
            "errors": self.errors,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "turns": self.turns,
            "sessions_created": self.sessions_created,
            "duration": [list(self.duration.counts), self.duration.total],
            "input_usage": [list(self.input_usage.counts), self.input_usage.total],
            "output_usage": [list(self.output_usage.counts), self.output_usage.total],
            "errors_by_class": dict(self.errors_by_class),
            "exemplars": {
                "runs": self.runs_exemplar,
                "errors": self.errors_exemplar,
                "duration": list(self.duration.exemplars),
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunTotals:
        def hist(key: str, bounds: tuple[float, ...]) -> Histogram:
            counts, total = data[key]
            if len(counts) != len(bounds) + 1:
                raise ValueError(f"{key}: bucket layout changed")
            return Histogram(bounds, tuple(int(c) for c in counts), float(total))

        totals = cls(
            runs=int(data["runs"]),
            errors=int(data["errors"]),
            input_tokens=float(data["input_tokens"]),
            output_tokens=float(data["output_tokens"]),
            turns=float(data["turns"]),
            sessions_created=int(data["sessions_created"]),
            duration=hist("duration", DURATION_BUCKETS),
            input_usage=hist("input_usage", TOKEN_BUCKETS),
            output_usage=hist("output_usage", TOKEN_BUCKETS),
            errors_by_class=tuple(sorted(data.get("errors_by_class", {}).items())),
        )
        return totals.with_saved_exemplars(data.get("exemplars"))

    def with_saved_exemplars(self, saved: Any) -> RunTotals:
        """These totals with the exemplars of their saved form; what is not a valid exemplar
        is left out (each is read by :func:`read_exemplar`)."""
        if type(saved) is not dict:
            return self
        runs, errors, duration = saved.get("runs"), saved.get("errors"), saved.get("duration")
        exemplars: tuple[Exemplar | None, ...] = ()
        if isinstance(duration, (list, tuple)) and len(duration) == len(self.duration.counts):
            exemplars = tuple(map(read_exemplar, duration))
        return replace(
            self,
            runs_exemplar=read_exemplar(runs),
            errors_exemplar=read_exemplar(errors),
            duration=replace(self.duration, exemplars=exemplars),
        )


def _add_counts(
    a: tuple[tuple[str, int], ...], b: tuple[tuple[str, int], ...]
) -> tuple[tuple[str, int], ...]:
    if not b:
        return a
    if not a:
        return b
    sums = dict(a)
    for name, n in b:
        sums[name] = sums.get(name, 0) + n
    return tuple(sorted(sums.items()))


@dataclass(frozen=True, slots=True)
class ProjectSnapshot:
    """The sessions listed by one complete poll, summed per the metric contract."""

    never_run: int = 0
    ok: int = 0
    error: int = 0
    input_tokens: float = 0.0
    output_tokens: float = 0.0
    turns: float = 0.0
    duration_seconds: float = 0.0
    last_updated: float | None = None
    invalid_items: int = 0
    duplicate_items: int = 0
    # (index_id, sessions) of llamacloud_chat_sessions_by_index: the shown indexes, "other"
    # and "none".
    by_index: tuple[tuple[str, int], ...] = ()

    @property
    def sessions(self) -> int:
        return self.never_run + self.ok + self.error

    def by_status(self) -> dict[str, int]:
        return {"never_run": self.never_run, "ok": self.ok, "error": self.error}


@dataclass(frozen=True, slots=True)
class PollResult:
    snapshot: ProjectSnapshot
    new_runs: RunTotals
    # For the state file: sessions written or whose flags changed, and those gone.
    # ``changed`` is None when the whole tracker must be written (the baseline poll).
    changed: tuple[str, ...] | None
    removed: tuple[str, ...]
    baseline: bool
    # An incremental listing stopped at its cutoff; a full one read every page.
    incremental: bool = False
    missed: int = 0  # sessions absent from this full listing for the first time, kept
    # "incremental" when this listing enabled incremental listings, "full" when it
    # showed the order broken and turned them off, else None.
    order_change: str | None = None


# A saved session: id, fingerprint, flags (status | missed), then its most recent run's
# input tokens, output tokens, turns and duration in milliseconds, and its bound indexes.
SavedSession = tuple[str, int, int, float, float, float, float, tuple[str, ...]]

# Undo log entry: session id, its old index value (None: new), slot, old flags and run, and
# its old index set.
_Undo = tuple[str, int | None, int, int, float, float, float, float, int]

_SLOT_BITS = 32
_SLOT_MASK = (1 << _SLOT_BITS) - 1
_STATUS_MASK = 3  # flags: 0 never_run, 1 ok, 2 error ...
MISSED = 4  # ... and absent from the last full listing (kept until absent from two)
# ... and its run not read yet (a state file from before contributions were saved): the
# next listing reads it even with an unchanged fingerprint, and counts nothing for it.
UNREAD = 8
_FLAG_BITS = _STATUS_MASK | MISSED | UNREAD


@dataclass(frozen=True, slots=True)
class ListingState:
    """What decides a project's next listing; kept in the state file."""

    ordered: bool = False  # the last full listing was newest first: incremental allowed
    newest: float | None = None  # newest last_updated_at of the last complete listing
    since_full: int = 0  # incremental listings since the last full one
    full_next: bool = False  # a full listing missed sessions: confirm with another


_U32 = 2**32 - 1


# Exact sums of doubles: every double is a whole multiple of 2**-1074. Values with at most 64
# bits after the point (all but the tiniest) are summed scaled by 2**64, which keeps the
# integers short; the others by 2**1074.
_FINE = 64
_TINY = 1074


class _Exact:
    """An exact sum of numbers, correctly rounded when read."""

    __slots__ = ("fine", "tiny")

    def __init__(self) -> None:
        self.fine = 0
        self.tiny = 0

    def add(self, value: float, sign: int = 1) -> None:
        if type(value) is int:
            self.fine += sign * (value << _FINE)
            return
        numerator, denominator = value.as_integer_ratio()
        bits = denominator.bit_length() - 1
        if bits <= _FINE:
            self.fine += sign * (numerator << (_FINE - bits))
        else:
            self.tiny += sign * (numerator << (_TINY - bits))

    def value(self, whole: int = 0) -> float:
        """The sum, plus ``whole``; int / int rounds correctly."""
        fine = (whole << _FINE) + self.fine
        if not self.tiny:
            return fine / (1 << _FINE)
        return ((fine << (_TINY - _FINE)) + self.tiny) / (1 << _TINY)


class _Runs:
    """Per slot, the most recent run's input and output tokens, turns and duration (ms),
    and their exact sums.

    Counts go in arrays of unsigned 32-bit integers, which hold nearly every real count in
    4 bytes; a slot with a count that is not such an integer (a fraction, or 2**32 and more)
    keeps its three counts in a small dict instead, so every value stays exact. Durations
    come with fractions: they go in an array of doubles, exact for every accepted value.

    The sums are kept exactly (whole counts as Python integers, the rest in :class:`_Exact`)
    and updated on every write, so a gauge costs nothing to read, whatever the number of
    sessions, and is the correctly rounded sum whatever order values came in.
    """

    __slots__ = ("big", "columns", "duration", "exact", "whole")

    def __init__(self) -> None:
        self.columns = (array("I"), array("I"), array("I"))
        self.duration = array("d")
        self.big: dict[int, tuple[float, float, float]] = {}
        self.whole = [0, 0, 0]  # sums of the counts in ``columns``
        self.exact = (_Exact(), _Exact(), _Exact(), _Exact())  # of ``big``, and durations

    def grow(self, count: int) -> None:
        """``count`` more slots, all zero."""
        for column in self.columns:
            column.extend(array("I", bytes(4 * count)))
        self.duration.extend(array("d", bytes(8 * count)))

    def put(self, slot: int, i: Any, o: Any, t: Any, d: Any, fresh: bool = False) -> None:
        """Store one slot's values (numbers from 0 to below 2**53, or None for 0);
        ``fresh``: the slot holds zeros (a new session), nothing to take out first."""
        i, o, t, d = i or 0, o or 0, t or 0, d or 0
        ci, co, ct = self.columns
        whole, exact, big = self.whole, self.exact, self.big
        if fresh:
            if d:
                exact[3].add(d)
                self.duration[slot] = d
        else:
            old = big.pop(slot, None) if big else None
            if old is None:
                whole[0] -= ci[slot]
                whole[1] -= co[slot]
                whole[2] -= ct[slot]
            else:
                exact[0].add(old[0], -1)
                exact[1].add(old[1], -1)
                exact[2].add(old[2], -1)
            previous = self.duration[slot]
            if previous != d:
                if previous:
                    exact[3].add(previous, -1)
                if d:
                    exact[3].add(d)
                self.duration[slot] = d
        if (
            type(i) is int
            and type(o) is int
            and type(t) is int
            and i <= _U32
            and o <= _U32
            and t <= _U32
        ):
            ci[slot], co[slot], ct[slot] = i, o, t
            whole[0] += i
            whole[1] += o
            whole[2] += t
        else:
            ci[slot] = co[slot] = ct[slot] = 0
            big[slot] = (float(i), float(o), float(t))
            exact[0].add(i)
            exact[1].add(o)
            exact[2].add(t)

    def get(self, slot: int) -> tuple[float, float, float, float]:
        big = self.big.get(slot)
        if big is not None:
            return (*big, self.duration[slot])
        ci, co, ct = self.columns
        return ci[slot], co[slot], ct[slot], self.duration[slot]

    def sums(self) -> tuple[float, float, float, float]:
        """The correctly rounded sums."""
        w, e = self.whole, self.exact
        return e[0].value(w[0]), e[1].value(w[1]), e[2].value(w[2]), e[3].value()

    def clear(self) -> None:
        for column in self.columns:
            column[:] = array("I", bytes(4 * len(column)))
        self.duration[:] = array("d", bytes(8 * len(self.duration)))
        self.big.clear()
        self.whole = [0, 0, 0]
        self.exact = (_Exact(), _Exact(), _Exact(), _Exact())


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


class _PageSummary:
    """What one page body gave a listing, so the same body can be taken again unread: its
    sessions (their slots, a range when they are consecutive as they mostly are, and a hash
    of their fingerprints), counts and what it says about order and time."""

    __slots__ = (
        "broken",
        "first",
        "fps",
        "invalid",
        "last",
        "missing",
        "newest",
        "nonempty",
        "slots",
        "token",
        "unordered",
        "valid",
    )

    def __init__(
        self,
        token: str | None,
        nonempty: bool,
        valid: bool,
        slots: range | array[int],
        fps: int,
        invalid: int,
        first: datetime | None,
        last: datetime | None,
        newest: datetime | None,
        unordered: bool,
        broken: bool,
        missing: bool,
    ) -> None:
        self.token, self.nonempty, self.valid = token, nonempty, valid
        self.slots, self.fps, self.invalid = slots, fps, invalid
        self.first, self.last, self.newest = first, last, newest
        self.unordered, self.broken, self.missing = unordered, broken, missing


class SessionTracker:
    """What each listed session contributes, per project, packed for memory.

    A dict maps each session id to ``fingerprint << 32 | slot``; per slot, a byte holds the
    status and the missed flag, and :class:`_Runs` the most recent run's input and output
    tokens, turns and duration. Gauges are exact sums over those (correctly rounded, so the
    order sessions were met in never changes a value), which lets a listing that reads only
    what changed give the same gauges as one that reads it all.

    Updated in place as pages arrive, with an undo log so a poll that fails half way
    leaves it as it was.
    """

    __slots__ = (
        "_flags",
        "_fps",
        "_free",
        "_has_baseline",
        "_index",
        "_indexes",
        "_missed",
        "_pages",
        "_runs",
        "_saved_missed",
        "_saved_status",
        "_seen",
        "_seen_count",
        "_shown",
        "_status",
        "_top",
        "_undo",
        "state",
    )

    def __init__(
        self,
        sessions: Iterable[SavedSession] | dict[str, int] | None = None,
        state: ListingState | None = None,
    ) -> None:
        """Restore a baseline from a state file: saved sessions, or bare fingerprints (an
        older file: those count as missed once, so a first listing that misses one drops it
        as older versions did)."""
        self._index: dict[str, int] = {}
        self._flags = bytearray()
        self._fps = array("I")  # each slot's fingerprint, to check a remembered page
        self._runs = _Runs()
        self._indexes = IndexSets()
        self._shown: tuple[str, ...] = ()  # indexes with their own series, most sessions first
        # Page bodies read whole by the last listings, by key: what reading one again gives.
        self._pages: dict[Hashable, _PageSummary] = {}
        self._free: list[int] = []
        self._top = 0  # slots below it have been used; the rest of the capacity never was
        self._status = [0, 0, 0]
        self._missed = 0
        self._seen = bytearray()
        self._undo: list[_Undo] | None = None
        self._saved_status: list[int] = []
        self._saved_missed = 0
        self._seen_count = 0
        self._has_baseline = sessions is not None
        self.state = state if state is not None and self._has_baseline else ListingState()
        if isinstance(sessions, dict):
            rows: Iterable[SavedSession] = (
                (sid, fp, MISSED | UNREAD, 0.0, 0.0, 0.0, 0.0, ()) for sid, fp in sessions.items()
            )
        else:
            rows = sessions or ()
        for sid, fp, flags, i, o, t, d, *indexes in rows:
            slot = self._new_slot()
            self._index[sid] = ((fp & _FP_MASK) << _SLOT_BITS) | slot
            self._flags[slot] = flags & _FLAG_BITS
            self._fps[slot] = fp & _FP_MASK
            self._runs.put(slot, i, o, t, d, fresh=True)
            try:
                self._indexes.put(slot, indexes[0] if indexes else ())
            except InvalidIndexIds:  # an edited file: the next listing reads every page
                self._indexes.put(slot, ())
                self.state = ListingState()
            self._status[flags & _STATUS_MASK] += 1
            if flags & MISSED:
                self._missed += 1

    def _new_slot(self) -> int:
        """A slot never used yet; capacity grows by a sixteenth at a time, not slot by slot."""
        if self._top == len(self._flags):
            more = max(64, self._top // 16)
            self._flags.extend(bytes(more))
            self._fps.extend(array("I", bytes(4 * more)))
            self._seen.extend(bytes(more))
            self._runs.grow(more)
            self._indexes.grow(more)
        self._top += 1
        return self._top - 1

    @property
    def has_baseline(self) -> bool:
        return self._has_baseline

    def __len__(self) -> int:
        return len(self._index)

    def rows(self, names: Iterable[str] | None = None) -> Iterator[SavedSession]:
        """Saved form of every session, or of the named ones still tracked."""
        index = self._index
        if names is None:
            items: Iterable[tuple[str, int]] = index.items()
        else:
            items = ((sid, index[sid]) for sid in names if sid in index)
        indexes = self._indexes
        for sid, value in items:
            slot = value & _SLOT_MASK
            yield (
                sid,
                value >> _SLOT_BITS,
                self._flags[slot],
                *self._runs.get(slot),
                indexes.sets[indexes.ids[slot]],
            )

    def fingerprints(self) -> Iterator[tuple[str, int]]:
        for sid, value in self._index.items():
            yield sid, value >> _SLOT_BITS

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

    def begin(
        self,
        cutoff: float | None = None,
        overlap: float = 300.0,
        detail: Detail | None = None,
        phase: int = 0,
    ) -> Listing:
        """Start a listing; with ``cutoff`` (Unix seconds) it is incremental: it stops after
        a page whose sessions were all last updated before the cutoff. ``detail``: how many
        indexes keep their own series, and the error classes (the defaults when None).
        ``phase``: a baseline listing counts as that many polls since a full listing, so
        projects that start together do not all list in full at the same later poll."""
        self._seen = bytearray(len(self._flags))
        self._seen_count = 0
        self._undo = [] if self._has_baseline else None
        self._saved_status = list(self._status)
        self._saved_missed = self._missed
        return Listing(self, cutoff, overlap, Detail() if detail is None else detail, phase)

    def rollback(self) -> None:
        """Undo the listing under way: a failed poll changes nothing."""
        undo = self._undo
        self._undo = None
        if undo is None:  # a failed baseline poll: start afresh
            self._index.clear()
            self._free = []
            self._top = 0
            self._flags[:] = bytes(len(self._flags))
            self._fps[:] = array("I", bytes(4 * len(self._fps)))
            self._pages = {}
            self._runs.clear()
            self._indexes.clear()
            self._status = [0, 0, 0]
            self._missed = 0
            return
        indexes = self._indexes
        for sid, old, slot, flags, i, o, t, d, index_set in reversed(undo):
            if old is None:
                del self._index[sid]
                self._free.append(slot)
                self._fps[slot] = 0
                indexes.counts[indexes.ids[slot]] -= 1
                indexes.ids[slot] = 0
            else:
                self._index[sid] = old
                self._fps[slot] = old >> _SLOT_BITS
                indexes.move(slot, index_set)
            self._flags[slot] = flags
            self._runs.put(slot, i, o, t, d)
        self._status = self._saved_status
        self._missed = self._saved_missed

    def _slot(self, slot: int) -> tuple[int, float, float, float, float, int]:
        """A slot's flags, run and index set, as the undo log keeps them."""
        return (self._flags[slot], *self._runs.get(slot), self._indexes.ids[slot])

    def _remove(self, sid: str, value: int) -> None:
        slot = value & _SLOT_MASK
        del self._index[sid]
        self._status[self._flags[slot] & _STATUS_MASK] -= 1
        self._flags[slot] = 0
        self._fps[slot] = 0
        self._runs.put(slot, 0, 0, 0, 0)
        self._indexes.counts[self._indexes.ids[slot]] -= 1
        self._indexes.ids[slot] = 0
        self._free.append(slot)


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
        self._duplicates = 0
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
                if seen[slot]:
                    self._duplicates += 1
                    remember = False  # what a duplicate means depends on the pages before
                    continue
                seen[slot] = 1
                seen_count += 1
                if run is not None or value >> slot_bits != fp:
                    self._store(sid, value, fp, run, index_set)
                    if self._counting and run is not None:
                        self._count_run(run, job, sid, updated)
                elif check_missed and tracker._flags[slot] & UNREAD:
                    # Saved by an older version without its run: read it now, count nothing.
                    try:
                        run = None if job is None else read_run(job, fp)
                    except InvalidItem:
                        invalid += 1
                        continue
                    self._store(sid, value, fp, run, index_set)
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
            duplicate_items=self._duplicates,
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
