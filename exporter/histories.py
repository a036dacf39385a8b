"""Reading the histories of changed sessions after a listing (``runs: exact``), within the
poll's budget: every run not counted before, each with its own usage, status and error.

Runs on the poll's worker thread, after the listing's snapshot is published: the gauges never
wait for these reads. A read that fails leaves its session waiting for the next poll; a
session gone (404) takes its uncounted runs with it; a key refused for reads (401, 403) is
the caller's to act on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .aggregate import RunTotals, SessionTracker
from .aggregate.history import first_new, read_history
from .aggregate.indexes import Detail
from .aggregate.runs import NEVER_RUN, InvalidItem, RunCounter
from .client import ApiClient, PollError
from .config import ProjectConfig


@dataclass
class Reads:
    """What one poll's history reads gave."""

    totals: RunTotals = field(default_factory=RunTotals)
    sessions: list[str] = field(default_factory=list)  # whose saved state changed
    runs: int = 0  # runs counted from histories
    not_found: int = 0  # sessions gone (404): their uncounted runs are lost
    failed: int = 0  # reads that failed: read again at a later poll
    counted_as_latest: int = 0  # histories without the last counted run: the newest only
    invalid: int = 0  # stop events of the wrong shape, skipped
    refused: int | None = None  # 401 or 403: the key may not read histories


def read_pending(
    client: ApiClient,
    project: ProjectConfig,
    tracker: SessionTracker,
    limit: int,
    max_bytes: int,
    detail: Detail,
) -> Reads:
    """Read the histories of up to ``limit`` pending sessions, longest waiting first."""
    reads = Reads()
    counter = RunCounter(detail.classify)
    for sid, last_fp, counted in tracker.to_read(limit):
        try:
            body = client.session(project, sid, max_bytes)
            history = read_history(body)
        except PollError as exc:
            if exc.status == 404:
                tracker.drop_pending(sid)
                reads.sessions.append(sid)
                reads.not_found += 1
            elif exc.status in (401, 403):
                reads.refused = exc.status
                break
            else:
                tracker.requeue(sid)
                reads.failed += 1
            continue
        except InvalidItem:
            tracker.requeue(sid)
            reads.failed += 1
            continue
        stops = history.stops
        start, found = first_new(stops, last_fp, counted)
        if not found:
            reads.counted_as_latest += 1
        for stop in stops[start:]:
            counter.count(stop.run, stop.error, sid, history.updated, stop.skipped)
        tracker.read(sid, len(stops), stops[-1].run[5] if stops else NEVER_RUN)
        reads.sessions.append(sid)
        reads.invalid += history.invalid
    reads.totals = counter.totals()
    reads.runs = reads.totals.runs
    return reads


def count_as_latest(tracker: SessionTracker, detail: Detail) -> Reads:
    """A project that stopped reading histories (``runs: latest`` now, or a key refused for
    reads): every pending session's listed run is counted, as ``latest`` counts it."""
    reads = Reads()
    counter = RunCounter(detail.classify)
    for sid, run in tracker.take_pending_runs():
        if run is not None:
            counter.count(run, None, sid, None)
            reads.counted_as_latest += 1
        reads.sessions.append(sid)
    reads.totals = counter.totals()
    reads.runs = reads.totals.runs
    return reads
