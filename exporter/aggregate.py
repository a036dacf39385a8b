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


def parse_timestamp(value: str) -> float:
    """ISO 8601 to Unix seconds; a timestamp without a zone is UTC."""
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        dt = _parse_timestamp_slow(value)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


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


def _count(value: Any, name: str) -> float | None:
    """A non-negative finite number, or None when missing or null."""
    if value is None:
        return None
    if type(value) is bool or not isinstance(value, (int, float)):
        raise InvalidItem(f"{name} is not a number")
    if not 0 <= value < math.inf:
        raise InvalidItem(f"{name} is negative or not finite")
    return float(value)


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
    """Read ``job_metadata``; None means the session never ran."""
    if job_metadata is None:
        return None
    if type(job_metadata) is not dict:
        raise InvalidItem("job_metadata is not an object")
    get = job_metadata.get
    duration_ms = _count(get("duration_ms"), "duration_ms")
    input_tokens = _count(get("total_input_tokens"), "total_input_tokens")
    output_tokens = _count(get("total_output_tokens"), "total_output_tokens")
    turns = _count(get("turns"), "turns")
    error = get("error")
    if error is not None and type(error) is not str:
        raise InvalidItem("error is not a string")
    flag = get("is_error")
    if flag is None:
        is_error = bool(error)
    elif type(flag) is bool:
        is_error = flag
    else:
        raise InvalidItem("is_error is not a boolean")
    fingerprint = (
        hash(
            (
                _NONE if duration_ms is None else duration_ms,
                _NONE if input_tokens is None else input_tokens,
                _NONE if output_tokens is None else output_tokens,
                _NONE if turns is None else turns,
                _NONE if flag is None else int(flag),
                _NONE if error is None else zlib.crc32(error.encode("utf-8", "replace")),
            )
        )
        & _FP_MASK
    ) or 1
    return Run(
        is_error=is_error,
        duration_seconds=None if duration_ms is None else duration_ms / 1000.0,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        turns=turns,
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
        self._duration = 0.0
        self._last_updated: float | None = None
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
        tracker = self._tracker
        sessions = tracker._sessions
        undo = tracker._undo
        gen = tracker._gen
        counting = self._counting
        status = self._status
        for item in items:
            if type(item) is not dict:
                self._invalid += 1
                continue
            sid = item.get("session_id")
            if type(sid) is not str or not sid:
                self._invalid += 1
                continue
            try:
                run = parse_run(item.get("job_metadata"))
                stamp = item.get("last_updated_at")
                updated = None if stamp is None else parse_timestamp(stamp)
            except (InvalidItem, TypeError):
                self._invalid += 1
                continue
            old = sessions.get(sid)
            if old is not None and old & _GEN_MASK == gen:
                self._duplicates += 1
                continue
            fp = NEVER_RUN if run is None else run.fingerprint
            sessions[sid] = (fp << _GEN_BITS) | gen
            tracker._seen += 1
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
            if updated is not None and (self._last_updated is None or updated > self._last_updated):
                self._last_updated = updated
            if run is None:
                status[0] += 1
                continue
            status[2 if run.is_error else 1] += 1
            if run.input_tokens is not None:
                self._input += run.input_tokens
            if run.output_tokens is not None:
                self._output += run.output_tokens
            if run.turns is not None:
                self._turns += run.turns
            if run.duration_seconds is not None:
                self._duration += run.duration_seconds

    def _count_run(self, run: Run) -> None:
        self._runs += 1
        if run.is_error:
            self._errors += 1
        if run.input_tokens is not None:
            self._new_input += run.input_tokens
            self._input_hist.observe(run.input_tokens)
        if run.output_tokens is not None:
            self._new_output += run.output_tokens
            self._output_hist.observe(run.output_tokens)
        if run.turns is not None:
            self._new_turns += run.turns
        if run.duration_seconds is not None:
            self._duration_hist.observe(run.duration_seconds)

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
            duration_seconds=self._duration,
            last_updated=self._last_updated,
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
