"""Poll throughput and CPU: the exporter's real poll path against a bare httpx + json loop.

The simulator runs in its own process, so only the client side's CPU is counted;
``time.process_time()`` covers every thread of the measuring process, so a poll that runs on a
worker thread is counted whole. Each variant runs in a fresh interpreter (no state, garbage or
warm caches carried between them), rounds alternate the order, and the table shows medians.
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import json
import pstats
import sys
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import httpx

from bench.children import run_child, start_simulator
from bench.common import BenchError, columns, median, per_round, rounds_in_turn
from bench.targets import Outcome, Target, report

CHAT_PATH = "/api/v1/chat"
PAGE_SIZE = 100
TARGET_RATIO = 1.25  # the first poll: every session is new
STEADY_TARGET_RATIO = 1.0  # later full listings of unchanged pages
EXPORTER_POLLS = 3

# (child kind, label): the first two are the target's baselines, "(context)" rows break it down.
BASELINES = (
    ("sync-json", "bare sync httpx.Client + json.loads"),
    ("async-json", "bare httpx.AsyncClient + json.loads"),
    ("async-orjson", "bare httpx.AsyncClient + orjson.loads (context)"),
    ("sync-orjson", "bare sync httpx.Client + orjson.loads (context)"),
    ("aggregate", "SessionTracker alone over parsed pages, steady state (context)"),
)
SUBJECT = "exporter"


# ------------------------------------------------------------------ children


class _Listing:
    """One listing as a bare loop does it: the next request's parameters, the items read, and
    its wall and CPU time from start to the last page; ``keep`` keeps the parsed pages."""

    def __init__(self, project_id: str, loads: Callable[[bytes], Any], keep: bool) -> None:
        self.params: dict[str, str | int] = {"project_id": project_id, "page_size": PAGE_SIZE}
        self.loads = loads
        self.pages: list[list[dict[str, Any]]] | None = [] if keep else None
        self.items = 0
        self.done = False
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def take(self, response: httpx.Response) -> None:
        """Parse a page and follow its token; ``done`` (and timed) after the last one."""
        body = self.loads(response.raise_for_status().content)
        page, token = body["items"], body.get("next_page_token")
        self.items += len(page)
        if self.pages is not None:
            self.pages.append(page)
        self.params["page_token"] = token
        self.done = not page or not token
        if self.done:
            self.wall = time.perf_counter() - self.wall
            self.cpu = time.process_time() - self.cpu

    def result(self) -> dict[str, float]:
        return {"wall": self.wall, "cpu": self.cpu, "items": self.items}


def bare_listing(
    base_url: str, project_id: str, key: str, loads: Callable[[bytes], Any], keep: bool = False
) -> _Listing:
    """One listing with a plain synchronous client: request, parse, follow the token."""
    with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
        listing = _Listing(project_id, loads, keep)
        while not listing.done:
            listing.take(client.get(base_url + CHAT_PATH, params=listing.params))
    return listing


async def _async_listing(
    base_url: str, project_id: str, key: str, loads: Callable[[bytes], Any]
) -> _Listing:
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
        listing = _Listing(project_id, loads, keep=False)
        while not listing.done:
            listing.take(await client.get(base_url + CHAT_PATH, params=listing.params))
    return listing


class ThreadProfiles:
    """cProfile in every thread: the one that starts it and each thread started afterwards.

    A ``cProfile.Profile`` sees only the thread that enables it, and the exporter may poll
    on a worker thread; ``threading.setprofile`` installs a hook that enables a profile of
    its own in each new thread. Deterministic profiling inflates small calls: read the
    table for where the time goes, not for exact shares.
    """

    def __init__(self, *, cpu: bool = False) -> None:
        """``cpu``: time each thread's CPU (``time.thread_time_ns``), not the wall clock, so
        waits for the network or the GIL are left out."""
        self._lock = threading.Lock()
        self._profiles: list[cProfile.Profile] = []
        self._cpu = cpu

    def _enable_here(self, *_: object) -> None:
        profile = cProfile.Profile(time.thread_time_ns, 1e-9) if self._cpu else cProfile.Profile()
        with self._lock:
            self._profiles.append(profile)
        profile.enable()  # replaces this hook in the calling thread

    def start(self) -> None:
        threading.setprofile(self._enable_here)
        self._enable_here()

    def stop(self) -> None:
        threading.setprofile(None)
        sys.setprofile(None)

    def report(self, top: int = 25, sort: str = "tottime") -> str:
        text = io.StringIO()
        with self._lock:
            profiles = list(self._profiles)
        stats = pstats.Stats(profiles[0], stream=text)
        for profile in profiles[1:]:
            stats.add(profile)
        stats.sort_stats(sort).print_stats(top)
        return f"{len(profiles)} threads profiled\n" + text.getvalue().strip()


async def _exporter_polls(
    base_url: str, project_id: str, key: str, polls: int, profile: bool
) -> tuple[list[dict[str, float]], str | None]:
    """The daemon's own wiring (``cli._components``): Store, ApiClient and Poller.poll.

    With ``profile``, the steady-state polls (all but the first) run under ThreadProfiles.
    """
    from exporter.cli import _components
    from exporter.config import Config, ProjectConfig, Secret
    from exporter.logs import configure_logging

    configure_logging("info", "json")  # as in production; the lines go to stderr
    project = ProjectConfig(
        id=project_id,
        name="bench",
        organization_id="",
        base_url=base_url,
        page_size=PAGE_SIZE,
        api_key=Secret(key),
        listing="full",  # every poll reads every page: the cost per session is the question
    )
    config = Config(projects=(project,), max_pages=10**6)
    store, poller, client, _targets = _components(config, None)
    sampler = ThreadProfiles() if profile else None
    out: list[dict[str, float]] = []
    try:
        for n in range(polls):
            if sampler is not None and n == 1:
                sampler.start()
            wall0, cpu0 = time.perf_counter(), time.process_time()
            ok = await poller.poll(project)
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            state = store.get(project_id)
            if not ok or state.snapshot is None:
                raise BenchError(f"exporter poll {n + 1} failed: {state.last_error}")
            out.append({"wall": wall, "cpu": cpu, "items": state.snapshot.sessions})
    finally:
        if sampler is not None:
            sampler.stop()
        client.close()
    return out, None if sampler is None else sampler.report()


def _aggregate_only(base_url: str, project_id: str, key: str) -> dict[str, float]:
    """The aggregation alone: every page fetched and parsed first, then fed twice to a tracker.

    The second (steady-state) pass is measured, so this row plus a bare loop is a rough
    breakdown of the exporter's poll.
    """
    import orjson

    from exporter.aggregate import Listing, SessionTracker

    pages = bare_listing(base_url, project_id, key, orjson.loads, keep=True).pages or []
    tracker = SessionTracker()
    for _pass in ("baseline", "steady state"):
        wall0, cpu0 = time.perf_counter(), time.process_time()
        listing = Listing(tracker)
        for page in pages:
            listing.add(page)
        result = listing.finish()
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return {"wall": wall, "cpu": cpu, "items": result.snapshot.sessions}


def child(params: dict[str, Any]) -> dict[str, Any]:
    """One variant over ``project_ids`` (a bare loop lists each in turn and sums; the exporter
    and the tracker alone take the first), checked to list ``sessions`` in all."""
    import orjson

    kind, base_url, key = params["kind"], params["base_url"], params["key"]
    ids: list[str] = params["project_ids"]
    profile = None
    if kind == SUBJECT:
        polls = params.get("polls", EXPORTER_POLLS)
        coroutine = _exporter_polls(base_url, ids[0], key, polls, params.get("profile", False))
        passes, profile = asyncio.run(coroutine)
    elif kind == "aggregate":
        passes = [_aggregate_only(base_url, ids[0], key)]
    else:
        loop, parser = kind.split("-")
        loads = orjson.loads if parser == "orjson" else json.loads
        total = {"wall": 0.0, "cpu": 0.0, "items": 0.0}
        for pid in ids:
            if loop == "sync":
                one = bare_listing(base_url, pid, key, loads).result()
            else:
                one = asyncio.run(_async_listing(base_url, pid, key, loads)).result()
            total = {k: total[k] + one[k] for k in total}
        passes = [total]
    for p in passes:
        if p["items"] != params["sessions"]:
            raise BenchError(f"{kind}: listed {p['items']} sessions, expected {params['sessions']}")
    return {"passes": passes, "profile": profile}


# ------------------------------------------------------------------ orchestration


def run(*, quick: bool, rounds: int, profile: bool) -> Outcome:
    from exporter.simulator import DEFAULT_API_KEY

    sessions = 20_000 if quick else 200_000
    print(f"\n## Poll throughput and CPU: {sessions:,} sessions, page_size {PAGE_SIZE}\n")
    kinds = [kind for kind, _ in BASELINES] + [SUBJECT]
    passes: dict[str, list[list[dict[str, float]]]] = {kind: [] for kind in kinds}
    with ExitStack() as stack:
        sim = start_simulator(stack, 1, sessions)
        base_url, ids = sim.ready["base_url"], sim.ready["project_ids"]
        params = {"base_url": base_url, "project_ids": ids, "key": DEFAULT_API_KEY}
        params["sessions"] = sessions
        warm = bare_listing(base_url, ids[0], DEFAULT_API_KEY, json.loads).result()
        print(
            f"simulator pid {sim.pid} at {base_url}; page cache warmed by one full pass "
            f"({warm['wall']:.1f} s)"
        )
        for order in rounds_in_turn(rounds, kinds):
            for kind in order:
                result = run_child("poll", {**params, "kind": kind}, timeout=900)
                passes[kind].append(result["passes"])
        if profile:
            result = run_child("poll", {**params, "kind": SUBJECT, "profile": True}, timeout=900)
            print("\ncProfile of the exporter's steady-state polls (--profile):\n")
            print(result["profile"])

    entries = [(kind, label, [p[0] for p in passes[kind]]) for kind, label in BASELINES]
    for n in range(EXPORTER_POLLS):
        what = "baseline poll" if n == 0 else "steady state, no changes"
        label = f"exporter Poller.poll #{n + 1} ({what})"
        entries.append((f"poll{n + 1}", label, [p[n] for p in passes[SUBJECT]]))
    wall = {key: median([p["wall"] for p in runs]) for key, _, runs in entries}
    cpu = {key: median([p["cpu"] for p in runs]) for key, _, runs in entries}
    us = {key: cpu[key] / sessions * 1e6 for key in cpu}
    spec = [
        ("variant", lambda e: e[1]),
        ("wall s", lambda e: f"{wall[e[0]]:.2f}"),
        ("CPU s", lambda e: f"{cpu[e[0]]:.2f}"),
        ("CPU µs/session", lambda e: f"{us[e[0]]:.1f}"),
        ("sessions/s", lambda e: f"{sessions / wall[e[0]]:,.0f}"),
        ("CPU s per round", lambda e: per_round([p["cpu"] for p in e[2]])),
        ("CPU vs sync", lambda e: f"{us[e[0]] / us['sync-json']:.2f}x"),
        ("CPU vs async", lambda e: f"{us[e[0]] / us['async-json']:.2f}x"),
    ]
    print()
    print(columns(spec, entries))
    print(
        f"\nMedians over {rounds} rounds; each variant in a fresh interpreter, order alternating."
    )
    targets = []
    for n in range(EXPORTER_POLLS):
        key = f"poll{n + 1}"
        target = TARGET_RATIO if n == 0 else STEADY_TARGET_RATIO
        for base, name in (("sync-json", "sync"), ("async-json", "async")):
            ratio = us[key] / us[base]
            targets.append(
                Target(
                    f"poll #{n + 1} CPU/session within {target}x of bare {name} loop",
                    ratio <= target,
                    f"{ratio:.2f}x ({us[key]:.1f} vs {us[base]:.1f} µs/session)",
                )
            )
    return report(*targets)
