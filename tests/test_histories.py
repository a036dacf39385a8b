"""Exact run counting from session histories, against the ground truth of every run made.

A model API whose sessions run 0 to 5 times between polls and during listings, are created,
deleted and moved (newest first, a session that changes goes to page one), listed newest
first or in creation order, fully or incrementally; between polls the exporter may restart
from its real state file. Histories are read through :func:`read_pending` with a small
budget, so some wait for later polls. Every counter must equal what the runs made since the
baseline add up to, exactly.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import event as observe
from hypothesis import strategies as st

from exporter.aggregate import Listing, PollResult, RunTotals, SessionTracker
from exporter.aggregate.indexes import Detail
from exporter.client import PollError
from exporter.config import ProjectConfig, Secret
from exporter.histories import count_as_latest, read_pending
from exporter.store import StateFile

EPOCH = datetime(2026, 11, 1, tzinfo=timezone.utc)
PROJECT = ProjectConfig("p", "p", "", "http://127.0.0.1:9", 100, Secret("k"))
DETAIL = Detail()


@dataclass
class Session:
    sid: str
    runs: list[dict[str, Any]] = field(default_factory=list)
    stamp: float = 0.0
    baseline_runs: int | None = None  # runs it had when the baseline listed it


@dataclass
class Api:
    """Sessions as the API lists them, with their histories: ``order`` newest first (a
    changed session moves to the front) or by creation."""

    order: str
    sessions: list[Session] = field(default_factory=list)
    clock: float = 0.0
    made: int = 0
    deleted: list[Session] = field(default_factory=list)

    def _run(self) -> dict[str, Any]:
        self.made += 1
        n = self.made
        failed = n % 4 == 0
        return {
            "type": "stop",
            "is_error": failed,
            **({"error": "upstream timed out"} if failed else {}),
            "usage": {
                "duration_ms": 10.0 * n,
                "total_input_tokens": n,
                "total_output_tokens": 2 * n,
                "turns": 1 + n % 3,
            },
            "skipped_index_ids": ["idx"] if n % 5 == 0 else None,
        }

    def item(self, s: Session) -> dict[str, Any]:
        last = s.runs[-1] if s.runs else None
        job = None
        if last is not None:
            job = {**last["usage"], "is_error": last["is_error"], "error": last.get("error")}
            if last["is_error"] and last["usage"]["total_input_tokens"] % 8 == 0:
                del job["is_error"]  # a failure told by its error text alone
        return {
            "session_id": s.sid,
            "last_updated_at": (EPOCH + timedelta(seconds=s.stamp)).isoformat(),
            "shared_access": "query",
            "index_ids": ["idx"],
            "job_metadata": job,
        }

    def body(self, sid: str) -> dict[str, Any] | None:
        for s in self.sessions:
            if s.sid == sid:
                events: list[Any] = []
                for run in s.runs:
                    events += [{"type": "user_input", "content": "q"}, {"type": "x-new"}, run]
                return {**self.item(s), "events": copy.deepcopy(events)}
        return None

    def apply(self, event: tuple[str, int, int]) -> None:
        kind, where, times = event
        self.clock += 1.0
        if kind == "create":
            s = Session(f"s{self.made}-{len(self.sessions)}-{self.clock}", stamp=self.clock)
            s.runs = [self._run() for _ in range(times % 3)]
            if self.order == "newest-first":
                self.sessions.insert(0, s)
            else:
                self.sessions.append(s)
            return
        if not self.sessions:
            return
        index = where % len(self.sessions)
        s = self.sessions[index]
        if kind == "delete":
            self.deleted.append(self.sessions.pop(index))
            return
        if kind == "run":
            s.runs += [self._run() for _ in range(times)]
        s.stamp = self.clock  # run or touch: it changed
        if self.order == "newest-first":
            self.sessions.insert(0, self.sessions.pop(index))


class Client:
    """What :func:`read_pending` asks of the API client: one session's history."""

    def __init__(self, api: Api, failing: set[str]) -> None:
        self.api = api
        self.failing = failing
        self.reads = 0
        self.read_to: dict[str, int] = {}  # each session's runs at its last successful read

    def session(self, project: ProjectConfig, sid: str, max_bytes: int) -> Any:
        self.reads += 1
        if sid in self.failing:
            self.failing.discard(sid)  # a 503 once: read again at a later poll
            raise PollError("server_error", "HTTP 503", 503)
        body = self.api.body(sid)
        if body is None:
            raise PollError("not_found", "HTTP 404: Session not found", 404)
        self.read_to[sid] = sum(1 for e in body["events"] if e.get("type") == "stop")
        return body


def made(api: Api, read_to: dict[str, int]) -> list[dict[str, Any]]:
    """The runs made after the baseline by the sessions listed now, and by the deleted ones
    up to their last read (a session deleted before a read takes its uncounted runs along)."""
    runs = [r for s in api.sessions for r in s.runs[s.baseline_runs or 0 :]]
    for s in api.deleted:
        runs += s.runs[s.baseline_runs or 0 : read_to.get(s.sid, 0)]
    return runs


def truth(runs: list[dict[str, Any]]) -> tuple[int, int, int, int, float]:
    """Runs, errors, input tokens, output tokens and turns of ``runs``."""
    return (
        len(runs),
        sum(r["is_error"] for r in runs),
        sum(r["usage"]["total_input_tokens"] for r in runs),
        sum(r["usage"]["total_output_tokens"] for r in runs),
        sum(r["usage"]["turns"] for r in runs),
    )


def counted(totals: RunTotals) -> tuple[int, int, int, int, float]:
    return (
        totals.runs,
        totals.errors,
        int(totals.input_tokens),
        int(totals.output_tokens),
        totals.turns,
    )


def list_once(
    api: Api,
    tracker: SessionTracker,
    during: dict[int, list[tuple[str, int, int]]],
    page_size: int,
    full_every: int,
) -> PollResult:
    cutoff = tracker.plan(auto=True, full_every=full_every, overlap=5.0, now=api.clock + 1)
    listing = Listing(tracker, cutoff, 5.0, DETAIL, exact=True)
    offset, page = 0, 0
    while True:
        for event in during.get(page, ()):
            api.apply(event)
        items = [api.item(s) for s in api.sessions[offset : offset + page_size]]
        page += 1
        offset += page_size
        stop = listing.add(copy.deepcopy(items))
        if stop or len(items) < page_size:
            break
    for k in sorted(during):  # what a shorter listing did not wait for happens anyway
        if k >= page:
            for event in during[k]:
                api.apply(event)
    return listing.finish()


events = st.tuples(
    st.sampled_from(["run", "run", "run", "touch", "create", "create", "delete"]),
    st.integers(0, 1000),
    st.integers(0, 5),
)
polls = st.lists(
    st.tuples(
        # (after which page, the change): 0 before the listing
        st.lists(st.tuples(st.integers(0, 4), events), max_size=6),
        st.booleans(),  # restart from the state file before this poll
        st.sets(st.integers(0, 30), max_size=2),  # sessions whose next read fails once
    ),
    min_size=2,
    max_size=10,
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    order=st.sampled_from(["newest-first", "created"]),
    start=st.lists(st.integers(0, 4), max_size=12),
    history=polls,
    page_size=st.integers(1, 5),
    budget=st.integers(1, 4),
    full_every=st.integers(2, 5),
)
def test_every_run_is_counted_exactly_once(
    tmp_path_factory: Any,
    order: str,
    start: list[int],
    history: list[tuple[list[tuple[int, tuple[str, int, int]]], bool, set[int]]],
    page_size: int,
    budget: int,
    full_every: int,
) -> None:
    api = Api(order)
    for runs in start:
        api.apply(("create", 0, runs))
    path = Path(tmp_path_factory.mktemp("state")) / "state.db"
    tracker = SessionTracker()
    totals = RunTotals()
    baseline = list_once(api, tracker, {}, page_size, full_every)
    assert baseline.baseline and not tracker.pending
    for s in api.sessions:
        s.baseline_runs = len(s.runs)
    state = StateFile(path)
    state.save("p", totals, baseline, tracker)
    failing: set[str] = set()
    client = Client(api, failing)
    quiet = [([], False, set())] * (2 * full_every + 4)
    try:
        replay(
            api,
            tracker,
            totals,
            state,
            path,
            client,
            [*history, *quiet],
            page_size,
            budget,
            full_every,
        )
    finally:
        state.close()


def replay(
    api: Api,
    tracker: SessionTracker,
    totals: RunTotals,
    state: StateFile,
    path: Path,
    client: Client,
    history: list[tuple[list[tuple[int, tuple[str, int, int]]], bool, set[int]]],
    page_size: int,
    budget: int,
    full_every: int,
) -> None:
    """The polls of ``history`` (restarting from the state file where it says), then the
    checks against the ground truth."""
    polls = list(history)
    k = 0
    while k < len(polls):
        changes, restart, fail = polls[k]
        k += 1
        if restart:
            observe("restart")
            state.close()
            state = StateFile(path)
            saved = state.load(["p"])["p"]
            assert saved.sessions is not None
            tracker = SessionTracker(saved.sessions, saved.listing)
            totals = saved.totals
        during: dict[int, list[tuple[str, int, int]]] = {}
        for after, event in changes:
            during.setdefault(after, []).append(event)
        names = [s.sid for s in api.sessions]
        client.failing.update(names[i] for i in fail if i < len(names))
        result = list_once(api, tracker, during, page_size, full_every)
        totals += result.new_runs
        reads = read_pending(client, PROJECT, tracker, budget, 1 << 20, DETAIL)
        assert reads.counted_as_latest == 0
        totals += reads.totals
        state.save("p", totals, result, tracker, reads.sessions)
        if k == len(polls) and tracker.pending and k < 500:
            polls.append(([], False, set()))  # quiet polls until every history is read
    # Quiet polls at the end: every change listed, every history read.
    assert not tracker.pending
    live = {s.sid for s in api.sessions}
    assert {sid for sid, *_ in tracker.rows()} == live
    if api.deleted:
        observe("deleted sessions")
    runs = made(api, client.read_to)
    assert counted(totals) == truth(runs)
    observe(f"runs counted: {min(totals.runs, 10)}+")
    # Each counted run has its own histogram samples and index skips.
    assert totals.duration.count == totals.runs == totals.input_usage.count
    skips = sum(1 for r in runs if r["skipped_index_ids"])
    assert dict(totals.index_skips) == ({"idx": skips} if skips else {})


def test_without_deletions_every_counter_is_exact_and_reads_follow_changes() -> None:
    """One scenario spelled out: three sessions, one runs three times during a listing."""
    api = Api("newest-first")
    for runs in (1, 0, 2):
        api.apply(("create", 0, runs))
    tracker = SessionTracker()
    list_once(api, tracker, {}, 2, 10)
    for s in api.sessions:
        s.baseline_runs = len(s.runs)
    client = Client(api, set())
    totals = RunTotals()
    target = api.sessions[2].sid
    result = list_once(api, tracker, {1: [("run", 2, 3)]}, 2, 10)
    totals += result.new_runs
    assert result.new_runs.runs == 0  # exact: nothing counted from the listing itself
    for _ in range(3):
        result = list_once(api, tracker, {}, 2, 10)
        reads = read_pending(client, PROJECT, tracker, 100, 1 << 20, DETAIL)
        totals += result.new_runs + reads.totals
    assert counted(totals) == truth(made(api, {})) and totals.runs == 3
    assert totals.runs_exemplar is not None and totals.runs_exemplar[0] == target
    assert client.reads == 1  # one read for three runs, none for sessions that did not change


def test_a_project_that_stops_reading_counts_what_waits_as_latest() -> None:
    api = Api("created")
    for runs in (1, 1):
        api.apply(("create", 0, runs))
    tracker = SessionTracker()
    list_once(api, tracker, {}, 5, 10)
    api.apply(("run", 0, 2))  # two runs: latest sees one
    api.apply(("touch", 1, 0))  # a change without a run
    list_once(api, tracker, {}, 5, 10)
    assert len(tracker.pending) == 2
    reads = count_as_latest(tracker, DETAIL)
    assert (reads.runs, reads.counted_as_latest, sorted(reads.sessions)) == (
        1,
        1,
        sorted(s.sid for s in api.sessions),
    )
    assert not tracker.pending


def test_a_session_made_again_under_its_id_is_counted_as_latest_and_said() -> None:
    api = Api("created")
    api.apply(("create", 0, 2))
    tracker = SessionTracker()
    list_once(api, tracker, {}, 5, 10)
    api.apply(("run", 0, 1))
    list_once(api, tracker, {}, 5, 10)
    client = Client(api, set())
    assert read_pending(client, PROJECT, tracker, 10, 1 << 20, DETAIL).runs == 1
    # Deleted and made again between two polls, with two runs of its own.
    (s,) = api.sessions
    s.runs = [api._run(), api._run()]
    s.stamp = api.clock = api.clock + 1
    list_once(api, tracker, {}, 5, 10)
    reads = read_pending(client, PROJECT, tracker, 10, 1 << 20, DETAIL)
    assert (reads.runs, reads.counted_as_latest) == (1, 1)


def test_reads_that_fail_wait_and_a_deleted_session_drops_out() -> None:
    api = Api("created")
    for runs in (1, 1, 1):
        api.apply(("create", 0, runs))
    tracker = SessionTracker()
    list_once(api, tracker, {}, 5, 10)
    for i in range(3):
        api.apply(("run", i, 1))
    list_once(api, tracker, {}, 5, 10)
    first, second, third = (s.sid for s in api.sessions)
    client = Client(api, {first})
    api.sessions = [s for s in api.sessions if s.sid != second]  # deleted after the listing
    reads = read_pending(client, PROJECT, tracker, 10, 1 << 20, DETAIL)
    assert (reads.runs, reads.failed, reads.not_found) == (1, 1, 1)
    assert list(tracker.pending) == [first]
    assert read_pending(client, PROJECT, tracker, 10, 1 << 20, DETAIL).runs == 1
    assert not tracker.pending
    assert third not in tracker.pending


def test_a_live_session_missed_by_two_listings_comes_back_without_counting_again() -> None:
    """With offset tokens a session that runs during each of two full listings can be missed
    by both and dropped; listed again, its history must not count a second time."""
    api = Api("created")
    for runs in (1, 1):
        api.apply(("create", 0, runs))
    tracker = SessionTracker()
    client = Client(api, set())
    list_once(api, tracker, {}, 5, 1)
    api.apply(("run", 0, 2))
    list_once(api, tracker, {}, 5, 1)
    totals = read_pending(client, PROJECT, tracker, 10, 1 << 20, DETAIL).totals
    hot = api.sessions[0]
    hidden = Api("created", [api.sessions[1]])  # two listings that do not see it
    list_once(hidden, tracker, {}, 5, 1)
    dropped = list_once(hidden, tracker, {}, 5, 1)
    assert dropped.removed == (hot.sid,)
    hot.runs.append(api._run())
    hot.stamp = api.clock = api.clock + 1
    back = list_once(api, tracker, {}, 5, 1)
    assert back.new_runs.sessions_created == 1  # counted as created again, as the README says
    totals += read_pending(client, PROJECT, tracker, 10, 1 << 20, DETAIL).totals
    hot.baseline_runs = 1
    assert totals.runs == 3 == len(hot.runs) - 1
