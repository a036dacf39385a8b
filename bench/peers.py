"""The simulator and exporter peers that incremental and capacity poll cycle by cycle.

A benchmark that changes its simulator between polls, and polls on command, runs each in a
process of its own (``bench.run --child peers``, role ``simulator`` or ``exporter``): one JSON
line in, one JSON line out. Each process's CPU is then its own, read from /proc, and the
exporter's peer measures its polls with ``time.process_time()`` (every thread). :class:`Run`
drives one exporter peer over a simulator peer's projects and keeps every cycle it measured.

The exporter's ``/metrics`` app and server are built here and only here (:func:`metrics_app`,
:func:`metrics_server`), for these peers and for bench.scrape.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import random
import sys
import threading
import time
import uuid
import zlib
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any

from bench.children import Child, commands, peer, reply
from bench.common import BenchError, load_average, peak_rss_bytes, proc_cpu_seconds, rss_bytes

# Since b303ab8 the exporter starts each project at its own point (phase) of the full-listing
# cycle, from a hash of its id, so projects started together take their periodic full listings
# at different polls. The benchmarks that count polls (bench.capacity, bench.incremental) give
# their simulated projects ids that all have phase 0 instead: every project's periodic full
# listing falls on the same poll, the one after ``full_listing_every`` polls since the first,
# as before b303ab8. That is the worst case (every project listing in full in one interval),
# and it keeps a steady-state cycle either all incremental or all full listings.
FULL_LISTING_EVERY = 10  # llamacloud.full_listing_every's default; the exporter peers keep it
RERUNS = 5  # per project, before every steady-state cycle
CREATES = 2  # new sessions per project, likewise
POOL = 100  # sessions per project that re-runs are drawn from (plus every one created)
Cycle = dict[str, Any]  # one poll cycle's measurements, as the exporter peer answers them


def listing_phase(project_id: str, full_every: int = FULL_LISTING_EVERY) -> int:
    """The polls a project's first (baseline) listing counts as since a full listing.

    Mirrors ``Poller._list`` in exporter/poller.py, which computes it inline (there is no
    function to import): change the two together.
    """
    return zlib.crc32(project_id.encode("utf-8", "replace")) % full_every


def same_phase_ids(
    seed: int, count: int, full_every: int = FULL_LISTING_EVERY, phase: int = 0
) -> list[str]:
    """``count`` distinct UUID4 project ids drawn from ``seed`` (the same ones for a seed), all of
    ``phase`` (:func:`listing_phase`; 0: the periodic full listing is poll ``full_every + 1``,
    ``full_every - 1``: poll 2); about ``full_every`` draws per id kept."""
    rng = random.Random(f"{seed}:project-ids")
    ids: dict[str, None] = {}
    while len(ids) < count:
        project_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        if listing_phase(project_id, full_every) == phase:
            ids[project_id] = None
    return list(ids)


def metrics_app(store: Any) -> Any:
    """The exporter's app over ``store``, as the daemon builds it."""
    from exporter.web.app import make_app

    return make_app(store)


def metrics_server(store: Any) -> Any:
    """The exporter's HTTP server over ``store`` on a free loopback port, not started."""
    from exporter.web import MetricsServer

    return MetricsServer("127.0.0.1", 0, store)


# ------------------------------------------------------------------ the peers' side


def child(params: dict[str, Any]) -> dict[str, Any]:
    if params["role"] == "simulator":
        return _serve_simulator(params)
    if params["role"] == "exporter":
        return asyncio.run(_serve_exporter(params))
    raise ValueError(params["role"])


def _serve_simulator(params: dict[str, Any]) -> dict[str, Any]:
    """A Simulator (newest first) in this process, changed on command, so its CPU is never the
    exporter's.

    ``params``: ``seed``; ``groups``, {name: [projects, sessions each]}, added in that order,
    with ids from :func:`same_phase_ids` (of ``phase``, 0 unless given); ``pool_size`` sessions
    per project that re-runs are drawn from, sampled from its whole listing (``pool``
    ``"listing"``) or newly created (``"created"``: decoding millions of sessions to pick a few
    would take minutes); ``latency`` per request; ``burst`` and ``clock_start`` (seconds before
    now; else ``clock_epoch``, seconds since the epoch) as ``Simulator`` takes them; with
    ``truth``, the runs its sessions make from then on are summed from their histories
    (:class:`RunsMade`). Commands: ``advance`` (``reruns``
    re-runs, each session the next of ``times`` runs in turn, default one, and ``creates`` new
    sessions in every project, or in those of ``group``), ``step`` (``n`` ticks of the clock,
    the simulator's own evolution), ``sessions`` (``count`` new sessions of ``runs`` runs each
    in ``project``: their ids), ``rerun`` (each of ``ids`` in ``project`` once more),
    ``requests`` (the requests answered since the last time asked, by endpoint, of the last
    ``REQUEST_LOG_SIZE`` the simulator keeps), ``log`` (the same requests one by one: path,
    query, status; ``lost`` counts those past the log's size) and
    ``latency`` (``seconds``). Every answer holds the resident memory and the requests answered
    so far, and with ``truth`` the runs made (:meth:`RunsMade.totals`).
    """
    from exporter.simulator import Simulator

    rss_before = rss_bytes()
    began = time.perf_counter()
    start = None
    if "clock_start" in params:
        start = datetime.now(timezone.utc) - timedelta(seconds=params["clock_start"])
    elif "clock_epoch" in params:  # simulators of the same data: the same clock too
        start = datetime.fromtimestamp(params["clock_epoch"], timezone.utc)
    sim = Simulator(
        projects=0,
        seed=params["seed"],
        order="newest-first",
        burst=params.get("burst", 0.0),
        clock_start=start,
    )
    count = sum(p for p, _ in params["groups"].values())
    ids = iter(same_phase_ids(params["seed"], count, phase=params.get("phase", 0)))
    groups = {
        name: [sim.add_project(next(ids), sessions=sessions) for _ in range(projects)]
        for name, (projects, sessions) in params["groups"].items()
    }
    built = time.perf_counter() - began
    picks = random.Random(f"{params['seed']}:picks")
    pools: dict[str, list[str]] = {}
    for pid in sim.project_ids:
        if params["pool"] == "listing":  # any session of the project may re-run
            listed = [item["session_id"] for item in sim.sessions(pid)]
            pools[pid] = picks.sample(listed, min(params["pool_size"], len(listed)))
        else:
            pools[pid] = sim.create_sessions(pid, params["pool_size"])
    truth = RunsMade(sim) if params.get("truth") else None
    sim.latency = params.get("latency", 0.0)
    url = sim.start()
    logged = 0  # requests answered before the log was last cleared
    ready_seconds = time.perf_counter() - began
    reply(
        {
            "base_url": url,
            "project_ids": sim.project_ids,
            "groups": groups,
            "build_seconds": built,
            "ready_seconds": ready_seconds,
            "rss": rss_bytes(),
            "rss_before": rss_before,
        }
    )
    try:
        for command in commands():
            answer: dict[str, Any] = {}
            op = command["op"]
            if op == "advance":
                times = command.get("times", [1])
                for pid in groups[command["group"]] if "group" in command else sim.project_ids:
                    chosen = picks.sample(pools[pid], command["reruns"])
                    for n, sid in enumerate(chosen):
                        sim.rerun(pid, sid, times=times[n % len(times)])
                    pools[pid].extend(sim.create_sessions(pid, command["creates"]))
            elif op == "step":
                sim.step(command.get("n", 1))
            elif op == "sessions":
                pid, count, runs = command["project"], command["count"], command["runs"]
                answer["ids"] = _sessions_of(sim, pid, count, runs)
            elif op == "rerun":
                for sid in command["ids"]:
                    sim.rerun(command["project"], sid)
            elif op == "requests":
                answer["endpoints"] = dict(Counter(str(r.endpoint) for r in sim.requests))
                sim.clear_requests()
            elif op == "log":
                log = sim.requests
                answer["log"] = [[r.path, r.query, r.status] for r in log]
                answer["lost"] = sim.request_count - logged - len(log)
                sim.clear_requests()
                logged = sim.request_count
            elif op == "latency":
                sim.latency = command["seconds"]
            else:
                raise ValueError(command)
            if truth is not None:
                answer["truth"] = truth.totals()
            reply({**answer, "rss": rss_bytes(), "requests": sim.request_count})
    finally:
        sim.stop()
    return {"requests": sim.request_count}


def _sessions_of(sim: Any, project_id: str, count: int, runs: int) -> list[str]:
    """``count`` new sessions of exactly ``runs`` runs each (at least one: a new session may
    have run once when it was made)."""
    ids = sim.create_sessions(project_id, count)
    for sid in ids:
        more = runs - len(sim.history(project_id, sid))
        if more > 0:
            sim.rerun(project_id, sid, times=more)
    return list(ids)


class RunsMade:
    """The runs a simulator's sessions made since this was built, from their histories (the
    ground truth that exact counting must reach): after every change, each session listed with
    a new ``last_updated_at`` (or new) has its history read again and the stop events past those
    seen before are summed. A session runs and is deleted at different ticks of ``step()``, so
    reading after each change misses none."""

    def __init__(self, sim: Any) -> None:
        self._sim = sim
        self._runs = dict.fromkeys(("runs", "errors", "input_tokens", "output_tokens", "turns"), 0)
        # By project: each session's last_updated_at and how many stop events it had then.
        self._seen = {pid: self._read(pid, {}, count=False) for pid in sim.project_ids}

    def _read(
        self, pid: str, seen: dict[str, tuple[str, int]], *, count: bool = True
    ) -> dict[str, tuple[str, int]]:
        now: dict[str, tuple[str, int]] = {}
        for item in self._sim.sessions(pid):
            sid, stamp = item["session_id"], item["last_updated_at"]
            known = seen.get(sid)
            if known is not None and known[0] == stamp:
                now[sid] = known
                continue
            stops = self._sim.history(pid, sid)
            for stop in stops[known[1] if known else 0 :] if count else ():
                usage = stop["usage"]
                self._runs["runs"] += 1
                self._runs["errors"] += stop["is_error"] is True
                self._runs["input_tokens"] += usage["total_input_tokens"]
                self._runs["output_tokens"] += usage["total_output_tokens"]
                self._runs["turns"] += usage["turns"]
            now[sid] = (stamp, len(stops))
        return now

    def totals(self) -> dict[str, int]:
        """Runs, errors, input and output tokens and turns made so far, every project's."""
        self._seen = {pid: self._read(pid, seen) for pid, seen in self._seen.items()}
        return dict(self._runs)


async def _serve_exporter(params: dict[str, Any]) -> dict[str, Any]:
    """The daemon's wiring (``cli._components``: Store, ApiClient, Poller) over ``project_ids``,
    all on one simulator at ``base_url``.

    A ``cycle`` command polls every project once as the daemon does (``Poller.poll_all_once``)
    and answers its wall time, CPU, requests, pages, listings, projects up, errors and memory;
    with ``compare``, every project's gauges and counters too. ``concurrency`` sets
    max_concurrency as a reload does. With ``exposition`` the ``/metrics`` app is built too,
    without its HTTP server: its exposition cache renders a project when its poll ends and
    compresses it soon after, as in the daemon, and that is part of what a poll costs. ``runs`` is
    ``llamacloud.runs`` (the exporter's default unless given); ``reads`` counts the history
    reads a cycle asked for (calls of ``ApiClient.session``, each one request unless retried).
    """
    from exporter.cli import _components
    from exporter.config import Config, ProjectConfig, Secret
    from exporter.logs import configure_logging
    from exporter.simulator import DEFAULT_API_KEY
    from exporter.store import StateFile

    configure_logging(params.get("log_level", "info"), "json")  # as in production, to its log
    projects = tuple(
        ProjectConfig(
            id=pid,
            name=f"bench-{n}",
            organization_id="",
            base_url=params["base_url"],
            page_size=params["page_size"],
            api_key=Secret(DEFAULT_API_KEY),
            listing=params["mode"],
            **({"runs": params["runs"]} if "runs" in params else {}),
        )
        for n, pid in enumerate(params["project_ids"])
    )
    config = Config(projects=projects, max_pages=10**6, max_concurrency=params["max_concurrency"])
    state = StateFile(params["state_path"]) if params.get("state_path") else None
    store, poller, client, targets = _components(config, state)
    reads, lock, session = [0], threading.Lock(), client.session

    def counted_session(*args: Any, **kwargs: Any) -> Any:
        with lock:  # reads run on the polls' worker threads
            reads[0] += 1
        return session(*args, **kwargs)

    client.session = counted_session  # type: ignore[method-assign]
    app = metrics_app(store) if params.get("exposition") else None
    loop = asyncio.get_running_loop()
    profiles = None
    reply({"ready": True, "rss": rss_bytes(), "full_listing_every": config.full_listing_every})
    try:
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            command = json.loads(line)
            if command["op"] == "concurrency":
                config = dataclasses.replace(config, max_concurrency=command["value"])
                await targets.reload(config)
                reply({"max_concurrency": config.max_concurrency})
                continue
            if command["op"] == "cpu":
                reply({"cpu": time.process_time()})
                continue
            if command["op"] == "profile":  # cProfile every thread until asked again
                from bench.poll import ThreadProfiles

                if profiles is None:
                    profiles = ThreadProfiles(cpu=True)
                    profiles.start()
                    reply({"profile": None})
                else:
                    profiles.stop()
                    top, sort = command.get("top", 40), command.get("sort", "tottime")
                    reply({"profile": profiles.report(top, sort)})
                    profiles = None
                continue
            if command["op"] != "cycle":
                raise ValueError(command)
            before, reads_before = store.api_requests(), reads[0]
            wall0, cpu0 = time.perf_counter(), time.process_time()
            ok = await poller.poll_all_once()
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            after = store.api_requests()
            states = [store.get(p.id) for p in projects]
            pages = [s.last_poll_pages or 0 for s in states]
            result = {
                "ok": ok,
                "wall": wall,
                "cpu": cpu,
                "requests": sum(after.values()) - sum(before.values()),
                "codes": {
                    k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)
                },
                "up": sum(s.up for s in states),
                "errors": sorted({s.last_error for s in states if s.last_error}),
                "pages": sum(pages),
                "reads": reads[0] - reads_before,
                "reads_pending": sum(s.reads_pending or 0 for s in states),
                "pages_range": [min(pages), max(pages)],
                "incremental": sum(s.last_poll_incremental for s in states),
                "sessions": sum(s.snapshot.sessions for s in states if s.snapshot),
                "rss": rss_bytes(),
                "peak_rss": peak_rss_bytes(),
            }
            if params.get("compare"):
                result["state"] = {
                    s.project_id: {
                        "gauges": dataclasses.asdict(s.snapshot) if s.snapshot else None,
                        "counters": dataclasses.asdict(s.totals),
                    }
                    for s in states
                }
            reply(result)
    finally:
        client.close()
        if state is not None:
            state.close()
        del app
    return {"peak_rss": peak_rss_bytes()}


# ------------------------------------------------------------------ the parent's side


def start_simulators(
    stack: contextlib.ExitStack, names: list[str], timeout: float, **params: Any
) -> dict[str, Child]:
    """A simulator peer per name, all from the same ``params`` (so the same data), built in
    parallel; each returned once ready, its first line in ``ready``. Their clocks start at the
    same second (``clock_epoch``), where each would take its own start's: two started across a
    second's boundary served timestamps a second apart."""
    common = {"role": "simulator", "pool_size": POOL, "clock_epoch": int(time.time()), **params}
    sims = {name: peer(stack, "peers", name, common) for name in names}
    for sim in sims.values():
        sim.ready = sim.receive(timeout)
    return sims


@dataclasses.dataclass
class Run:
    """One exporter peer over a simulator peer's projects (those of ``group``, or all), driven
    cycle by cycle; every cycle it measured, labelled with the settings it ran at."""

    name: str
    mode: str  # listing: full or auto
    sim: Child
    exporter: Child
    size: tuple[int, int]  # projects, sessions each
    group: str | None
    concurrency: int
    latency: float
    verbose: bool
    cycles: list[Cycle] = dataclasses.field(default_factory=list)

    @classmethod
    def start(
        cls,
        stack: contextlib.ExitStack,
        sim: Child,
        mode: str,
        size: tuple[int, int],
        *,
        name: str,
        group: str | None = None,
        page_size: int = 100,
        concurrency: int = 4,
        latency: float = 0.0,
        verbose: bool = False,
        **extra: Any,
    ) -> Run:
        """An exporter peer in listing ``mode``, once ready; BenchError unless it keeps the
        default ``full_listing_every`` (the project ids' phases and the polls counted assume it).
        ``extra`` goes to the peer (``exposition``, ``compare``)."""
        ids = sim.ready["groups"][group] if group else sim.ready["project_ids"]
        params = {"role": "exporter", "mode": mode, "base_url": sim.ready["base_url"]}
        params |= {"project_ids": ids, "page_size": page_size, "max_concurrency": concurrency}
        exporter = peer(stack, "peers", name, params | extra)
        exporter.ready = exporter.receive(120)
        every = exporter.ready["full_listing_every"]
        if every != FULL_LISTING_EVERY:
            raise BenchError(f"{name}: full_listing_every is {every}, not {FULL_LISTING_EVERY}")
        return cls(name, mode, sim, exporter, size, group, concurrency, latency, verbose)

    def cycle(self, kind: str = "steady", *, change: bool = True) -> Cycle:
        """``RERUNS`` re-runs and ``CREATES`` new sessions per project (with ``change``), then
        one poll of every project, with the simulator's CPU over it (``sim_cpu``); BenchError
        unless every project's poll succeeded."""
        projects, sessions = self.size
        if change:
            group = {"group": self.group} if self.group else {}
            self.sim.call(
                120 + projects * 0.5, op="advance", reruns=RERUNS, creates=CREATES, **group
            )
        # Generous: every page at its latency, one project after another, plus CPU.
        timeout = 300 + projects * (math.ceil(sessions / 100) + 10) * (self.latency + 0.01)
        sim_cpu = proc_cpu_seconds(self.sim.pid)
        result = self.exporter.call(timeout, op="cycle")
        result["sim_cpu"] = proc_cpu_seconds(self.sim.pid) - sim_cpu
        if not result["ok"]:
            raise BenchError(f"{self.name}: a poll failed: {', '.join(result['errors'])}")
        # Every page and history read is one request unless retried.
        if result["requests"] != result["pages"] + result["reads"]:
            print(
                f"note: {self.name}: {result['requests']} requests for {result['pages']} pages "
                f"and {result['reads']} history reads (retries: {result['codes']})"
            )
        result.update(
            kind=kind,
            concurrency=self.concurrency,
            latency=self.latency,
            projects=projects,
            full=projects - result["incremental"],
        )
        self.cycles.append(result)
        if self.verbose:
            print(
                f"{self.name}: {kind}, max_concurrency {self.concurrency}, "
                f"{self.latency * 1000:.0f} ms: {result['wall']:.2f} s, CPU {result['cpu']:.2f} s "
                f"(load {load_average()})"
            )
            sys.stdout.flush()
        return result

    def set_concurrency(self, value: int) -> None:
        if value != self.concurrency:
            self.exporter.call(60, op="concurrency", value=value)
            self.concurrency = value

    def set_latency(self, seconds: float) -> None:
        self.sim.call(60, op="latency", seconds=seconds)
        self.latency = seconds
