"""Pure aggregation: listed session items in, snapshot and new runs out.

No I/O, no clock and no globals live here, so every rule of the metric contract can be
tested with plain data. The one piece of memory, :class:`SessionTracker`, is a plain
object owned by the caller.
"""

from __future__ import annotations

import math
import zlib
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

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


def read_run(job_metadata: Any) -> RunTuple:
    """Read a non-null ``job_metadata``, or raise :class:`InvalidItem`.

    Counts are numbers from 0 to below 2**53, or missing/null; ``error`` a string or null;
    ``is_error`` a boolean or null.
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
    # Numbers hash the same in every process (strings do not: the error text goes through
    # crc32), so fingerprints saved in a state file stay valid after a restart.
    fingerprint = (
        hash(
            (
                _NONE if d is None else d,
                _NONE if i is None else i,
                _NONE if o is None else o,
                _NONE if t is None else t,
                _NONE if flag is None else flag,
                _NONE if error is None else zlib.crc32(error.encode("utf-8", "replace")),
            )
        )
        & _FP_MASK
    ) or 1
    return is_error, d, i, o, t, fingerprint


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


@dataclass(frozen=True, slots=True)
class Histogram:
    """Bucket counts (not cumulative; the last one is +Inf), their sum and count."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    total: float = 0.0

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
        return Histogram(
            self.bounds,
            tuple(a + b for a, b in zip(self.counts, other.counts, strict=True)),
            self.total + other.total,
        )


class _HistogramBuilder:
    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def build(self) -> Histogram:
        return Histogram(self.bounds, tuple(self.counts), self.total)


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
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunTotals:
        def hist(key: str, bounds: tuple[float, ...]) -> Histogram:
            counts, total = data[key]
            if len(counts) != len(bounds) + 1:
                raise ValueError(f"{key}: bucket layout changed")
            return Histogram(bounds, tuple(int(c) for c in counts), float(total))

        return cls(
            runs=int(data["runs"]),
            errors=int(data["errors"]),
            input_tokens=float(data["input_tokens"]),
            output_tokens=float(data["output_tokens"]),
            turns=float(data["turns"]),
            sessions_created=int(data["sessions_created"]),
            duration=hist("duration", DURATION_BUCKETS),
            input_usage=hist("input_usage", TOKEN_BUCKETS),
            output_usage=hist("output_usage", TOKEN_BUCKETS),
        )


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

    @property
    def sessions(self) -> int:
        return self.never_run + self.ok + self.error

    def by_status(self) -> dict[str, int]:
        return {"never_run": self.never_run, "ok": self.ok, "error": self.error}


@dataclass(frozen=True, slots=True)
class PollResult:
    snapshot: ProjectSnapshot
    new_runs: RunTotals
    # For the state file: sessions whose fingerprint changed or appeared, and those gone.
    # ``changed`` is None when the whole tracker must be written (the baseline poll).
    changed: tuple[tuple[str, int], ...] | None
    removed: tuple[str, ...]
    baseline: bool


class SessionTracker:
    """The fingerprint of each listed session's most recent run, per project.

    Updated in place as pages arrive (one dict, no copy, so memory follows what the API
    lists), with an undo log so a poll that fails half way leaves it as it was.
    """

    __slots__ = ("_gen", "_has_baseline", "_seen", "_sessions", "_undo")

    def __init__(self, sessions: dict[str, int] | None = None) -> None:
        """``sessions`` (session id to fingerprint) restores a baseline from a state file."""
        self._gen = 0
        self._sessions: dict[str, int] = {}
        self._has_baseline = sessions is not None
        if sessions:
            self._sessions = {sid: (fp & _FP_MASK) << _GEN_BITS for sid, fp in sessions.items()}
        self._undo: list[tuple[str, int | None]] | None = None
        self._seen = 0

    @property
    def has_baseline(self) -> bool:
        return self._has_baseline

    def __len__(self) -> int:
        return len(self._sessions)

    def fingerprints(self) -> Iterator[tuple[str, int]]:
        for sid, value in self._sessions.items():
            yield sid, value >> _GEN_BITS

    def begin(self) -> Listing:
        self._gen = (self._gen + 1) & _GEN_MASK
        self._undo = [] if self._has_baseline else None
        self._seen = 0
        return Listing(self)

    def rollback(self) -> None:
        if self._undo is None:
            self._sessions.clear()
        else:
            for sid, old in reversed(self._undo):
                if old is None:
                    self._sessions.pop(sid, None)
                else:
                    self._sessions[sid] = old
        self._undo = None

    def _commit(self) -> tuple[tuple[tuple[str, int], ...] | None, tuple[str, ...]]:
        removed: tuple[str, ...] = ()
        if self._seen != len(self._sessions):
            gen = self._gen
            removed = tuple(
                sid for sid, value in self._sessions.items() if value & _GEN_MASK != gen
            )
            for sid in removed:
                del self._sessions[sid]
        if self._undo is None:
            changed = None
        else:
            # The last write of a session wins; the undo log names every one that changed.
            names = dict.fromkeys(sid for sid, _ in self._undo)
            changed = tuple(
                (sid, self._sessions[sid] >> _GEN_BITS) for sid in names if sid in self._sessions
            )
        self._has_baseline = True
        self._undo = None
        return changed, removed


class Listing:
    """One poll's pass over the listed items: feed pages, then :meth:`finish`."""

    def __init__(self, tracker: SessionTracker) -> None:
        self._tracker = tracker
        self._counting = tracker.has_baseline
        self._status = [0, 0, 0]
        self._input = 0.0
        self._output = 0.0
        self._turns = 0.0
        self._duration_ms = 0.0
        self._newest_naive: datetime | None = None
        self._newest_aware: datetime | None = None
        self._invalid = 0
        self._duplicates = 0
        self._runs = 0
        self._errors = 0
        self._created = 0
        self._new_input = 0.0
        self._new_output = 0.0
        self._new_turns = 0.0
        self._duration_hist = _HistogramBuilder(DURATION_BUCKETS)
        self._input_hist = _HistogramBuilder(TOKEN_BUCKETS)
        self._output_hist = _HistogramBuilder(TOKEN_BUCKETS)

    def add(self, items: Iterable[Any]) -> None:
        """Fold one page in. Runs once per listed session: sums are kept in locals."""
        tracker = self._tracker
        sessions = tracker._sessions
        undo = tracker._undo
        gen = tracker._gen
        counting = self._counting
        status = self._status
        newest_naive = self._newest_naive
        newest_aware = self._newest_aware
        # Continuing the running sums (not summing a page apart) keeps float results the
        # same however the listing is split into pages.
        total_in, total_out = self._input, self._output
        total_turns, total_ms = self._turns, self._duration_ms
        seen = invalid = 0
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
            try:
                run = None if job is None else read_run(job)
                if stamp is None:
                    updated = None
                elif type(stamp) is not str:
                    raise InvalidItem("last_updated_at is not a string")
                else:
                    updated = parse_datetime(stamp)
            except InvalidItem:
                invalid += 1
                continue
            old = sessions.get(sid)
            if old is not None and old & _GEN_MASK == gen:
                self._duplicates += 1
                continue
            fp = NEVER_RUN if run is None else run[5]
            sessions[sid] = (fp << _GEN_BITS) | gen
            seen += 1
            if old is None:
                if undo is not None:
                    undo.append((sid, None))
                if counting:
                    self._created += 1
                    if run is not None:
                        self._count_run(run)
            elif old >> _GEN_BITS != fp:
                if undo is not None:
                    undo.append((sid, old))
                if counting and run is not None:
                    self._count_run(run)
            if updated is not None:
                # Naive and aware datetimes do not compare: keep the newest of each.
                if updated.tzinfo is None:
                    if newest_naive is None or updated > newest_naive:
                        newest_naive = updated
                elif newest_aware is None or updated > newest_aware:
                    newest_aware = updated
            if run is None:
                status[0] += 1
                continue
            is_error, d, i, o, t, _ = run
            status[2 if is_error else 1] += 1
            if i is not None:
                total_in += i
            if o is not None:
                total_out += o
            if t is not None:
                total_turns += t
            if d is not None:
                total_ms += d
        tracker._seen += seen
        self._invalid += invalid
        self._input, self._output = total_in, total_out
        self._turns, self._duration_ms = total_turns, total_ms
        self._newest_naive = newest_naive
        self._newest_aware = newest_aware

    def _count_run(self, run: RunTuple) -> None:
        is_error, d, i, o, t, _ = run
        self._runs += 1
        if is_error:
            self._errors += 1
        if i is not None:
            self._new_input += i
            self._input_hist.observe(i)
        if o is not None:
            self._new_output += o
            self._output_hist.observe(o)
        if t is not None:
            self._new_turns += t
        if d is not None:
            self._duration_hist.observe(d / 1000.0)

    def _last_updated(self) -> float | None:
        stamps = [utc_timestamp(dt) for dt in (self._newest_naive, self._newest_aware) if dt]
        return max(stamps) if stamps else None

    def finish(self) -> PollResult:
        baseline = not self._counting
        changed, removed = self._tracker._commit()
        snapshot = ProjectSnapshot(
            never_run=self._status[0],
            ok=self._status[1],
            error=self._status[2],
            input_tokens=self._input,
            output_tokens=self._output,
            turns=self._turns,
            duration_seconds=self._duration_ms / 1000.0,
            last_updated=self._last_updated(),
            invalid_items=self._invalid,
            duplicate_items=self._duplicates,
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
        )
        return PollResult(snapshot, new_runs, changed, removed, baseline)


def aggregate(pages: Iterable[Iterable[Any]], tracker: SessionTracker | None = None) -> PollResult:
    """All pages of one listing at once: the convenient form for tests and tools."""
    listing = (SessionTracker() if tracker is None else tracker).begin()
    for page in pages:
        listing.add(page)
    return listing.finish()
