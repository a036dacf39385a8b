"""One listed session's most recent run, and what runs add up to.

Reading and fingerprinting ``job_metadata``, timestamps, exemplars, and the frozen results a
listing hands out: the counters of new runs (:class:`RunTotals`) and the gauges of the
listed sessions (:class:`ProjectSnapshot`). Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
import zlib
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from ..text import is_text

# OpenTelemetry GenAI semantic conventions: durations double from 10 ms, tokens grow by four.
DURATION_BUCKETS: tuple[float, ...] = tuple(round(0.01 * 2**i, 2) for i in range(14))
TOKEN_BUCKETS: tuple[float, ...] = tuple(float(4**i) for i in range(14))

STATUSES = ("never_run", "ok", "error")
NEVER_RUN = 0  # fingerprint of a session that has no job_metadata

FP_MASK = (1 << 28) - 1  # a fingerprint's bits
_NONE = -7  # stands for a missing or null field inside a fingerprint
_BOOL = -8  # marks a boolean where a count belongs


class InvalidItem(ValueError):
    """An item whose shape breaks the API reference; it is skipped and counted."""


def utc_timestamp(dt: datetime) -> float:
    """Unix seconds; a datetime without a zone is UTC."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def naive_utc(dt: datetime, text: str) -> datetime:
    """An aware ``dt`` (parsed from ``text``) as a naive datetime in UTC, or
    :class:`InvalidItem` where that is out of range. Reparsing the text without its zone
    costs a fifth of ``dt.replace(tzinfo=None)``, which a listing would pay per session."""
    if text[-1:] in ("Z", "z"):
        head: str | None = text[:-1]
    elif text[-6:] == "+00:00":
        head = text[:-6]
    else:
        head = None
    if head is not None:
        try:
            naive = datetime.fromisoformat(head)
        except ValueError:
            pass
        else:
            if naive.tzinfo is None:
                return naive
    try:
        return (dt - dt.utcoffset()).replace(tzinfo=None)  # type: ignore[operator]
    except OverflowError:
        raise InvalidItem("last_updated_at is out of range in UTC") from None


def parse_datetime_slow(value: str) -> datetime:
    """An ISO 8601 timestamp that ``datetime.fromisoformat`` refused, naive when it has no zone
    (read as UTC): Python 3.10's rejects ``Z`` and odd fractions. A listing tries
    ``fromisoformat`` first, inline, since it reads one timestamp per session."""
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
_MAX_SAVED = 2**53
_MAX_SAVED_AMOUNT = 1e300  # far from +Inf, and a 400-digit integer is refused before float()

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
    if fp is None:  # what fingerprint() gives, from the values checked above
        crc = zlib.crc32(error.encode("utf-8", "replace")) if error else None
        fp = _digest(d, i, o, t, is_error, crc)
    return is_error, d, i, o, t, fp


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
    # A run's status, not how it was spelled: a history's stop event always says is_error,
    # where job_metadata may leave it out and let the error text tell (and an empty text is
    # none), and both must give the same fingerprint for the same run.
    if error == "":
        error = None
    if flag is None:
        flag = type(error) is str
    if type(error) is str:
        error = zlib.crc32(error.encode("utf-8", "replace"))
    # A boolean hashes as 0 or 1: where a count belongs it must not pass for one (a run
    # whose fingerprint did not change is not checked again).
    if type(d) is bool or type(i) is bool or type(o) is bool or type(t) is bool:
        d, i, o, t = ((_BOOL, x) if type(x) is bool else x for x in (d, i, o, t))
    return _digest(d, i, o, t, flag, error)


def _digest(d: Any, i: Any, o: Any, t: Any, flag: Any, error: Any) -> int:
    """The fingerprint of a run's fields, its status and error text already in their
    canonical form (``error``: the text's crc32, or None for none)."""
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
        & FP_MASK
    ) or 1


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
    if not is_text(sid):  # an unpaired surrogate would break every scrape
        return None
    try:
        amount = float(amount) if type(amount) in (int, float) else math.nan
        ts = None if ts is None else float(ts) if type(ts) in (int, float) else math.nan
    except OverflowError:  # an integer of 310 digits
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


class HistogramBuilder:
    """One listing's observations of a histogram, built into a :class:`Histogram` at its end."""

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


class RunCounter:
    """New runs as a poll meets them (from a listing, or from session histories), built into
    :class:`RunTotals` at the end: counts, sums, histograms, error classes, exemplars and the
    indexes each run could not query."""

    __slots__ = (
        "_classify",
        "_duration",
        "_error_classes",
        "_errors_exemplar",
        "_input",
        "_output",
        "_runs_exemplar",
        "_skips",
        "errors",
        "input_tokens",
        "output_tokens",
        "runs",
        "turns",
    )

    def __init__(self, classify: Callable[[Any], str]) -> None:
        """``classify``: an error text's class name (``Detail.classify``)."""
        self._classify = classify
        self.runs = self.errors = 0
        self.input_tokens = self.output_tokens = self.turns = 0.0
        self._error_classes: dict[str, int] = {}
        self._skips: dict[str, int] = {}
        self._runs_exemplar: Exemplar | None = None
        self._errors_exemplar: Exemplar | None = None
        self._duration = HistogramBuilder(DURATION_BUCKETS)
        self._input = HistogramBuilder(TOKEN_BUCKETS)
        self._output = HistogramBuilder(TOKEN_BUCKETS)

    def count(
        self,
        run: RunTuple,
        error: Any,
        sid: str,
        ts: float | None,
        skipped: Iterable[str] = (),
    ) -> None:
        """One run of session ``sid`` (``ts``: when, Unix seconds, if known), its error text
        and the index ids it skipped."""
        is_error, d, i, o, t, _ = run
        self.runs += 1
        self._runs_exemplar = latest(self._runs_exemplar, (sid, 1.0, ts))
        if is_error:
            self.errors += 1
            self._errors_exemplar = latest(self._errors_exemplar, (sid, 1.0, ts))
            name = self._classify(error)
            self._error_classes[name] = self._error_classes.get(name, 0) + 1
        if i is not None:
            self.input_tokens += i
            self._input.observe(i)
        if o is not None:
            self.output_tokens += o
            self._output.observe(o)
        if t is not None:
            self.turns += t
        if d is not None:
            self._duration.observe(d / 1000.0, sid, ts)
        for index_id in skipped:
            self._skips[index_id] = self._skips.get(index_id, 0) + 1

    def totals(self, sessions_created: int = 0) -> RunTotals:
        return RunTotals(
            runs=self.runs,
            errors=self.errors,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            turns=self.turns,
            sessions_created=sessions_created,
            duration=self._duration.build(),
            input_usage=self._input.build(),
            output_usage=self._output.build(),
            errors_by_class=tuple(sorted(self._error_classes.items())),
            runs_exemplar=self._runs_exemplar,
            errors_exemplar=self._errors_exemplar,
            index_skips=tuple(sorted(self._skips.items())),
        )


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
    # Runs that could not query an index they asked for (``skipped_index_ids``), by index id,
    # sorted; past the cap of shown indexes they are summed as ``other`` (:func:`fold_skips`).
    index_skips: tuple[tuple[str, int], ...] = ()

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
            index_skips=_add_counts(self.index_skips, other.index_skips),
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
            "index_skips": dict(self.index_skips),
            "exemplars": {
                "runs": self.runs_exemplar,
                "errors": self.errors_exemplar,
                "duration": list(self.duration.exemplars),
            },
        }

    @classmethod
    def from_dict(cls, data: Any) -> RunTotals:
        """The totals of their saved form (:meth:`to_dict`), checked as untrusted input:
        ValueError when anything is off, but a bad exemplar is only left out."""
        if type(data) is not dict:
            raise ValueError("not an object")

        def field(key: str) -> Any:
            if key not in data:
                raise ValueError(f"{key}: missing")
            return data[key]

        def count(value: Any) -> int:
            # Below 2**53, as an item's counts are: a count is rendered as a float.
            if type(value) is not int or not 0 <= value < _MAX_SAVED:
                raise ValueError("a count is not a non-negative integer below 2**53")
            return value

        def amount(value: Any) -> float:
            if type(value) not in (int, float) or not 0 <= value < _MAX_SAVED_AMOUNT:
                raise ValueError("an amount is not a non-negative number below 1e300")
            return float(value)

        def histogram(key: str, bounds: tuple[float, ...]) -> Histogram:
            value = field(key)
            if type(value) is not list or len(value) != 2 or type(value[0]) is not list:
                raise ValueError(f"{key}: not [counts, sum]")
            counts, total = value
            if len(counts) != len(bounds) + 1:
                raise ValueError(f"{key}: bucket layout changed")
            return Histogram(bounds, tuple(count(c) for c in counts), amount(total))

        def counts(key: str) -> tuple[tuple[str, int], ...]:
            value = field(key)
            if type(value) is not dict or not all(type(k) is str and is_text(k) for k in value):
                raise ValueError(f"{key}: not an object of counts")
            return tuple(sorted((k, count(v)) for k, v in value.items()))

        totals = cls(
            runs=count(field("runs")),
            errors=count(field("errors")),
            input_tokens=amount(field("input_tokens")),
            output_tokens=amount(field("output_tokens")),
            turns=amount(field("turns")),
            sessions_created=count(field("sessions_created")),
            duration=histogram("duration", DURATION_BUCKETS),
            input_usage=histogram("input_usage", TOKEN_BUCKETS),
            output_usage=histogram("output_usage", TOKEN_BUCKETS),
            errors_by_class=counts("errors_by_class"),
            index_skips=counts("index_skips"),
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
    # Sessions dropped two full listings ago and not back: their saved rows go.
    forgotten: tuple[str, ...] = ()
