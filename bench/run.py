"""The command that runs the benchmarks, one after another, and sums up their targets.

Benchmarks with numbers to beat: poll CPU, memory per session, scrape latency, idle CPU,
requests and wall time of incremental listings, the capacity of one replica, and the cost of
choosing a shard's projects. Run from the repository root:

    .venv/bin/python -m bench.run            # everything, full sizes (several minutes)
    .venv/bin/python -m bench.run --quick    # smaller sizes, a smoke run
    .venv/bin/python -m bench.run --only poll
    .venv/bin/python -m bench.run --only soak   # the soak (5 minutes), never part of a full run
    .venv/bin/python -m bench.run --only capacity   # projects x sessions per replica
    .venv/bin/python -m bench.run --only steady     # small polls against a bare replay

Each benchmark prints Markdown tables, its ratio against a baseline measured in the same run,
and whether its target is met. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as ``python bench/run.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import (
    capacity,
    histories,
    idle,
    incremental,
    memory,
    poll,
    scrape,
    sharding,
    soak,
    steady,
)
from bench.common import REPO_ROOT, BenchError, header
from bench.targets import Outcome, print_targets

Options = argparse.Namespace
BENCHMARKS: dict[str, Callable[[Options], Outcome]] = {
    "poll": lambda o: poll.run(quick=o.quick, rounds=o.rounds, profile=o.profile),
    "memory": lambda o: memory.run(quick=o.quick, rounds=o.rounds),
    "scrape": lambda o: scrape.run(quick=o.quick, rounds=o.rounds, profile=o.profile),
    "idle": lambda o: idle.run(quick=o.quick, rounds=o.rounds),
    "incremental": lambda o: incremental.run(quick=o.quick),
    "capacity": lambda o: capacity.run(quick=o.quick),
    "sharding": lambda o: sharding.run(quick=o.quick),
    "histories": lambda o: histories.run(quick=o.quick, rounds=o.rounds),
    "steady": lambda o: steady.run(quick=o.quick, rounds=o.rounds, profile=o.profile),
}
ON_REQUEST: dict[str, Callable[[Options], Outcome]] = {
    "soak": lambda o: soak.run(quick=o.quick),  # long: run only when named with --only
}


def _child(module: str, params: str) -> int:
    """The body of one measurement or peer in a fresh interpreter (``bench.MODULE.child``);
    prints its JSON result."""
    result = importlib.import_module(f"bench.{module}").child(json.loads(params))
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="Benchmarks of the exporter, each against a baseline measured in the same run.",
    )
    parser.add_argument(
        "--only",
        choices=[*BENCHMARKS, *ON_REQUEST],
        action="append",
        help="run only this benchmark (may be given more than once); soak runs only when "
        "named here",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smaller sizes and fewer rounds: a fast smoke run"
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="rounds per measurement (default 3, quick 1)"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also print a cProfile of the exporter's steady-state polls (poll) and of "
        "/metrics with gzip (scrape)",
    )
    parser.add_argument("--child", nargs=2, metavar=("KIND", "PARAMS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(*args.child)

    args.rounds = args.rounds or (1 if args.quick else 3)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    every = BENCHMARKS | ON_REQUEST
    selected = [b for b in every if b in args.only] if args.only else list(BENCHMARKS)
    shown = list(argv) if argv is not None else sys.argv[1:]
    title = "benchmarks" + (" (quick)" if args.quick else "")
    header(title, f"{_python()} -m bench.run {' '.join(shown)}")

    started = time.monotonic()
    outcome: Outcome = []
    failed: list[str] = []
    for name in selected:
        began = time.monotonic()
        try:
            outcome += every[name](args)
        except BenchError as exc:
            failed.append(name)
            print(f"\n{name}: could not run: {exc}", file=sys.stderr)
        print(f"({name} took {time.monotonic() - began:.0f} s)")
        sys.stdout.flush()

    print_targets(outcome)
    for name in failed:
        print(f"- FAILED TO RUN: {name}")
    print(f"\nTotal {time.monotonic() - started:.0f} s.")
    return 1 if failed else 0


def _python() -> str:
    """The interpreter as typed from the repository root, when it is the project's venv."""
    try:
        return str(Path(sys.executable).relative_to(REPO_ROOT))
    except ValueError:
        return sys.executable


if __name__ == "__main__":
    raise SystemExit(main())
