"""Incremental listings: what a steady-state poll costs with ``listing: auto`` against ``full``.

Two measurements, each running both modes in the same run against the same data:

1. **Requests per poll, one project.** 20,000 sessions listed newest first, ``page_size`` 100
   (a full listing is 200 requests). A baseline poll, then 10 steady-state polls; before each,
   5 sessions picked at random from the whole project re-run and 2 are created. ``auto`` keeps
   the default ``full_listing_every: 10``, so its steady-state polls are 9 incremental listings
   and one periodic full listing. Reported: the requests of each poll (the exporter's own
   request counter, ``Store.api_requests``), the incremental polls' figure and the average that
   includes the periodic full listing. After every poll the two exporters' gauges (the project
   snapshot) and counters (run totals) must be equal: no session is deleted, so an incremental
   listing must see every change; the benchmark fails loudly if any differ.

2. **One poll cycle of many projects with API latency.** Every request waits 50 ms in the
   simulator (``latency``), as a remote API would; projects are polled as the daemon polls them
   (``Poller.poll_all_once``: every project at once, ``max_concurrency`` at a time; 16 here, so a
   full cycle ends in reasonable time, with the default ``page_size`` of 100). A baseline
   cycle (full listings), a second cycle (``auto`` has seen the order and lists
   incrementally), then the measured third cycle; before cycles 2 and 3 each project gets
   5 re-runs and 2 new sessions. Reported per cycle: wall time, requests, listings by kind, the
   exporter's CPU and the simulator's CPU, and whether both modes' gauges and counters agree.
   The target size, 100 projects of 100,000 sessions, needs two simulators of about 4.5 GiB,
   builds of about 5 minutes and full cycles of about 3: beyond a 5-minute benchmark. A full
   run measures 20 projects of 100,000 sessions (the real project size, so every per-project
   cost is the real one) and extrapolates to 100 projects: both cycles are CPU-bound on 2 cores
   (one exporter process), so their time grows linearly with the number of projects, and each is
   held to at least its latency floor. ``--quick`` measures 10 projects of 20,000 sessions and
   extrapolates in both directions, roughly. Memory and build time at the target size are
   extrapolated from what the run measured, so the output says whether this machine copes.

How the numbers are kept apart and comparable:

- Each simulator (``exporter.simulator.Simulator``, newest first, frozen clock) runs in its
  own process, driven over a pipe (build, re-runs, creations); the exporter runs in another,
  with the daemon's own wiring (``cli._components``: Store, ApiClient, Poller). The exporter's
  CPU is ``time.process_time()`` in its process (every thread); the simulator's is read from
  ``/proc/PID/stat``.
- ``auto`` and ``full`` each get their own simulator, built from the same seed and changed by
  the same commands, so both list identical data; their gauges after the baseline (both full
  listings) are compared too, which would catch data that drifted apart.
- Both exporters count runs with ``runs: latest``: a poll's requests are its listing's pages
  only, as in the figures measured before ``runs: exact`` became the default. Its history
  reads, one per changed session, would add up to 7 requests per project per poll here (the
  5 re-runs and the new sessions that ran), the same in both modes; ``bench.histories``
  measures them.
- The two modes poll one after the other, never at the same time; the two simulators of
  measurement 2 are built in parallel (one core each), before anything is measured.
- Every project's id has the same full-listing phase (``bench.peers.same_phase_ids``). Since
  b303ab8 the exporter starts each project at a phase of the ``full_listing_every`` cycle from
  a hash of its id, so projects started together take their periodic full listings at
  different polls; here all take theirs at the same poll (the 11th), the worst case, so the
  steady-state cycles of measurement 2 are incremental listings only (the benchmark fails if
  any is not) and measurement 1's periodic full listing is its 11th poll, as before b303ab8.

Run with the other benchmarks (``python -m bench.run --only incremental [--quick]``) or on its
own, at any size: ``python -m bench.incremental --projects 100 --sessions 100000`` measures the
target size directly (about 14 GiB of memory and over 20 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from collections.abc import Sequence

from bench.common import BenchError, columns, load_average, proc_kib_field, rss_bytes, table
from bench.peers import CREATES, POOL, RERUNS, Cycle, Run, start_simulators
from bench.targets import Outcome, Target, report, standalone

SEED = 20260101
MODES = ("auto", "full")

# Measurement 1: one project.
ONE_SESSIONS = 20_000
ONE_PAGE_SIZE = 100
ONE_STEADY_POLLS = 10
TARGET_REQUESTS = 2

# Measurement 2: a poll cycle of many projects.
CYCLE_PAGE_SIZE = 100
CYCLE_CONCURRENCY = 16
CYCLE_LATENCY = 0.05
TARGET_PROJECTS = 100
TARGET_SESSIONS = 100_000
TARGET_RATIO = 50.0
FULL_SIZE = (20, 100_000)  # the largest that fits in about 5 minutes on a 2-core machine
QUICK_SIZE = (10, 20_000)
# Resident bytes per session, from measured runs with margin: a simulator holds each session
# as rendered JSON (about 400 B), the exporter's tracker under 200 B plus transient pages.
SIM_BYTES_PER_SESSION = 500
EXPORTER_BYTES_PER_SESSION = 300


def _runs(
    stack: contextlib.ExitStack,
    size: tuple[int, int],
    *,
    latency: float,
    pool: str,
    timeout: float,
    page_size: int,
    concurrency: int,
) -> dict[str, Run]:
    """Per mode, a simulator (the same seed for both: the same data, built in parallel) and an
    exporter over it that answers its projects' gauges and counters after each cycle. Both
    count runs as ``runs: latest`` does: no history reads, so every request is a listing's
    page, as before exact counting was the default (bench.histories measures the reads)."""
    names = [f"simulator ({mode})" for mode in MODES]
    groups = {"all": list(size)}
    sims = start_simulators(
        stack, names, timeout, groups=groups, seed=SEED, latency=latency, pool=pool
    )
    return {
        mode: Run.start(
            stack,
            sims[f"simulator ({mode})"],
            mode,
            size,
            name=f"exporter ({mode})",
            page_size=page_size,
            concurrency=concurrency,
            latency=latency,
            compare=True,
            runs="latest",
        )
        for mode in MODES
    }


def _differences(auto: Cycle, full: Cycle) -> list[str]:
    """Where two exporters' gauges or counters differ, as ``project.field`` names."""
    out = []
    for pid, mine in auto["state"].items():
        theirs = full["state"][pid]
        for kind in ("gauges", "counters"):
            a, b = mine[kind], theirs[kind]
            if a is None or b is None:
                if a != b:
                    out.append(f"{pid[:8]}.{kind}")
                continue
            out.extend(f"{pid[:8]}.{key}" for key in a if a[key] != b[key])
    return out


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


# ------------------------------------------------------------------ measurement 1


def _one_project() -> tuple[Outcome, list[str]]:
    print(
        f"\n### 1. Requests per poll: one project of {ONE_SESSIONS:,} sessions, newest first, "
        f"page_size {ONE_PAGE_SIZE}\n"
    )
    equal: list[list[str]] = []
    with contextlib.ExitStack() as stack:
        runs = _runs(
            stack,
            (1, ONE_SESSIONS),
            latency=0.0,
            pool="listing",
            timeout=300,
            page_size=ONE_PAGE_SIZE,
            concurrency=4,
        )
        for n in range(1 + ONE_STEADY_POLLS):
            for run in runs.values():
                run.cycle(change=n > 0)
            equal.append(_differences(runs["auto"].cycles[-1], runs["full"].cycles[-1]))
    polls = {mode: run.cycles for mode, run in runs.items()}

    def listing(n: int) -> str:
        if n == 0:
            return "full (baseline)"
        return "incremental" if polls["auto"][n]["incremental"] else "full (every 10th)"

    spec = [
        ("poll", lambda n: str(n + 1)),
        ("changes before it", lambda n: "none" if n == 0 else f"{RERUNS} re-runs, {CREATES} new"),
        ("auto: listing", listing),
        ("auto: requests", lambda n: str(polls["auto"][n]["requests"])),
        ("full: requests", lambda n: str(polls["full"][n]["requests"])),
        ("auto: CPU ms", lambda n: f"{polls['auto'][n]['cpu'] * 1000:.0f}"),
        ("full: CPU ms", lambda n: f"{polls['full'][n]['cpu'] * 1000:.0f}"),
        (
            "gauges and counters equal",
            lambda n: "yes" if not equal[n] else "NO: " + ", ".join(equal[n][:4]),
        ),
    ]
    print(columns(spec, range(1 + ONE_STEADY_POLLS)))
    inc = [p["requests"] for p in polls["auto"][1:] if p["incremental"]]
    every = [p["requests"] for p in polls["auto"][1:]]
    full_req = [p["requests"] for p in polls["full"][1:]]
    mean_full = sum(full_req) / len(full_req)

    def summary(label: str, values: list[int]) -> list[str]:
        if not values:
            return [label, "0", "-", "-", "-", "-"]
        mean = sum(values) / len(values)
        cells = [str(len(values)), f"{mean:.1f}", str(min(values)), str(max(values))]
        return [label, *cells, f"{mean_full / mean:.1f}x"]

    print()
    print(
        table(
            ["steady-state polls", "polls", "requests (mean)", "min", "max", "fewer than full"],
            [
                summary("auto: the incremental polls", inc),
                summary("auto: all, with the periodic full listing", every),
                summary("full: all", full_req),
            ],
        )
    )
    print(
        f"\nauto uses the default full_listing_every 10 and incremental_overlap_seconds 300; "
        f"before each steady-state poll {RERUNS} sessions drawn from the whole project re-run "
        f"and {CREATES} are created, in both simulators alike. The project's id has full-listing "
        "phase 0 (bench.peers.same_phase_ids), so its periodic full listing is poll 11. Both "
        "exporters count runs as runs: latest, so their requests are listing pages only "
        "(bench.histories measures the history reads of runs: exact)."
    )
    full_listings = [n for n, p in enumerate(polls["auto"]) if not p["incremental"]]
    failed = [f"poll {n + 1}: {', '.join(d[:8])}" for n, d in enumerate(equal) if d]
    outcome = report(
        Target(
            f"requests per steady-state incremental poll at most {TARGET_REQUESTS} "
            f"({ONE_SESSIONS:,} sessions, page_size {ONE_PAGE_SIZE})",
            bool(inc) and max(inc) <= TARGET_REQUESTS,
            f"{max(inc) if inc else 'no incremental poll'} at most, "
            f"{sum(inc) / max(len(inc), 1):.1f} on average over {len(inc)} incremental polls; "
            f"{sum(every) / len(every):.1f} with the periodic full listing; a full listing: "
            f"{mean_full:.0f}",
        ),
        Target(
            "auto's gauges and counters equal full's after each full listing (and after every "
            "incremental one)",
            not failed,
            f"checked after polls {', '.join(str(n + 1) for n in full_listings)} (auto listed "
            f"in full) and after the {len(inc)} incremental polls: "
            + ("all equal" if not failed else "; ".join(failed)),
        ),
    )
    problems = []
    if any(equal[n] for n in full_listings):
        problems.append("after a full listing auto's gauges differ from full's")
    elif failed:
        problems.append("after an incremental listing auto's gauges differ from full's")
    return outcome, problems


# ------------------------------------------------------------------ measurement 2


def _many_projects(projects: int, sessions: int) -> Outcome:
    total = projects * sessions
    target_total = TARGET_PROJECTS * TARGET_SESSIONS
    at_target = (projects, sessions) == (TARGET_PROJECTS, TARGET_SESSIONS)
    size = f"{projects} x {sessions:,}"
    target = f"{TARGET_PROJECTS} x {TARGET_SESSIONS:,}"
    print(
        f"\n### 2. One poll cycle: {size} sessions ({total:,} in all), "
        f"{CYCLE_LATENCY * 1000:.0f} ms latency per request\n"
    )
    print(
        f"page_size {CYCLE_PAGE_SIZE} (the default) and max_concurrency "
        f"{CYCLE_CONCURRENCY}, so that a full cycle ends in reasonable time. Every project's id "
        "has the same full-listing phase, so all take their periodic full listing at the same "
        "poll (the 11th, past this measurement; the worst case: since b303ab8 the exporter "
        "spreads them over the cycle) and auto's steady-state cycles are incremental only. "
        f"Target size {target}: "
        + ("measured directly." if at_target else f"this run measures {size} and extrapolates.")
    )
    need = total * (2 * SIM_BYTES_PER_SESSION + EXPORTER_BYTES_PER_SESSION)
    available = proc_kib_field("/proc/meminfo", "MemAvailable")
    print(
        f"Memory: two simulators and one exporter need about {_gib(need)}; "
        f"{_gib(available)} available."
    )
    if available and need > available:
        raise BenchError(f"not enough memory for {size} sessions")
    sys.stdout.flush()
    differ: list[list[str]] = []
    began = time.monotonic()
    with contextlib.ExitStack() as stack:
        runs = _runs(
            stack,
            (projects, sessions),
            latency=CYCLE_LATENCY,
            pool="created",
            timeout=120 + total * 120e-6,  # two builds, maybe sharing one core
            page_size=CYCLE_PAGE_SIZE,
            concurrency=CYCLE_CONCURRENCY,
        )
        ready = {mode: run.sim.ready for mode, run in runs.items()}
        build = ready["auto"]["build_seconds"]
        print(
            f"Simulators built in parallel in {max(r['ready_seconds'] for r in ready.values()):.0f}"
            f" s ({build * 1e6 / total:.1f} µs per session each), "
            f"{_gib(ready['auto']['rss'])} resident each (load {load_average()})."
        )
        for n in range(3):
            for run in runs.values():
                run.cycle(change=n > 0)
            differ.append(_differences(runs["auto"].cycles[-1], runs["full"].cycles[-1]))
            print(
                f"cycle {n + 1}/3: auto {runs['auto'].cycles[-1]['wall']:.1f} s, "
                f"full {runs['full'].cycles[-1]['wall']:.1f} s (load {load_average()})"
            )
            sys.stdout.flush()
        sim_rss = rss_bytes(runs["full"].sim.pid)
    elapsed = time.monotonic() - began
    cycles = {mode: run.cycles for mode, run in runs.items()}

    labels = ("baseline", "steady state", "steady state, measured")
    spec = [
        ("mode: cycle", lambda c: f"{c['mode']}: cycle {c['n'] + 1} ({labels[c['n']]})"),
        ("listings incr. / full", lambda c: f"{c['incremental']} / {c['full']}"),
        ("pages per project", lambda c: "{}-{}".format(*c["pages_range"])),
        ("requests", lambda c: f"{c['requests']:,}"),
        ("wall s", lambda c: f"{c['wall']:.2f}"),
        ("exporter CPU s", lambda c: f"{c['cpu']:.2f}"),
        ("simulator CPU s", lambda c: f"{c['sim_cpu']:.2f}"),
        ("projects up", lambda c: f"{c['up']}/{projects}"),
    ]
    print()
    print(columns(spec, [{**c, "mode": m, "n": n} for m in MODES for n, c in enumerate(cycles[m])]))
    bad = [f"cycle {n + 1}: {', '.join(d[:6])}" for n, d in enumerate(differ) if d]
    print(
        "\nauto's and full's gauges and counters after each cycle: "
        + ("equal in every project, every cycle." if not bad else "DIFFER: " + "; ".join(bad))
    )
    if bad:
        raise BenchError("auto's gauges or counters differ from full's: " + "; ".join(bad))
    mixed = [
        f"cycle {n + 1}: {c['full']} full" for n, c in enumerate(cycles["auto"]) if n and c["full"]
    ]
    if mixed:
        raise BenchError(
            "auto's steady-state cycles should be incremental listings only, got "
            + "; ".join(mixed)
            + " (the projects' ids all have phase 0 by bench.peers.listing_phase: does it still "
            "mirror exporter/poller.py?)"
        )

    auto, full = cycles["auto"][-1], cycles["full"][-1]
    # Extrapolation. A full cycle is linear in the sessions listed: pages are sessions over
    # page_size, and it is CPU-bound (the exporter at about one core, the GIL). An incremental
    # cycle reads two pages per project whatever their size: linear in projects. Neither can
    # beat its latency floor: ceil(projects / max_concurrency) rounds of its pages in turn.
    created = POOL + 2 * CREATES  # sessions created since the build: the same at any size
    full_pages = math.ceil((TARGET_SESSIONS + created) / CYCLE_PAGE_SIZE)
    auto_pages = auto["pages_range"][1]
    rounds = math.ceil(TARGET_PROJECTS / CYCLE_CONCURRENCY)
    grow_full = 1 if at_target else target_total / total
    grow_auto = 1 if at_target else TARGET_PROJECTS / projects
    floor = {"full": 0.0, "auto": 0.0}
    if not at_target:
        floor = {
            "full": rounds * full_pages * CYCLE_LATENCY,
            "auto": rounds * auto_pages * CYCLE_LATENCY,
        }
    ext = {
        "full_requests": full["requests"] if at_target else TARGET_PROJECTS * full_pages,
        "auto_requests": auto["requests"] * grow_auto,
        "full_wall": max(full["wall"] * grow_full, floor["full"]),
        "auto_wall": max(auto["wall"] * grow_auto, floor["auto"]),
        "full_cpu": full["cpu"] * grow_full,
        "auto_cpu": auto["cpu"] * grow_auto,
    }
    req_ratio = full["requests"] / auto["requests"]
    wall_ratio = full["wall"] / auto["wall"]
    ext_req_ratio = ext["full_requests"] / ext["auto_requests"]
    ext_wall_ratio = ext["full_wall"] / ext["auto_wall"]
    where = target + ("" if at_target else " (extrapolated)")
    print()
    print(
        table(
            ["cycle 3 (steady state)", f"measured, {size}", where],
            [
                ["full: requests", f"{full['requests']:,}", f"{ext['full_requests']:,.0f}"],
                ["auto: requests", f"{auto['requests']:,}", f"{ext['auto_requests']:,.0f}"],
                ["requests, full / auto", f"{req_ratio:.1f}x", f"{ext_req_ratio:.1f}x"],
                ["full: wall s", f"{full['wall']:.2f}", f"{ext['full_wall']:.1f}"],
                ["auto: wall s", f"{auto['wall']:.2f}", f"{ext['auto_wall']:.2f}"],
                ["wall time, full / auto", f"{wall_ratio:.1f}x", f"{ext_wall_ratio:.1f}x"],
                ["full: exporter CPU s", f"{full['cpu']:.2f}", f"{ext['full_cpu']:.1f}"],
                ["auto: exporter CPU s", f"{auto['cpu']:.2f}", f"{ext['auto_cpu']:.2f}"],
            ],
        )
    )
    if not at_target:
        print(
            f"\nExtrapolated, not measured. Requests: full is {TARGET_PROJECTS} projects x "
            f"{full_pages} pages ({TARGET_SESSIONS:,} + {created} sessions created by this run, "
            f"page_size {CYCLE_PAGE_SIZE}); auto is the measured {auto_pages} pages per project "
            f"x {TARGET_PROJECTS} (an incremental listing reads a few pages whatever the "
            "project's size: those holding what changed and the sessions within the overlap of "
            "the last poll's newest, then one older throughout that ends the listing). Wall and "
            f"CPU time: full's measured x {grow_full:g} (linear in sessions listed), auto's "
            f"measured x {grow_auto:g} (linear in projects), each at least its latency floor "
            f"({rounds} rounds of max_concurrency x pages x {CYCLE_LATENCY * 1000:.0f} ms: "
            f"{floor['full']:.1f} s full, {floor['auto']:.1f} s auto)."
            + (
                ""
                if sessions == TARGET_SESSIONS
                else f" Rough: projects here hold {sessions:,} sessions, not {TARGET_SESSIONS:,}."
            )
        )
    read_full = sessions + created
    read_auto = min(auto_pages * CYCLE_PAGE_SIZE, read_full)
    print(
        f"\nA ceiling on the wall-time ratio: an incremental poll here reads {auto_pages} pages "
        f"({read_auto:,} sessions) of a project, a full one all {read_full:,}; each listed "
        "session costs the exporter about the same CPU in both, and both cycles are CPU-bound, "
        f"so the ratio cannot pass about {read_full / read_auto:.0f}x at page_size "
        f"{CYCLE_PAGE_SIZE}; the rest of what a poll costs lowers it further."
    )
    _resources(runs, sim_rss, build, elapsed, ext, size, where, at_target, total, available)
    how = "" if at_target else f", extrapolated from {size} measured ({{:.1f}}x there)"
    return report(
        Target(
            f"one steady-state cycle of {target} sessions: at least {TARGET_RATIO:g}x fewer "
            "requests with auto",
            ext_req_ratio >= TARGET_RATIO,
            f"{ext_req_ratio:.1f}x ({ext['full_requests']:,.0f} against "
            f"{ext['auto_requests']:,.0f}){how.format(req_ratio)}",
        ),
        Target(
            f"one steady-state cycle of {target} sessions: at least {TARGET_RATIO:g}x less "
            "wall time with auto",
            ext_wall_ratio >= TARGET_RATIO,
            f"{ext_wall_ratio:.1f}x ({ext['full_wall']:.1f} s against "
            f"{ext['auto_wall']:.2f} s){how.format(wall_ratio)}",
        ),
    )


def _resources(
    runs: dict[str, Run],
    sim_rss: int,
    build: float,
    elapsed: float,
    ext: dict[str, float],
    size: str,
    where: str,
    at_target: bool,
    total: int,
    available: int,
) -> None:
    """Whether this machine copes with the target size, from what this run measured. Per
    session: what the build added; the pages the simulator caches while serving are bounded
    (PAGE_CACHE_BYTES), so what serving added is carried over as it is."""
    target_total = TARGET_PROJECTS * TARGET_SESSIONS
    ready = runs["full"].sim.ready
    sim_base = ready["rss_before"] + max(sim_rss - ready["rss"], 0)
    sim_per = (ready["rss"] - ready["rss_before"]) / total
    base = {mode: run.exporter.ready["rss"] for mode, run in runs.items()}
    peak = {mode: run.cycles[-1]["peak_rss"] for mode, run in runs.items()}
    exp_per = {mode: (peak[mode] - base[mode]) / total for mode in peak}
    build_per = build / total
    whole = build_per * target_total + 4 * ext["full_wall"] + 2 * ext["auto_wall"]
    measured_all = _gib(2 * sim_rss + peak["full"])
    target_memory = 2 * (sim_base + sim_per * target_total) + base["full"]
    target_memory += exp_per["full"] * target_total
    print()
    print(
        table(
            ["resource", f"measured, {size}", where],
            [
                [
                    "simulator RSS, each of two",
                    _gib(sim_rss),
                    _gib(sim_base + sim_per * target_total),
                ],
                [
                    "simulator build, each (two in parallel)",
                    f"{build:.0f} s",
                    f"{build_per * target_total:.0f} s",
                ],
                *(
                    [
                        f"exporter peak RSS, {mode}",
                        _gib(peak[mode]),
                        _gib(base[mode] + exp_per[mode] * target_total),
                    ]
                    for mode in MODES[::-1]
                ),
                [
                    "all three processes at their peak",
                    measured_all,
                    measured_all if at_target else _gib(target_memory),
                ],
                [
                    "this measurement, start to end",
                    f"{elapsed:.0f} s",
                    f"{elapsed:.0f} s" if at_target else f"about {whole:.0f} s",
                ],
            ],
        )
    )
    full = runs["full"].cycles[-1]
    print(
        f"\nIn the measured full cycle the exporter used {full['cpu'] / full['wall']:.0%} of a "
        f"core and its simulator {full['sim_cpu'] / full['wall']:.0%}; {_gib(available)} of RAM "
        "was available."
        + (
            ""
            if at_target
            else " At the target size memory fits, but two builds and four full cycles take "
            "longer than this benchmark's five minutes: run it on request with "
            f"python -m bench.incremental --projects {TARGET_PROJECTS} "
            f"--sessions {TARGET_SESSIONS} (the build's time assumes both simulators get a core)."
        )
    )


# ------------------------------------------------------------------ orchestration


def run(*, quick: bool, size: tuple[int, int] | None = None) -> Outcome:
    projects, sessions = size or (QUICK_SIZE if quick else FULL_SIZE)
    print(f"\n## Incremental listings: auto against full, {'quick' if quick else 'full'} size\n")
    outcome, problems = _one_project()
    if problems:
        raise BenchError("; ".join(problems))
    return outcome + _many_projects(projects, sessions)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.incremental",
        description="Requests and wall time of steady-state polls, listing auto against full.",
    )
    parser.add_argument("--quick", action="store_true", help="the smoke size of bench.run --quick")
    parser.add_argument("--projects", type=int, help="projects in the cycle measurement")
    parser.add_argument(
        "--sessions", type=int, help="sessions per project in the cycle measurement"
    )
    args = parser.parse_args(argv)
    default = QUICK_SIZE if args.quick else FULL_SIZE
    size = (args.projects or default[0], args.sessions or default[1])
    if min(size) < 1:
        parser.error("--projects and --sessions must be at least 1")
    return standalone(
        "incremental", "incremental listings", argv, lambda: run(quick=args.quick, size=size)
    )


if __name__ == "__main__":
    raise SystemExit(main())
