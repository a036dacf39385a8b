"""/metrics latency: many projects, filtered (``?name[]=``) or not, and sessions tracked.

Many projects, filtered or not; and one project with few or very many tracked sessions.

Each exporter side runs in its own fresh interpreter (a real ``MetricsServer`` on loopback,
its store built through ``SessionTracker`` and ``aggregate``) while a background thread
re-records a poll result for a few projects every ~60 ms, as the poller does in production
(which re-renders those projects' cached lines on that thread). This process is the
scraper, like Prometheus: sequential requests, the body read raw (gzip is not decoded, so
the client's own decompression is not counted). The 10 vs 1,000,000 sessions servers run
side by side and are scraped in alternation, so machine noise hits both alike. A filtered
scrape is timed against an unfiltered one and against the path filtered scrapes took before
(prometheus_client's own app over a restricted registry), in the same process, interleaved.
Each gzip body the server makes is held to one-shot gzip (``gzip.compress``, level 6) of the
text it decompresses to, in the server's process, so both are of the very same text.
"""

from __future__ import annotations

import math
import random
import sys
import threading
import time
import uuid
from contextlib import ExitStack
from typing import Any

import httpx

from bench.children import commands, peer, reply
from bench.common import BenchError, columns, median, per_round, percentile, rounds_in_turn, table
from bench.peers import metrics_server
from bench.sessions import synthetic_pages
from bench.targets import Outcome, Target, report

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
# A gzip body at most this many times one-shot gzip of the same text, with 1,000 projects. With
# 100 (--quick) a family's text fits in deflate's 32 KiB window, where one-shot gzip refers to
# a project's id in the family before: runs of projects compressed apart cannot, hence more.
TARGET_GZIP_RATIO = 1.5
QUICK_GZIP_RATIO = 1.75
GZIP_SAMPLES = 5  # bodies per case, as churn changes the text a little
# The gzip bodies held to one-shot gzip: (label, query, OpenMetrics or not).
GZIP_CASES = {
    "gzip": ("/metrics, gzip", "", False),
    "prometheus": ("/metrics as Prometheus asks (OpenMetrics, gzip)", "", True),
    "filtered": (f"/metrics?{FILTER_QUERY} as Prometheus asks", FILTER_QUERY, True),
    "part": (f"/metrics?{PART_QUERY} as Prometheus asks", PART_QUERY, True),
}
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
ENCODINGS = ("identity", "gzip")


# ------------------------------------------------------------------ the exporter side


def child(params: dict[str, Any]) -> dict[str, Any]:
    """Role ``server`` (build a store, serve it, time its app in-process, print where, churn
    until stdin closes) or ``load`` (:func:`_load`)."""
    if params.get("role") == "load":
        return _load(params["port"])
    from exporter import heap
    from exporter.aggregate import SessionTracker, aggregate
    from exporter.config import ProjectConfig, Secret
    from exporter.store import Store

    heap.tune()  # as the daemon does at start
    rng = random.Random(7)
    built = time.perf_counter()
    store = Store()
    # Before the polls end, as in the daemon: each poll's end renders its lines (and has them
    # compressed soon after).
    server = metrics_server(store)
    trackers: list[SessionTracker] = []  # kept alive, as a real poller keeps them
    results = {}
    for i in range(params["projects"]):
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
        aggregate(synthetic_pages(params["sessions"], seed=i), tracker)  # the baseline poll
        # A second poll where a third of the sessions re-ran: non-zero counters and histograms.
        result = aggregate(synthetic_pages(params["sessions"], seed=i, changed_share=0.3), tracker)
        if i % 50 == 1:
            store.record_failure(project.id, "rate_limited", duration=2.5, finished=time.time())
        store.record_success(project.id, result, duration=0.2 + rng.random(), finished=time.time())
        trackers.append(tracker)
        results[project.id] = result
    for code, count in (("200", 500), ("429", 17), ("503", 4), ("error", 2)):
        for _ in range(count):
            store.count_request(code)
    built = time.perf_counter() - built

    server.start()
    stop = threading.Event()
    churned = 0

    def churn() -> None:
        nonlocal churned
        while not stop.wait(CHURN_SECONDS):
            for pid in rng.sample(list(results), min(CHURN_PROJECTS, len(results))):
                duration = 0.2 + rng.random()
                store.record_success(pid, results[pid], duration=duration, finished=time.time())
                churned += 1

    thread = threading.Thread(target=churn, daemon=True)
    thread.start()
    try:
        series = _app_times(server.app)
        if params.get("filtered"):
            series |= _filtered_times(server.app, store)
        sizes = _gzip_sizes(server.app) if params.get("filtered") else {}
        profile = _app_profile(server.app) if params.get("profile") else None
        tracked = sum(len(t) for t in trackers)
        reply(
            {
                "port": server.port,
                "tracked": tracked,
                "build_seconds": built,
                "series": series,
                "gzip_sizes": sizes,
                "profile": profile,
            }
        )
        sys.stdin.read()  # until the scraper is done
    finally:
        stop.set()
        thread.join(timeout=5)
        server.stop()
    return {"churned": churned}


def _environ(encoding: str, query: str = "", accept: str = "") -> dict[str, str]:
    """A WSGI environ for ``GET /metrics`` (prometheus_client's own WSGI app, the old path)."""
    return {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/metrics",
        "QUERY_STRING": query,
        "HTTP_ACCEPT": accept,
        "HTTP_ACCEPT_ENCODING": encoding,
    }


def _call(app: Any, encoding: str, query: str = "", accept: str = "", wsgi: bool = False) -> float:
    """Milliseconds for one in-process call of the server's app (or a WSGI app) for /metrics."""
    from exporter.web.protocol import Request

    request = Request("GET", "/metrics", query, (("accept", accept), ("accept-encoding", encoding)))
    environ = _environ(encoding, query, accept)
    started = time.perf_counter()
    if wsgi:
        b"".join(app(environ, lambda *args: None))
    else:
        app(request)
    return (time.perf_counter() - started) * 1000


def _app_times(app: Any, calls: int = 30) -> dict[str, list[float]]:
    """Server-side time alone (``app ENCODING``): the server's app called in-process."""
    out: dict[str, list[float]] = {}
    for n in range(calls + 2):  # the first two warm the per-project cache
        for encoding in ENCODINGS:
            elapsed = _call(app, encoding)
            if n >= 2:
                out.setdefault(f"app {encoding}", []).append(elapsed)
    return out


def _filtered_times(app: Any, store: Any, calls: int = 30) -> dict[str, list[float]]:
    """Server-side times of FILTER_CASES (``CASE ENCODING``), interleaved call by call, as
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
            for encoding in ENCODINGS:
                elapsed = _call(old if is_old else app, encoding, query, PROMETHEUS_ACCEPT, is_old)
                if n >= 2 or is_old:
                    out.setdefault(f"{case} {encoding}", []).append(elapsed)
    return out


def _gzip_sizes(app: Any) -> dict[str, list[list[int]]]:
    """By GZIP_CASES, [gzip body, one-shot gzip of the text it decompresses to, text] bytes,
    GZIP_SAMPLES times: the server's app called in-process."""
    import gzip

    from exporter.web.protocol import Request

    out: dict[str, list[list[int]]] = {}
    for _ in range(GZIP_SAMPLES):
        for case, (_, query, openmetrics) in GZIP_CASES.items():
            accept = PROMETHEUS_ACCEPT if openmetrics else ""
            headers = (("accept", accept), ("accept-encoding", "gzip"))
            body = app(Request("GET", "/metrics", query, headers)).body
            text = gzip.decompress(body)
            out.setdefault(case, []).append([len(body), len(gzip.compress(text)), len(text)])
    return out


def _app_profile(app: Any, calls: int = 20) -> str:
    """cProfile of the server's app answering gzip scrapes, in-process."""
    import cProfile
    import io
    import pstats

    from exporter.web.protocol import Request

    request = Request("GET", "/metrics", "", (("accept-encoding", "gzip"),))
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(calls):
        app(request)
    profile.disable()
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(12)
    return f"{calls} gzip scrapes of the app\n" + text.getvalue().strip()


def _load(port: int) -> dict[str, Any]:
    """Role ``load``: PARALLEL clients scraping filtered without pause from when they are all
    connected (then it replies ``ready``) until a command arrives; the scrapes they made."""
    stop = threading.Event()
    started = threading.Barrier(PARALLEL + 1)
    done = [0] * PARALLEL
    errors: list[str] = []

    def load(slot: int) -> None:
        path, headers = VARIANTS["filtered"]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
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


# ------------------------------------------------------------------ the scraper side


class Scraper:
    """One server process scraped over HTTP: every series of milliseconds by name (the
    variants scraped, ``loaded``, and those the server timed in-process), and body sizes."""

    def __init__(
        self, port: int, series: dict[str, list[float]], gzip_sizes: dict[str, list[list[int]]]
    ) -> None:
        self._port = port
        self._client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
        self.samples: dict[str, list[float]] = dict(series)
        self.sizes: dict[str, int] = {}
        self.gzip_sizes = gzip_sizes  # what the server measured: see _gzip_sizes
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
            load = peer(
                stack, "scrape", "filtered scrape clients", {"role": "load", "port": self._port}
            )
            if not load.receive(60).get("ready"):
                raise BenchError("the filtered scrape clients did not start")
            path, headers = VARIANTS["prometheus"]
            for _ in range(scrapes):
                began = time.perf_counter()
                self._client.get(path, headers=headers).raise_for_status()
                self.samples.setdefault("loaded", []).append((time.perf_counter() - began) * 1000)
            done = load.call(60, stop=True)
            load.close(30)
        if done["errors"]:
            raise BenchError(f"a filtered scrape client failed: {done['errors'][0]}")
        self.parallel_scrapes += done["scrapes"]


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
    for order in rounds_in_turn(rounds, range(len(sides))):
        with ExitStack() as stack:
            servers, scrapers = {}, {}
            for i in order:  # one at a time: a build never shares the machine with a timing
                servers[i] = peer(stack, "scrape", "child scrape", sides[i])
                ready = servers[i].receive(900)
                profiles += [ready["profile"]] if ready["profile"] else []
                scrapers[i] = Scraper(ready["port"], ready["series"], ready["gzip_sizes"])
                stack.callback(scrapers[i].close)
            for n in range(WARMUP + per_round):
                for i in order:
                    for variant in variants:
                        scrapers[i].scrape(variant, record=n >= WARMUP)
            if loaded:
                for i in order:
                    scrapers[i].under_load(per_round)
            for i in order:
                scrapers[i].close()
                servers[i].close(30)
            out.append([scrapers[i] for i in range(len(sides))])
    return out, profiles


def _pooled(scrapers: list[Scraper], key: str) -> list[float]:
    return [x for s in scrapers for x in s.samples[key]]


def _round_medians(scrapers: list[Scraper], key: str, fmt: str = ".2f") -> str:
    return per_round([median(s.samples[key]) for s in scrapers], fmt)


def _row(label: str, scrapers: list[Scraper], key: str, size: str = "") -> list[str]:
    """[label, scrapes, median, p99, max, bytes, round medians] of a series, in ms."""
    pooled = _pooled(scrapers, key)
    return [
        label,
        str(len(pooled)),
        f"{median(pooled):.2f}",
        f"{percentile(pooled, 99):.2f}",
        f"{max(pooled):.2f}",
        size,
        _round_medians(scrapers, key),
    ]


def _filtered_table(many: list[Scraper], projects: int) -> Outcome:
    """Server-side time of filtered scrapes as ratios to an unfiltered one and to the old path,
    each measured in the same processes; the targets on the ratios to the unfiltered one."""
    print(f"\n## Scrape: ?name[]= filtered vs unfiltered with {projects:,} projects\n")
    rows, targets = [], []
    for encoding in ENCODINGS:
        cached = median(_pooled(many, f"unfiltered {encoding}"))
        old = median(_pooled(many, f"old {encoding}"))
        for case, (label, _, _) in FILTER_CASES.items():
            key = f"{case} {encoding}"
            times = _pooled(many, key)
            rows.append((f"{label}, {encoding}", key, times, median(times) / cached, old))
            if case in TARGET_RATIO:
                targets.append(
                    Target(
                        f"a filtered scrape ({label}, {encoding}) costs at most "
                        f"{TARGET_RATIO[case]:.1f}x an unfiltered one, {projects:,} projects",
                        rows[-1][3] <= TARGET_RATIO[case],
                        f"{rows[-1][3]:.3f}x the unfiltered scrape, {median(times) / old:.4f}x "
                        f"the old path ({old / median(times):,.0f} times faster)",
                    )
                )
    spec = [
        ("request (server side: app in-process, as Prometheus asks)", lambda r: r[0]),
        ("calls", lambda r: str(len(r[2]))),
        ("median ms", lambda r: f"{median(r[2]):.2f}"),
        ("max ms", lambda r: f"{max(r[2]):.2f}"),
        ("vs unfiltered", lambda r: f"{r[3]:.3f}x"),
        ("vs old path", lambda r: f"{median(r[2]) / r[4]:.4f}x"),
        ("round medians ms", lambda r: _round_medians(many, r[1])),
    ]
    print(columns(spec, rows))
    print(
        f"\nThe cases interleaved call by call in each server process, before its scrapes; the "
        f"old path (prometheus_client's make_wsgi_app over the same store, what ?name[]= ran "
        f"before) {OLD_CALLS} times per encoding and process."
    )
    return targets


def _gzip_table(many: list[Scraper], projects: int, quick: bool) -> Outcome:
    """Each gzip body against one-shot gzip of the same text (medians over every sample of
    every round); the target on each."""
    limit = QUICK_GZIP_RATIO if quick else TARGET_GZIP_RATIO
    print(f"\n## Scrape: gzip bodies vs one-shot gzip of the same text, {projects:,} projects\n")
    rows, targets = [], []
    for case, (label, _, _) in GZIP_CASES.items():
        samples = [sample for s in many for sample in s.gzip_sizes[case]]
        body, one_shot, text = (median([float(x[k]) for x in samples]) for k in range(3))
        ratio = median([x[0] / x[1] for x in samples])
        rows.append([label, str(len(samples)), f"{text:,.0f}", f"{body:,.0f}", f"{one_shot:,.0f}"])
        rows[-1].append(f"{ratio:.2f}x")
        targets.append(
            Target(
                f"a gzip body ({label}) at most {limit:.2f}x one-shot gzip of its text, "
                f"{projects:,} projects",
                ratio <= limit,
                f"{ratio:.2f}x: {body:,.0f} bytes against {one_shot:,.0f} (text {text:,.0f} bytes)",
            )
        )
    headers = ["request", "bodies", "text bytes", "gzip bytes", "one-shot gzip bytes", "ratio"]
    print(table(headers, rows))
    print(
        f"\nIn each server process, before its scrapes: the app's gzip body, decompressed, and "
        f"that text compressed by gzip.compress (level 6), {GZIP_SAMPLES} times per request."
        + (
            f" With {projects:,} projects the target is {QUICK_GZIP_RATIO}x "
            f"({TARGET_GZIP_RATIO}x with 1,000): a family's text fits deflate's window, where "
            f"one-shot gzip refers across families."
            if quick
            else ""
        )
    )
    return targets


def _growth_table(cases: dict[int, list[Scraper]], rounds: int) -> Outcome:
    """One project tracking 10 sessions against very many: HTTP, then server side alone."""
    big = max(cases)
    targets = []
    rows = []
    for key, label, fmt in [(e, e, ".2f") for e in ENCODINGS] + [
        (f"app {e}", f"{e}, server side only", ".3f") for e in ENCODINGS
    ]:
        base = median(_pooled(cases[10], key))
        for sessions, scrapers in cases.items():
            pooled = _pooled(scrapers, key)
            ratio = median(pooled) / base
            rows.append(
                [
                    f"{sessions:,} sessions tracked, {label}",
                    str(len(pooled)),
                    format(median(pooled), fmt),
                    format(percentile(pooled, 99), fmt),
                    f"{scrapers[-1].sizes[key]:,}" if key in scrapers[-1].sizes else "",
                    _round_medians(scrapers, key, fmt),
                    f"{ratio:.2f}x",
                ]
            )
            if sessions == big and key in ENCODINGS:
                targets.append(
                    Target(
                        f"no growth with sessions, 10 vs {big:,} ({key})",
                        ratio <= NO_GROWTH_RATIO,
                        f"median {median(pooled):.2f} vs {base:.2f} ms, {ratio:.2f}x "
                        f"(met when <= {NO_GROWTH_RATIO}x)",
                    )
                )
    headers = ["case", "scrapes", "median ms", "p99 ms", "bytes", "round medians ms"]
    print()
    print(table([*headers, "vs 10 sessions"], rows))
    print(
        f"\nPooled over {rounds} rounds; each round starts both servers fresh (the large one "
        f"really holds {big:,} sessions in its tracker) and alternates requests between them. "
        f"Server-side rows: the app called in-process, before the scrapes."
    )
    return targets


def run(*, quick: bool, rounds: int, profile: bool) -> Outcome:
    projects = 100 if quick else 1000
    big = 100_000 if quick else 1_000_000
    per_round = math.ceil((50 if quick else 200) / rounds)

    print(f"\n## Scrape: /metrics latency with {projects:,} projects\n")
    variants = ["identity", "gzip", "prometheus", "filtered", "healthz"]
    side = {"projects": projects, "sessions": 20, "profile": profile, "filtered": True}
    pairs, profiles = _scrape_rounds([side], variants, per_round, rounds, loaded=True)
    many = [pair[0] for pair in pairs]
    rows = [_row(LABELS[v], many, v, f"{many[-1].sizes[v]:,}") for v in variants]
    rows.append(_row(LABELS["loaded"], many, "loaded"))
    rows += [
        _row(f"/metrics, {e} (server side only: app in-process)", many, f"app {e}")
        for e in ENCODINGS
    ]
    targets = []
    for variant in variants[:-1]:
        pooled = _pooled(many, variant)
        p99 = percentile(pooled, 99)
        targets.append(
            Target(
                f"p99 under {TARGET_P99_MS:.0f} ms with {projects:,} projects ({variant})",
                p99 < TARGET_P99_MS,
                f"p99 {p99:.2f} ms, median {median(pooled):.2f} ms "
                f"({p99 / TARGET_P99_MS:.2f}x the target)",
            )
        )
    headers = ["request", "scrapes", "median ms", "p99 ms", "max ms", "bytes", "round medians ms"]
    print()
    print(table(headers, rows))
    print(
        f"\nPooled over {rounds} fresh server processes, each with {projects:,} projects of "
        f"20 sessions; requests alternate between the kinds. The server-side rows call "
        f"the server's app directly (no HTTP), before the scrapes."
    )
    if profiles:
        print(f"\ncProfile of /metrics with {projects:,} projects (--profile):\n")
        print(profiles[0])
    loaded, quiet = _pooled(many, "loaded"), _pooled(many, "prometheus")
    print(
        f"\nA plain scrape while {PARALLEL} clients scrape filtered without pause "
        f"({sum(s.parallel_scrapes for s in many):,} filtered scrapes): median "
        f"{median(loaded) / median(quiet):.2f}x, p99 "
        f"{percentile(loaded, 99) / percentile(quiet, 99):.2f}x the plain scrape alone."
    )
    targets += _filtered_table(many, projects)
    targets += _gzip_table(many, projects, quick)

    print(f"\n## Scrape: one project tracking 10 vs {big:,} sessions\n")
    sides = [{"projects": 1, "sessions": 10}, {"projects": 1, "sessions": big}]
    pairs, _ = _scrape_rounds(sides, ["identity", "gzip"], per_round, rounds)
    targets += _growth_table({10: [p[0] for p in pairs], big: [p[1] for p in pairs]}, rounds)
    return report(*targets)
