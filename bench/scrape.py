"""/metrics latency: many projects, filtered (``?name[]=``) or not, and one project with few or
very many tracked sessions.

Each exporter side runs in its own fresh interpreter (a real ``MetricsServer`` on loopback,
its store built through ``SessionTracker`` and ``aggregate``) while a background thread
re-records a poll result for a few projects every ~60 ms, as the poller does in production
(which re-renders those projects' cached lines on that thread). This process is the
scraper, like Prometheus: sequential requests, the body read raw (gzip is not decoded, so
the client's own decompression is not counted). The 10 vs 1,000,000 sessions servers run
side by side and are scraped in alternation, so machine noise hits both alike. A filtered
scrape is timed against an unfiltered one and against the path filtered scrapes took before
(prometheus_client's own app over a restricted registry), in the same process, interleaved.
"""

from __future__ import annotations

import json
import math
import random
import sys
import threading
import time
import uuid
from contextlib import ExitStack
from typing import Any

import httpx

from bench.common import (
    BenchError,
    load_average,
    median,
    percentile,
    synthetic_pages,
    table,
    verdict,
)
from bench.peers import Peer, commands, reply, serving_child

TARGET_P99_MS = 25.0
NO_GROWTH_RATIO = 1.25  # "no growth": the large case's median within noise of the small one
CHURN_SECONDS = 0.06
CHURN_PROJECTS = 3
WARMUP = 3
# The Accept header Prometheus sends: it prefers OpenMetrics.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
# What a federation job or a dashboard asks for: whole families; and part of a histogram,
# the case where lines are picked out of each project's piece.
FILTER_QUERY = "name[]=llamacloud_up&name[]=llamacloud_chat_runs_total"
PART_QUERY = "name[]=llamacloud_chat_run_duration_seconds_bucket"
OLD_CALLS = 3  # the old filtered path took about 0.5 s a call at 1,000 projects
PARALLEL = 6  # clients scraping filtered at once while a plain scrape is timed
# Whole families are joined from the cache as an unfiltered scrape is, less of them: no
# dearer than one. Part of a histogram is picked out line by line from each project's piece
# of it (a fifth of the text here) and, for gzip, compressed then: at most twice.
TARGET_RATIO = {"filtered": 1.0, "part": 2.0}
VARIANTS = {
    "identity": ("/metrics", {"Accept-Encoding": "identity"}),
    "gzip": ("/metrics", {"Accept-Encoding": "gzip"}),
    "prometheus": ("/metrics", {"Accept-Encoding": "gzip", "Accept": PROMETHEUS_ACCEPT}),
    "filtered": (
        f"/metrics?{FILTER_QUERY}",
        {"Accept-Encoding": "gzip", "Accept": PROMETHEUS_ACCEPT},
    ),
    "healthz": ("/healthz", {"Accept-Encoding": "identity"}),
}
LABELS = {
    "identity": "/metrics, Accept-Encoding: identity",
    "gzip": "/metrics, Accept-Encoding: gzip",
    "prometheus": "/metrics as Prometheus asks (OpenMetrics, gzip)",
    "filtered": f"/metrics?{FILTER_QUERY} as Prometheus asks",
    "loaded": f"/metrics as Prometheus asks, while {PARALLEL} clients scrape ?{FILTER_QUERY}",
    "healthz": "/healthz (floor: an HTTP round trip)",
}
# The in-process cases of a filtered scrape: (label, query, the old path or not).
FILTER_CASES = {
    "unfiltered": ("/metrics, cached", "", False),
    "filtered": (f"/metrics?{FILTER_QUERY}", FILTER_QUERY, False),
    "part": (f"/metrics?{PART_QUERY}", PART_QUERY, False),
    "old": (f"/metrics?{FILTER_QUERY}, the old path", FILTER_QUERY, True),
}


# ------------------------------------------------------------------ the exporter side


def child(params: dict[str, Any]) -> dict[str, Any]:
    """Build the store, serve it, print where, and churn until stdin closes."""
    from exporter.aggregate import SessionTracker, aggregate
    from exporter.config import ProjectConfig, Secret
    from exporter.store import Store
    from exporter.web import MetricsServer

    n_projects, sessions = params["projects"], params["sessions"]
    rng = random.Random(7)
    built = time.perf_counter()
    store = Store()
    trackers: list[SessionTracker] = []  # kept alive, as a real poller keeps them
    results = {}
    for i in range(n_projects):
        project = ProjectConfig(
            id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            name=f"project-{i:04d}",
            organization_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            base_url="https://api.cloud.llamaindex.ai",
            page_size=100,
            api_key=Secret("llx-bench"),
        )
        store.add_project(project)
        tracker = SessionTracker()
        aggregate(synthetic_pages(sessions, seed=i), tracker)  # the baseline poll
        # A second poll where a third of the sessions re-ran: non-zero counters and histograms.
        result = aggregate(synthetic_pages(sessions, seed=i, changed_share=0.3), tracker)
        if i % 50 == 1:
            store.record_failure(project.id, "rate_limited", duration=2.5, finished=time.time())
        store.record_success(
            project.id,
            result,
            duration=0.2 + rng.random(),
            finished=time.time(),
        )
        trackers.append(tracker)
        results[project.id] = result
    for code, count in (("200", 500), ("429", 17), ("503", 4), ("error", 2)):
        for _ in range(count):
            store.count_request(code)
    built = time.perf_counter() - built

    server = MetricsServer("127.0.0.1", 0, store)
    server.start()
    stop = threading.Event()
    ids = list(results)
    churned = 0

    def churn() -> None:
        nonlocal churned
        while not stop.wait(CHURN_SECONDS):
            for pid in rng.sample(ids, min(CHURN_PROJECTS, len(ids))):
                result = results[pid]
                store.record_success(
                    pid,
                    result,
                    duration=0.2 + rng.random(),
                    finished=time.time(),
                )
                churned += 1

    thread = threading.Thread(target=churn, daemon=True)
    thread.start()
    try:
        ready = {
            "port": server.port,
            "tracked": sum(len(t) for t in trackers),
            "build_seconds": built,
            "app": _app_times(server),
            "filtered": _filtered_times(server, store) if params.get("filtered") else None,
            "profile": _app_profile(server) if params.get("profile") else None,
        }
        sys.stdout.write(json.dumps(ready) + "\n")
        sys.stdout.flush()
        sys.stdin.read()  # until the scraper is done
    finally:
        stop.set()
        thread.join(timeout=5)
        server.stop()
    return {"churned": churned}


def _call(app: Any, encoding: str, query: str = "", accept: str = "", wsgi: bool = False) -> float:
    """Milliseconds for one in-process call of the server's app (or a WSGI app) for /metrics."""
    from exporter.web.protocol import Request

    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/metrics",
        "QUERY_STRING": query,
        "HTTP_ACCEPT": accept,
        "HTTP_ACCEPT_ENCODING": encoding,
    }
    request = Request("GET", "/metrics", query, (("accept", accept), ("accept-encoding", encoding)))
    started = time.perf_counter()
    if wsgi:
        b"".join(app(environ, lambda *args: None))
    else:
        app(request)
    return (time.perf_counter() - started) * 1000


def _app_times(server: Any, calls: int = 30) -> dict[str, list[float]]:
    """Server-side time alone: the server's WSGI app called in-process, no HTTP around it."""
    app = server.app
    if app is None:
        return {}
    out: dict[str, list[float]] = {}
    for n in range(calls + 2):  # the first two warm the per-project cache
        for encoding in ("identity", "gzip"):
            elapsed = _call(app, encoding)
            if n >= 2:
                out.setdefault(encoding, []).append(elapsed)
    return out


def _filtered_times(server: Any, store: Any, calls: int = 30) -> dict[str, list[float]]:
    """Server-side times of FILTER_CASES (key ``case encoding``), interleaved call by call, as
    Prometheus asks (OpenMetrics); the old path, prometheus_client's own app over the same
    store, only OLD_CALLS times."""
    from prometheus_client import make_wsgi_app
    from prometheus_client.registry import CollectorRegistry

    from exporter.metrics import StoreCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store))
    old = make_wsgi_app(registry)
    out: dict[str, list[float]] = {}
    for n in range(calls + 2):  # the first two warm the per-project cache
        for case, (_, query, is_old) in FILTER_CASES.items():
            if is_old and n >= OLD_CALLS:
                continue
            for encoding in ("identity", "gzip"):
                elapsed = _call(
                    old if is_old else server.app, encoding, query, PROMETHEUS_ACCEPT, is_old
                )
                if n >= 2 or is_old:
                    out.setdefault(f"{case} {encoding}", []).append(elapsed)
    return out


def _app_profile(server: Any, calls: int = 20) -> str:
    """cProfile of the server's WSGI app answering gzip scrapes, in-process."""
    import cProfile
    import io
    import pstats

    app = server.app
    if app is None:
        return "the server's WSGI app could not be reached"
    from exporter.web.protocol import Request

    request = Request("GET", "/metrics", "", (("accept-encoding", "gzip"),))
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(calls):
        app(request)
    profile.disable()
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(12)
    return f"{calls} gzip scrapes of the WSGI app\n" + text.getvalue().strip()


# ------------------------------------------------------------------ the scraper side


class Scraper:
    def __init__(
        self, port: int, app: dict[str, list[float]], filtered: dict[str, list[float]] | None
    ) -> None:
        self.app = app
        self.filtered = filtered or {}
        self._port = port
        self._client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
        self.samples: dict[str, list[float]] = {}
        self.sizes: dict[str, int] = {}
        self.parallel_scrapes = 0  # filtered scrapes made by under_load's clients

    def close(self) -> None:
        self._client.close()

    def scrape(self, variant: str, record: bool = True) -> None:
        path, headers = VARIANTS[variant]
        started = time.perf_counter()
        with self._client.stream("GET", path, headers=headers) as response:
            size = sum(len(chunk) for chunk in response.iter_raw())
        elapsed = time.perf_counter() - started
        if response.status_code != 200:
            raise BenchError(f"{path}: HTTP {response.status_code}")
        encoding = response.headers.get("content-encoding", "identity")
        if path == "/metrics" and encoding != headers["Accept-Encoding"]:
            raise BenchError(f"asked for {headers['Accept-Encoding']}, got {encoding}")
        if record:
            self.samples.setdefault(variant, []).append(elapsed * 1000)
            self.sizes[variant] = size

    def under_load(self, scrapes: int) -> None:
        """``scrapes`` plain scrapes (as Prometheus asks), recorded as ``loaded``, while
        PARALLEL clients in a process of their own scrape filtered without pause (in this
        one they would hold this client's GIL, not the server)."""
        with ExitStack() as stack:
            peer = Peer("scrape-load", "filtered scrape clients", {"port": self._port}, stack)
            if not peer.receive(60).get("ready"):
                raise BenchError("the filtered scrape clients did not start")
            path, headers = VARIANTS["prometheus"]
            for _ in range(scrapes):
                began = time.perf_counter()
                self._client.get(path, headers=headers).raise_for_status()
                self.samples.setdefault("loaded", []).append((time.perf_counter() - began) * 1000)
            done = peer.call(60, stop=True)
            peer.close(30)
        if done["errors"]:
            raise BenchError(f"a filtered scrape client failed: {done['errors'][0]}")
        self.parallel_scrapes += done["scrapes"]


def load_child(params: dict[str, Any]) -> dict[str, Any]:
    """Role ``scrape-load``: PARALLEL clients scraping filtered without pause from when they are
    all connected (then it replies ``ready``) until a command arrives; the scrapes they made."""
    stop = threading.Event()
    started = threading.Barrier(PARALLEL + 1)
    done = [0] * PARALLEL
    errors: list[str] = []

    def load(slot: int) -> None:
        path, headers = VARIANTS["filtered"]
        with httpx.Client(base_url=f"http://127.0.0.1:{params['port']}", timeout=30) as client:
            try:
                client.get(path, headers=headers).raise_for_status()
                started.wait(30)
                while not stop.is_set():
                    client.get(path, headers=headers).raise_for_status()
                    done[slot] += 1
            except (httpx.HTTPError, threading.BrokenBarrierError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                started.abort()

    threads = [threading.Thread(target=load, args=(i,), daemon=True) for i in range(PARALLEL)]
    for thread in threads:
        thread.start()
    try:
        started.wait(30)
        reply({"ready": True})
        next(commands(), None)  # any command, or stdin closed: stop
    except threading.BrokenBarrierError:
        reply({"ready": False})
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    return {"scrapes": sum(done), "errors": errors}


def _scrape_rounds(
    sides: list[dict[str, Any]],
    variants: list[str],
    per_round: int,
    rounds: int,
    loaded: bool = False,
) -> tuple[list[list[Scraper]], list[str]]:
    """Per round: fresh servers for every side, scraped in alternation; the order flips. With
    ``loaded``, then plain scrapes of each side while PARALLEL clients scrape it filtered."""
    out: list[list[Scraper]] = []
    profiles: list[str] = []
    for r in range(rounds):
        order = sides if r % 2 == 0 else sides[::-1]
        with ExitStack() as stack:
            ready = {id(side): stack.enter_context(serving_child("scrape", side)) for side in order}
            profiles += [x["profile"] for x in ready.values() if x.get("profile")]
            scrapers = {
                id(side): Scraper(
                    ready[id(side)]["port"], ready[id(side)]["app"], ready[id(side)]["filtered"]
                )
                for side in order
            }
            for s in scrapers.values():
                stack.callback(s.close)
            for _ in range(WARMUP):
                for side in order:
                    for variant in variants:
                        scrapers[id(side)].scrape(variant, record=False)
            for _ in range(per_round):
                for side in order:
                    for variant in variants:
                        scrapers[id(side)].scrape(variant)
            if loaded:
                for side in order:
                    scrapers[id(side)].under_load(per_round)
            out.append([scrapers[id(side)] for side in sides])
        print(f"round {r + 1}/{rounds} done (load {load_average()})")
    return out, profiles


def _pooled(scrapers: list[Scraper], variant: str) -> list[float]:
    return [x for s in scrapers for x in s.samples[variant]]


def _round_medians(scrapers: list[Scraper], variant: str) -> str:
    return " / ".join(f"{median(s.samples[variant]):.2f}" for s in scrapers)


def _app_rows(scrapers: list[Scraper], label: str) -> list[list[str]]:
    """Rows for the server-side time alone, when the server's app could be reached."""
    rows = []
    for encoding in ("identity", "gzip"):
        if not all(encoding in s.app for s in scrapers):
            continue
        pooled = [x for s in scrapers for x in s.app[encoding]]
        rows.append(
            [
                f"{label}, {encoding} (server side only: WSGI app in-process)",
                str(len(pooled)),
                f"{median(pooled):.2f}",
                f"{percentile(pooled, 99):.2f}",
                f"{max(pooled):.2f}",
                "",
                " / ".join(f"{median(s.app[encoding]):.2f}" for s in scrapers),
            ]
        )
    return rows


def _filtered_table(many: list[Scraper], projects: int) -> list[tuple[str, bool, str]]:
    """Server-side time of filtered scrapes as ratios to an unfiltered one and to the old path,
    each measured in the same processes; the targets on the ratios to the unfiltered one."""
    print(f"\n## Scrape: ?name[]= filtered vs unfiltered with {projects:,} projects\n")
    outcome = []
    rows = []
    for encoding in ("identity", "gzip"):
        pooled = {
            case: [x for s in many for x in s.filtered[f"{case} {encoding}"]]
            for case in FILTER_CASES
        }
        cached, old = median(pooled["unfiltered"]), median(pooled["old"])
        for case, (label, _, _) in FILTER_CASES.items():
            times = pooled[case]
            ratio = median(times) / cached
            rows.append(
                [
                    f"{label}, {encoding}",
                    str(len(times)),
                    f"{median(times):.2f}",
                    f"{max(times):.2f}",
                    f"{ratio:.3f}x",
                    f"{median(times) / old:.4f}x",
                    " / ".join(f"{median(s.filtered[f'{case} {encoding}']):.2f}" for s in many),
                ]
            )
            if case in TARGET_RATIO:
                outcome.append(
                    (
                        f"a filtered scrape ({label}, {encoding}) costs at most "
                        f"{TARGET_RATIO[case]:.1f}x an unfiltered one, {projects:,} projects",
                        ratio <= TARGET_RATIO[case],
                        f"{ratio:.3f}x the unfiltered scrape, {median(times) / old:.4f}x the old "
                        f"path ({old / median(times):,.0f} times faster)",
                    )
                )
    print(
        table(
            [
                "request (server side: WSGI app in-process, as Prometheus asks)",
                "calls",
                "median ms",
                "max ms",
                "vs unfiltered",
                "vs old path",
                "round medians ms",
            ],
            rows,
        )
    )
    print(
        f"\nThe cases interleaved call by call in each server process, before its scrapes; the "
        f"old path (prometheus_client's make_wsgi_app over the same store, what ?name[]= ran "
        f"before) {OLD_CALLS} times per encoding and process."
    )
    return outcome


def run(*, quick: bool, rounds: int, profile: bool) -> list[tuple[str, bool, str]]:
    projects = 100 if quick else 1000
    big = 100_000 if quick else 1_000_000
    total = 50 if quick else 200
    per_round = math.ceil(total / rounds)
    outcome: list[tuple[str, bool, str]] = []

    print(f"\n## Scrape: /metrics latency with {projects:,} projects\n")
    variants = ["identity", "gzip", "prometheus", "filtered", "healthz"]
    side = {"projects": projects, "sessions": 20, "profile": profile, "filtered": True}
    pairs, profiles = _scrape_rounds([side], variants, per_round, rounds, loaded=True)
    many = [pair[0] for pair in pairs]
    rows = []
    for variant in variants:
        pooled = _pooled(many, variant)
        rows.append(
            [
                LABELS[variant],
                str(len(pooled)),
                f"{median(pooled):.2f}",
                f"{percentile(pooled, 99):.2f}",
                f"{max(pooled):.2f}",
                f"{many[-1].sizes[variant]:,}",
                _round_medians(many, variant),
            ]
        )
        if variant != "healthz":
            p99 = percentile(pooled, 99)
            outcome.append(
                (
                    f"p99 under {TARGET_P99_MS:.0f} ms with {projects:,} projects ({variant})",
                    p99 < TARGET_P99_MS,
                    f"p99 {p99:.2f} ms, median {median(pooled):.2f} ms "
                    f"({p99 / TARGET_P99_MS:.2f}x the target)",
                )
            )
    loaded, quiet = _pooled(many, "loaded"), _pooled(many, "prometheus")
    rows.append(
        [
            LABELS["loaded"],
            str(len(loaded)),
            f"{median(loaded):.2f}",
            f"{percentile(loaded, 99):.2f}",
            f"{max(loaded):.2f}",
            "",
            _round_medians(many, "loaded"),
        ]
    )
    rows += _app_rows(many, "/metrics")
    print()
    print(
        table(
            ["request", "scrapes", "median ms", "p99 ms", "max ms", "bytes", "round medians ms"],
            rows,
        )
    )
    print(
        f"\nPooled over {rounds} fresh server processes, each with {projects:,} projects of "
        f"20 sessions; requests alternate between the kinds. The server-side rows call "
        f"the server's WSGI app directly (no HTTP), before the scrapes."
    )
    if profiles:
        print(f"\ncProfile of /metrics with {projects:,} projects (--profile):\n")
        print(profiles[0])
    print(
        f"\nA plain scrape while {PARALLEL} clients scrape filtered without pause "
        f"({sum(s.parallel_scrapes for s in many):,} filtered scrapes): median "
        f"{median(loaded) / median(quiet):.2f}x, p99 "
        f"{percentile(loaded, 99) / percentile(quiet, 99):.2f}x the plain scrape alone."
    )
    outcome += _filtered_table(many, projects)

    print(f"\n## Scrape: one project tracking 10 vs {big:,} sessions\n")
    small_side = {"projects": 1, "sessions": 10}
    big_side = {"projects": 1, "sessions": big}
    pairs, _ = _scrape_rounds([small_side, big_side], ["identity", "gzip"], per_round, rounds)
    cases = {10: [p[0] for p in pairs], big: [p[1] for p in pairs]}
    server_rows = []
    for encoding in ("identity", "gzip"):
        if not all(encoding in x.app for scrapers in cases.values() for x in scrapers):
            continue
        base = median([t for x in cases[10] for t in x.app[encoding]])
        for sessions, scrapers in cases.items():
            pooled = [t for x in scrapers for t in x.app[encoding]]
            server_rows.append(
                [
                    f"{sessions:,} sessions tracked, {encoding}, server side only",
                    str(len(pooled)),
                    f"{median(pooled):.3f}",
                    f"{percentile(pooled, 99):.3f}",
                    "",
                    " / ".join(f"{median(x.app[encoding]):.3f}" for x in scrapers),
                    f"{median(pooled) / base:.2f}x",
                ]
            )
    rows = []
    for variant in ("identity", "gzip"):
        base = median(_pooled(cases[10], variant))
        for sessions, scrapers in cases.items():
            pooled = _pooled(scrapers, variant)
            ratio = median(pooled) / base
            rows.append(
                [
                    f"{sessions:,} sessions tracked, {variant}",
                    str(len(pooled)),
                    f"{median(pooled):.2f}",
                    f"{percentile(pooled, 99):.2f}",
                    f"{scrapers[-1].sizes[variant]:,}",
                    _round_medians(scrapers, variant),
                    f"{ratio:.2f}x",
                ]
            )
            if sessions == big:
                outcome.append(
                    (
                        f"no growth with sessions, 10 vs {big:,} ({variant})",
                        ratio <= NO_GROWTH_RATIO,
                        f"median {median(pooled):.2f} vs {base:.2f} ms, {ratio:.2f}x "
                        f"(met when <= {NO_GROWTH_RATIO}x)",
                    )
                )
    print()
    print(
        table(
            [
                "case",
                "scrapes",
                "median ms",
                "p99 ms",
                "bytes",
                "round medians ms",
                "vs 10 sessions",
            ],
            rows + server_rows,
        )
    )
    print(
        f"\nPooled over {rounds} rounds; each round starts both servers fresh (the large one "
        f"really holds {big:,} sessions in its tracker) and alternates requests between them. "
        f"Server-side rows: the WSGI app called in-process, before the scrapes."
    )
    for name, met, detail in outcome:
        print(f"target: {name}: {verdict(met)}, {detail}")
    return outcome
