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
from typing import Any

import httpx

from bench.common import BenchError, load_average, median, table, verdict
from bench.peers import run_child, simulator_process

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


def _sync_pass(
    base_url: str, project_id: str, key: str, loads: Callable[[bytes], Any]
) -> dict[str, float]:
    """One listing with a plain synchronous client: request, parse, follow the token."""
    with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
        params: dict[str, str | int] = {"project_id": project_id, "page_size": PAGE_SIZE}
        items = 0
        wall0, cpu0 = time.perf_counter(), time.process_time()
        while True:
            response = client.get(base_url + CHAT_PATH, params=params)
            response.raise_for_status()
            body = loads(response.content)
            page = body["items"]
            items += len(page)
            token = body.get("next_page_token")
            if not page or not token:
                break
            params["page_token"] = token
        return {
            "wall": time.perf_counter() - wall0,
            "cpu": time.process_time() - cpu0,
            "items": items,
        }


async def _async_pass(
    base_url: str, project_id: str, key: str, loads: Callable[[bytes], Any]
) -> dict[str, float]:
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
        params: dict[str, str | int] = {"project_id": project_id, "page_size": PAGE_SIZE}
        items = 0
        wall0, cpu0 = time.perf_counter(), time.process_time()
        while True:
            response = await client.get(base_url + CHAT_PATH, params=params)
            response.raise_for_status()
            body = loads(response.content)
            page = body["items"]
            items += len(page)
            token = body.get("next_page_token")
            if not page or not token:
                break
            params["page_token"] = token
        return {
            "wall": time.perf_counter() - wall0,
            "cpu": time.process_time() - cpu0,
            "items": items,
        }


class ThreadProfiles:
    """cProfile in every thread: the one that starts it and each thread started afterwards.

    A ``cProfile.Profile`` sees only the thread that enables it, and the exporter may poll
    on a worker thread; ``threading.setprofile`` installs a hook that enables a profile of
    its own in each new thread. Deterministic profiling inflates small calls: read the
    table for where the time goes, not for exact shares.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._profiles: list[cProfile.Profile] = []

    def _enable_here(self, *_: object) -> None:
        profile = cProfile.Profile()
        with self._lock:
            self._profiles.append(profile)
        profile.enable()  # replaces this hook in the calling thread

    def start(self) -> None:
        threading.setprofile(self._enable_here)
        self._enable_here()

    def stop(self) -> None:
        threading.setprofile(None)
        sys.setprofile(None)

    def report(self, top: int = 25) -> str:
        text = io.StringIO()
        with self._lock:
            profiles = list(self._profiles)
        stats = pstats.Stats(profiles[0], stream=text)
        for profile in profiles[1:]:
            stats.add(profile)
        stats.sort_stats("tottime").print_stats(top)
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


def _aggregate_only(
    base_url: str, project_id: str, key: str, loads: Callable[[bytes], Any]
) -> dict[str, float]:
    """The aggregation alone: every page fetched and parsed first, then fed twice to a tracker.

    The second (steady-state) pass is measured, so this row plus a bare loop is a rough
    breakdown of the exporter's poll.
    """
    from exporter.aggregate import Listing, SessionTracker

    pages = []
    with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
        params: dict[str, str | int] = {"project_id": project_id, "page_size": PAGE_SIZE}
        while True:
            body = loads(client.get(base_url + CHAT_PATH, params=params).content)
            pages.append(body["items"])
            token = body.get("next_page_token")
            if not body["items"] or not token:
                break
            params["page_token"] = token
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
    import orjson

    kind = params["kind"]
    profile = None
    args = (params["base_url"], params["project_id"], params["key"])
    if kind == "sync-json":
        passes = [_sync_pass(*args, json.loads)]
    elif kind == "async-json":
        passes = [asyncio.run(_async_pass(*args, json.loads))]
    elif kind == "sync-orjson":
        passes = [_sync_pass(*args, orjson.loads)]
    elif kind == "aggregate":
        passes = [_aggregate_only(*args, orjson.loads)]
    elif kind == "async-orjson":
        passes = [asyncio.run(_async_pass(*args, orjson.loads))]
    elif kind == SUBJECT:
        passes, profile = asyncio.run(
            _exporter_polls(
                *args, params.get("polls", EXPORTER_POLLS), params.get("profile", False)
            )
        )
    else:
        raise ValueError(kind)
    for p in passes:
        if p["items"] != params["sessions"]:
            raise BenchError(f"{kind}: listed {p['items']} sessions, expected {params['sessions']}")
    return {"passes": passes, "profile": profile}


# ------------------------------------------------------------------ orchestration


def run(*, quick: bool, rounds: int, profile: bool) -> list[tuple[str, bool, str]]:
    from exporter.simulator import DEFAULT_API_KEY

    sessions = 20_000 if quick else 200_000
    print(f"\n## Poll throughput and CPU: {sessions:,} sessions, page_size {PAGE_SIZE}\n")
    with simulator_process(1, sessions) as sim:
        params = {
            "base_url": sim.base_url,
            "project_id": sim.project_ids[0],
            "key": DEFAULT_API_KEY,
            "sessions": sessions,
        }
        warm = _sync_pass(sim.base_url, sim.project_ids[0], DEFAULT_API_KEY, json.loads)
        print(
            f"simulator pid {sim.pid} at {sim.base_url}; page cache warmed by one full pass "
            f"({warm['wall']:.1f} s)"
        )
        kinds = [kind for kind, _ in BASELINES] + [SUBJECT]
        passes: dict[str, list[list[dict[str, float]]]] = {kind: [] for kind in kinds}
        for r in range(rounds):
            order = kinds if r % 2 == 0 else kinds[::-1]
            for kind in order:
                result = run_child(f"poll:{kind}", {**params, "kind": kind}, timeout=900)
                passes[kind].append(result["passes"])
            print(f"round {r + 1}/{rounds} done (load {load_average()})")
        if profile:
            result = run_child(
                f"poll:{SUBJECT}", {**params, "kind": SUBJECT, "profile": True}, timeout=900
            )
            print("\ncProfile of the exporter's steady-state polls (--profile):\n")
            print(result["profile"])

    rows: list[list[str]] = []
    per_session: dict[str, float] = {}

    def row(key: str, label: str, runs: list[dict[str, float]]) -> None:
        wall = median([p["wall"] for p in runs])
        cpu = median([p["cpu"] for p in runs])
        per_session[key] = cpu / sessions * 1e6
        rows.append(
            [
                label,
                f"{wall:.2f}",
                f"{cpu:.2f}",
                f"{per_session[key]:.1f}",
                f"{sessions / wall:,.0f}",
                " / ".join(f"{p['cpu']:.2f}" for p in runs),
            ]
        )

    for kind, label in BASELINES:
        row(kind, label, [round_passes[0] for round_passes in passes[kind]])
    for n in range(EXPORTER_POLLS):
        what = "baseline poll" if n == 0 else "steady state, no changes"
        row(
            f"poll{n + 1}",
            f"exporter Poller.poll #{n + 1} ({what})",
            [round_passes[n] for round_passes in passes[SUBJECT]],
        )
    for cells, key in zip(rows, per_session, strict=True):
        sync = per_session[key] / per_session["sync-json"]
        asyn = per_session[key] / per_session["async-json"]
        cells.extend([f"{sync:.2f}x", f"{asyn:.2f}x"])
    print()
    print(
        table(
            [
                "variant",
                "wall s",
                "CPU s",
                "CPU µs/session",
                "sessions/s",
                "CPU s per round",
                "CPU vs sync",
                "CPU vs async",
            ],
            rows,
        )
    )
    print(
        f"\nMedians over {rounds} rounds; each variant in a fresh interpreter, order alternating."
    )
    outcome: list[tuple[str, bool, str]] = []
    for n in range(EXPORTER_POLLS):
        key = f"poll{n + 1}"
        target = TARGET_RATIO if n == 0 else STEADY_TARGET_RATIO
        for base, name in (("sync-json", "sync"), ("async-json", "async")):
            ratio = per_session[key] / per_session[base]
            met = ratio <= target
            outcome.append(
                (
                    f"poll #{n + 1} CPU/session within {target}x of bare {name} loop",
                    met,
                    f"{ratio:.2f}x ({per_session[key]:.1f} vs {per_session[base]:.1f} µs/session)",
                )
            )
    for name, met, detail in outcome:
        print(f"target: {name}: {verdict(met)}, {detail}")
    return outcome
