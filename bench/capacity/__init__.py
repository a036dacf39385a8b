"""Capacity: how many projects x sessions one exporter process polls within a 60 s interval.

The exporter is one Python process: its listings run on worker threads under one GIL, so
about one core of CPU per 60 s interval is all a replica has, whatever the machine. This
benchmark measures what polls cost that process and turns it into the share of the interval
a configuration uses, so the README can say when to shard.

What runs, all against one simulator process (``exporter.simulator.Simulator``, newest first,
frozen clock, built from a fixed seed) that holds two groups of projects, their ids all of one
full-listing phase (``bench.peers.same_phase_ids``):

- **large**: a few projects of many sessions (default 8 x 25,000);
- **small**: many projects of few sessions (default 200 x 1,000).

Four exporter processes in turn, each the daemon's own pieces (``Store``, ``ApiClient``,
``Poller``, and the ``/metrics`` app, whose exposition cache renders and compresses a project
when its poll ends, as in the daemon) over one group, each cycle one ``Poller.poll_all_once``:

1. ``listing: full`` over large: a first listing, then steady-state listings with
   ``max_concurrency`` 4 and 16, first with no latency (the exporter's own ceiling), then
   with ``--latency-ms`` per request (default 50 ms, as ``bench.incremental``); and one
   listing with nothing changed (every page body taken unparsed: the best case).
2. ``listing: full`` over small: the same at ``max_concurrency`` 4, then 16 with latency.
3. and 4. ``listing: auto`` (the default) over large and over small: a first listing, then
   10 steady-state polls (with the default ``full_listing_every: 10``: 9 incremental and
   the periodic full listing), then one incremental cycle with latency at each concurrency.
   Since b303ab8 the exporter starts each project at a phase of the full-listing cycle from a
   hash of its id, so projects started together take their periodic full listings at
   different polls; the ids here all have the same phase, so every project's periodic full
   listing falls on the same poll (the 11th): the worst case, an interval with every full
   listing in it, which the model's "peak" is. A real replica's projects are spread over the
   cycle, so what it sees is the model's average, not the peak.

Before every steady-state cycle each project gets 5 re-runs (drawn from its whole history)
and 2 new sessions; newest first, the new sessions go to the front, so every page of a full
listing differs from the last one and is parsed: the realistic case, and the costlier one.

Measured: wall time, requests (the exporter's own counter) and the exporter's CPU
(``time.process_time()`` in its process: every thread, logging and the exposition cache
included); the simulator's CPU (``/proc/PID/stat``) is shown beside it and **excluded** from
every capacity figure: it stands in for LlamaCloud, which runs elsewhere. A baseline in the
same run, a bare ``httpx.Client`` + ``json.loads`` loop over the large projects, says how
fast the machine was that day (bench/RESULTS.md has days 2.7 times apart).

Extrapolated: a linear model per project, fit through the two groups, gives the CPU and the
wall time of a cycle of any size (``bench.capacity.model``); it is checked against the cycles
measured with latency, and every extrapolated figure is labelled so (``bench.capacity.report``).
This module measures, and is the command line.

Run with the others (``python -m bench.run --only capacity [--quick]``) or on its own:
``python -m bench.capacity [--quick] [--large 20x100000] [--small 1000x1000]
[--latency-ms 100]``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Sequence

from bench.capacity.model import CONCURRENCY, FULL_EVERY, INTERVAL, PAGE_SIZE, fit
from bench.capacity.report import (
    check_model,
    mib_text,
    ms_text,
    report_auto,
    report_full,
    report_grid,
    report_headline,
    report_largest,
    report_targets,
    size_text,
)
from bench.children import run_child
from bench.common import load_average
from bench.peers import CREATES, RERUNS, Run, start_simulators
from bench.targets import Outcome, standalone

SEED = 20261125
LATENCY_MS = 50.0
STEADY = 2  # steady-state full listings per setting without latency
LARGE = (8, 25_000)
SMALL = (200, 1_000)
QUICK_LARGE = (4, 10_000)
QUICK_SMALL = (50, 500)


def _measure(
    large: tuple[int, int], small: tuple[int, int], latency: float
) -> tuple[dict[str, Run], dict[str, float]]:
    """Every exporter run, in turn, against one simulator: the runs and the bare loop's result."""
    from exporter.simulator import DEFAULT_API_KEY

    runs: dict[str, Run] = {}
    sizes = {"large": large, "small": small}
    with contextlib.ExitStack() as stack:
        total = large[0] * large[1] + small[0] * small[1]
        groups = {"large": large, "small": small}
        timeout = 120 + total * 100e-6
        sim = start_simulators(
            stack, ["simulator"], timeout, groups=groups, seed=SEED, pool="listing"
        )
        ready = sim["simulator"].ready
        print(
            f"Simulator: {size_text(large)} and {size_text(small)} sessions built in "
            f"{ready['ready_seconds']:.0f} s, {mib_text(ready['rss'])} resident "
            f"(load {load_average()})."
        )
        params = {"kind": "sync-json", "base_url": ready["base_url"], "key": DEFAULT_API_KEY}
        params |= {"project_ids": ready["groups"]["large"], "sessions": large[0] * large[1]}
        bare = run_child("poll", params, timeout=300 + large[0] * large[1] * 200e-6)
        bare = bare["passes"][0]
        print(
            f"Baseline, bare httpx.Client + json.loads over the large projects: "
            f"{bare['cpu'] * 1e6 / bare['items']:.1f} µs of CPU per session "
            f"(load {load_average()})."
        )
        sys.stdout.flush()

        for mode in ("full", "auto"):
            for group in ("large", "small"):
                with contextlib.ExitStack() as inner:
                    run = Run.start(
                        inner,
                        sim["simulator"],
                        mode,
                        sizes[group],
                        name=f"{mode} x {group}",
                        group=group,
                        page_size=PAGE_SIZE,
                        concurrency=CONCURRENCY[0],
                        verbose=True,
                        exposition=True,
                    )
                    runs[f"{mode}:{group}"] = run
                    (_full_steps if mode == "full" else _auto_steps)(run, latency)
                    run.set_latency(0.0)
    return runs, bare


def _full_steps(run: Run, latency: float) -> None:
    run.cycle("first listing", change=False)
    for _ in range(STEADY):
        run.cycle("steady")
    if run.group == "large":
        run.cycle("nothing changed", change=False)
        run.set_concurrency(CONCURRENCY[1])
        for _ in range(STEADY):
            run.cycle("steady")
    run.set_latency(latency)
    run.set_concurrency(CONCURRENCY[1])
    run.cycle("steady")
    if run.group == "large":
        run.set_concurrency(CONCURRENCY[0])
        run.cycle("steady")


def _auto_steps(run: Run, latency: float) -> None:
    run.cycle("first listing", change=False)
    for _ in range(FULL_EVERY):
        run.cycle("steady")
    run.set_latency(latency)
    for concurrency in CONCURRENCY:
        run.set_concurrency(concurrency)
        run.cycle("steady")


def run(
    *,
    quick: bool,
    large: tuple[int, int] | None = None,
    small: tuple[int, int] | None = None,
    latency_ms: float = LATENCY_MS,
) -> Outcome:
    large = large or (QUICK_LARGE if quick else LARGE)
    small = small or (QUICK_SMALL if quick else SMALL)
    latency = latency_ms / 1000
    print(
        f"\n## Capacity: projects x sessions one replica polls in a {INTERVAL:.0f} s interval, "
        f"{'quick' if quick else 'full'} size\n"
    )
    print(
        f"One simulator process (newest first) with two groups: large {size_text(large)} and small "
        f"{size_text(small)} sessions; page_size {PAGE_SIZE}, full_listing_every {FULL_EVERY}; "
        f"{RERUNS} re-runs and {CREATES} new sessions per project before every steady-state "
        f"cycle (so every page of a full listing changes); latency 0, then {ms_text(latency)} per "
        "request. Four exporter processes in turn (listing full and auto, over each group). "
        "Exporter CPU is its process's CPU time (every thread); the simulator's is shown but "
        "excluded from every capacity figure. The projects' ids all have the same full-listing "
        "phase, so in auto every project takes its periodic full listing at the same poll (the "
        f"{FULL_EVERY + 1}th): the worst case, measured on purpose. Since b303ab8 the exporter "
        "spreads projects' periodic full listings over the cycle by a hash of their ids."
    )
    sys.stdout.flush()
    began = time.monotonic()
    runs, bare = _measure(large, small, latency)
    print(f"\nMeasured in {time.monotonic() - began:.0f} s (load {load_average()}).")
    full = report_full(runs, bare["cpu"] * 1e6 / bare["items"], latency)
    incremental, periodic = report_auto(runs)
    model = fit(runs, incremental, periodic)
    checked = check_model(runs)
    report_grid(model, large, small, latency)
    single = report_largest(model, latency)
    report_headline(model, full, latency, single)
    return report_targets(model, checked, latency)


def _size_arg(text: str) -> tuple[int, int]:
    try:
        projects, sessions = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be PROJECTSxSESSIONS, got {text!r}") from None
    if projects < 1 or sessions < 1:
        raise argparse.ArgumentTypeError(f"both must be at least 1, got {text!r}")
    return projects, sessions


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.capacity",
        description="Projects x sessions one exporter process polls within a 60 s interval.",
    )
    parser.add_argument("--quick", action="store_true", help="the smoke size of bench.run --quick")
    parser.add_argument(
        "--large",
        type=_size_arg,
        metavar="PxS",
        help=f"the group of large projects (default {LARGE[0]}x{LARGE[1]}, quick "
        f"{QUICK_LARGE[0]}x{QUICK_LARGE[1]})",
    )
    parser.add_argument(
        "--small",
        type=_size_arg,
        metavar="PxS",
        help=f"the group of small projects (default {SMALL[0]}x{SMALL[1]}, quick "
        f"{QUICK_SMALL[0]}x{QUICK_SMALL[1]})",
    )
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=LATENCY_MS,
        help=f"simulated API latency per request (default {LATENCY_MS:g})",
    )
    args = parser.parse_args(argv)
    if args.latency_ms <= 0:
        parser.error("--latency-ms must be positive")
    return standalone(
        "capacity",
        "capacity of one replica",
        argv,
        lambda: run(
            quick=args.quick, large=args.large, small=args.small, latency_ms=args.latency_ms
        ),
    )
