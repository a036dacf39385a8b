"""Steady-state polls of many small projects against a bare replay of the requests they made.

An incremental poll of a small project reads one or two pages and a few session histories, so
what the exporter spends beyond the HTTP requests themselves (a worker thread, the log line,
the project's ``/metrics`` pieces, the state file's transaction, the store) is most of its
cost. This benchmark holds that overhead to the requests' own floor, measured in the same run:

- One simulator process (``bench.peers``, newest first) with many small projects (300 x 200
  sessions; ``--quick`` 100 x 100), their ids all of one full-listing phase, so every poll
  after the baseline is incremental.
- One exporter process built as the daemon wires it (``cli._components``: ``Store``,
  ``ApiClient``, ``Poller``; ``listing: auto`` and ``runs: exact``, the defaults; the
  ``/metrics`` app with its exposition cache, which renders a project as its poll ends and
  compresses it 0.1 s later; a state file saved after every poll; JSON log lines), polling
  every project once per cycle (``Poller.poll_all_once``, max_concurrency 4).
- A baseline cycle, then a "minute" of 6 steady-state cycles: before 4 of them, 2 re-runs and
  1 new session in every project (so every poll reads about 3 histories); before the other 2,
  nothing changed (one page per poll).
- After each cycle, every request the simulator answered during it (path and query, exactly as
  the exporter sent them: listing pages and history reads alike) is replayed, before anything
  changes, by a bare sync ``httpx.Client`` + ``orjson.loads`` loop in a process of its own,
  one request after another: the same bodies, parsed, and nothing else. The goal is against
  that replay. The same requests are also replayed by a bare ``http.client`` + ``orjson.loads``
  loop (the floor of an HTTP/1.1 client in Python), to show how far that is.

Compared: the exporter process's CPU over the whole minute (``/proc/PID/stat``: every thread,
and whatever it did between cycles), and each cycle's (``time.process_time()`` over
``poll_all_once``), against the replayer's (``time.process_time()`` over its requests). Rounds
run in fresh processes. Run with the others (``python -m bench.run --only steady``) or alone:
``python -m bench.steady [--quick] [--projects 300] [--sessions 200] [--profile]``
(``--profile``: a cProfile of every exporter thread on CPU time over the first minute).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from bench.children import commands, peer, reply
from bench.common import (
    BenchError,
    columns,
    load_average,
    median,
    per_round,
    proc_cpu_seconds,
    table,
)
from bench.peers import Cycle, Run, start_simulators
from bench.targets import Outcome, Target, report, standalone

SEED = 20261203
SIZE = (300, 200)  # projects, sessions each
QUICK_SIZE = (100, 100)
PAGE_SIZE = 100
CONCURRENCY = 4
# Before each steady-state cycle: (re-runs, new sessions) in every project.
MINUTE = ((2, 1), (0, 0), (2, 1), (2, 1), (0, 0), (2, 1))
TARGET_RATIO = 1.5


# ------------------------------------------------------------------ the bare replayer


def child(params: dict[str, Any]) -> dict[str, Any]:
    if params["role"] == "replayer":
        return _serve_replayer(params)
    raise ValueError(params["role"])


def _serve_replayer(params: dict[str, Any]) -> dict[str, Any]:
    """``replay``: each of ``requests`` (path, query) at ``base_url`` with one sync
    ``httpx.Client`` (the exporter's key, one keep-alive connection) and ``orjson.loads`` of
    the body; its CPU (``time.process_time()`` over the loop), bytes and statuses; then the
    same with one ``http.client`` connection (``stdlib_cpu``)."""
    import http.client
    from urllib.parse import urlsplit

    import httpx
    import orjson

    from exporter.simulator import DEFAULT_API_KEY

    base = params["base_url"]
    auth = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}
    client = httpx.Client(headers=auth, timeout=60)
    client.get(f"{base}/healthz")  # its connection, before any measuring
    split = urlsplit(base)
    stdlib = http.client.HTTPConnection(split.hostname or "", split.port)
    stdlib.request("GET", "/healthz", headers=auth)
    stdlib.getresponse().read()
    reply({"ready": True})
    try:
        for command in commands():
            if command["op"] != "replay":
                raise ValueError(command)
            urls = [f"{base}{path}?{urlencode(query)}" for path, query in command["requests"]]
            size, statuses = 0, {}
            cpu = time.process_time()
            for url in urls:
                response = client.get(url)
                content = response.content
                size += len(content)
                orjson.loads(content)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            cpu = time.process_time() - cpu
            targets = [f"{path}?{urlencode(query)}" for path, query in command["requests"]]
            stdlib_cpu = time.process_time()
            for target in targets:
                stdlib.request("GET", target, headers=auth)
                orjson.loads(stdlib.getresponse().read())
            stdlib_cpu = time.process_time() - stdlib_cpu
            reply(
                {
                    "cpu": cpu,
                    "stdlib_cpu": stdlib_cpu,
                    "requests": len(urls),
                    "bytes": size,
                    "statuses": statuses,
                }
            )
    finally:
        client.close()
        stdlib.close()
    return {}


# ------------------------------------------------------------------ one round


def _minute(
    size: tuple[int, int], verbose: bool, profile: bool = False, **extra: Any
) -> dict[str, Any]:
    """A fresh simulator, exporter and replayer: the baseline cycle, then the minute, each
    cycle replayed after it."""
    projects, sessions = size
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-steady-")))
        (sim,) = start_simulators(
            stack,
            ["simulator"],
            120 + projects,
            groups={"small": [projects, sessions]},
            seed=SEED,
            pool="listing",
        ).values()
        run = Run.start(
            stack,
            sim,
            "auto",
            size,
            name="exporter",
            page_size=PAGE_SIZE,
            concurrency=CONCURRENCY,
            verbose=verbose,
            **{"exposition": True, "state_path": str(folder / "state.db"), **extra},
        )
        replayer = peer(stack, "steady", "replayer", {"role": "replayer", **_base(sim)})
        replayer.ready = replayer.receive(60)

        def poll(kind: str) -> Cycle:
            sim.call(30, op="log")  # from here on, this cycle's
            cycle = run.cycle(kind, change=False)
            log = sim.call(60, op="log")
            if log["lost"]:
                raise BenchError(f"{log['lost']} requests past the simulator's request log")
            if len(log["log"]) != cycle["requests"] or any(s != 200 for *_, s in log["log"]):
                raise BenchError(
                    f"the simulator answered {len(log['log'])} requests, the exporter counted "
                    f"{cycle['requests']} ({cycle['codes']})"
                )
            requests = [[path, query] for path, query, _ in log["log"]]
            cycle["bare"] = replayer.call(120 + len(requests) * 0.1, op="replay", requests=requests)
            cycle["histories"] = sum("/chat/" in path for path, _ in requests)
            return cycle

        baseline = poll("baseline")
        began = run.exporter.call(30, op="cpu")["cpu"]
        proc = proc_cpu_seconds(run.exporter.pid)
        wall = time.perf_counter()
        if profile:
            run.exporter.call(30, op="profile")
        cycles = []
        for n, (reruns, creates) in enumerate(MINUTE):
            if reruns or creates:
                sim.call(120, op="advance", reruns=reruns, creates=creates)
            cycle = poll("steady" if reruns or creates else "nothing changed")
            cycle["n"] = n + 1
            if cycle["incremental"] != projects:
                raise BenchError(f"cycle {n + 1}: {projects - cycle['incremental']} full listings")
            cycles.append(cycle)
        proc = proc_cpu_seconds(run.exporter.pid) - proc
        ended = run.exporter.call(30, op="cpu")["cpu"]
        profiled = None
        if profile:  # the cProfile of every thread over the minute, by cumulative CPU
            profiled = run.exporter.call(120, op="profile", top=90, sort="cumulative")["profile"]
        wall = time.perf_counter() - wall
    return {
        "baseline": baseline,
        "cycles": cycles,
        "exporter_cpu": ended - began,
        "exporter_proc": proc,
        "wall": wall,
        "load": load_average(),
        "profile": profiled,
    }


def _base(sim: Any) -> dict[str, Any]:
    return {"base_url": sim.ready["base_url"]}


# ------------------------------------------------------------------ the report


def _report(rounds: list[dict[str, Any]], size: tuple[int, int]) -> Outcome:
    projects, sessions = size
    first = rounds[0]

    def ms_per_project(seconds: float) -> str:
        return f"{seconds / projects * 1000:.2f}"

    spec = [
        ("cycle", lambda c: f"{c.get('n', 0)} ({c['kind']})"),
        ("pages", lambda c: f"{c['pages']:,}"),
        ("history reads", lambda c: f"{c['histories']:,}"),
        ("wall s", lambda c: f"{c['wall']:.2f}"),
        ("exporter CPU s", lambda c: f"{c['cpu']:.3f}"),
        ("bare replay CPU s", lambda c: f"{c['bare']['cpu']:.3f}"),
        ("exporter / bare", lambda c: f"{c['cpu'] / c['bare']['cpu']:.2f}x"),
        ("exporter ms per project", lambda c: ms_per_project(c["cpu"])),
        ("bare ms per project", lambda c: ms_per_project(c["bare"]["cpu"])),
    ]
    print(f"\nRound 1 (load {first['load']} at its end), cycle by cycle:\n")
    print(columns(spec, [first["baseline"], *first["cycles"]]))

    ratios, rows = [], []
    for r in rounds:
        bare = sum(c["bare"]["cpu"] for c in r["cycles"])
        ratios.append(r["exporter_proc"] / bare)
        r["bare_cpu"] = bare
        r["stdlib_cpu"] = sum(c["bare"]["stdlib_cpu"] for c in r["cycles"])
    for label, key, per in (
        ("exporter, the minute (/proc: every thread, between cycles too)", "exporter_proc", 1),
        ("exporter, its cycles (process_time over poll_all_once)", "cycles_cpu", 1),
        ("bare replay of the same requests (httpx.Client + orjson.loads)", "bare_cpu", 1),
        ("the same with http.client + orjson.loads (the floor)", "stdlib_cpu", 1),
    ):
        values = [
            sum(c["cpu"] for c in r["cycles"]) if key == "cycles_cpu" else r[key] * per
            for r in rounds
        ]
        bare = [r["bare_cpu"] for r in rounds]
        rows.append(
            [
                label,
                f"{median(values):.3f}",
                f"{median(values) / len(MINUTE) / projects * 1000:.2f}",
                f"{median([v / b for v, b in zip(values, bare, strict=True)]):.2f}x",
                per_round(values, ".3f"),
            ]
        )
    print()
    print(
        table(
            ["the minute", "CPU s (median)", "ms per project per poll", "vs bare", "per round"],
            rows,
        )
    )
    requests = sum(len_requests(c) for c in first["cycles"])
    reads = sum(c["histories"] for c in first["cycles"])
    print(
        f"\n{len(rounds)} round(s) of fresh processes, {projects} projects x {sessions} "
        f"sessions, page_size {PAGE_SIZE}, max_concurrency {CONCURRENCY}; a minute is "
        f"{len(MINUTE)} cycles ({requests:,} requests in round 1, {reads:,} of them history "
        f"reads), the same requests replayed by the bare loop after each cycle. Loads at the "
        f"rounds' ends: {', '.join(r['load'] for r in rounds)}. Against the http.client "
        f"replay, the exporter's minute is "
        f"{median([r['exporter_proc'] / r['stdlib_cpu'] for r in rounds]):.2f}x."
    )
    ratio = median(ratios)
    return report(
        Target(
            f"a minute of steady-state polls at most {TARGET_RATIO:g}x the CPU of a bare "
            "replay of their requests",
            ratio <= TARGET_RATIO,
            f"{ratio:.2f}x ({per_round(ratios)}), "
            f"{median([r['exporter_proc'] for r in rounds]) / len(MINUTE) / projects * 1000:.2f}"
            f" ms per project per poll against "
            f"{median([r['bare_cpu'] for r in rounds]) / len(MINUTE) / projects * 1000:.2f}",
        )
    )


def len_requests(cycle: Cycle) -> int:
    return int(cycle["bare"]["requests"])


# ------------------------------------------------------------------ orchestration


def run(
    *,
    quick: bool,
    rounds: int,
    size: tuple[int, int] | None = None,
    verbose: bool = False,
    profile: bool = False,
) -> Outcome:
    size = size or (QUICK_SIZE if quick else SIZE)
    print(
        f"\n## Steady-state polls against a bare replay of their requests: {size[0]} projects x "
        f"{size[1]} sessions\n"
    )
    results = []
    for r in range(rounds):
        results.append(_minute(size, verbose, profile=profile and r == 0))
        print(f"round {r + 1}/{rounds} done (load {load_average()})")
        sys.stdout.flush()
    if profile:
        print(
            "\ncProfile of every thread of the exporter over round 1's minute, CPU time (the "
            "profiler inflates that round's CPU, and so the ratio below):\n"
        )
        print(results[0]["profile"])
    return _report(results, size)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.steady",
        description="Steady-state polls of many small projects against a bare replay of "
        "their requests.",
    )
    parser.add_argument("--quick", action="store_true", help="the smoke size of bench.run --quick")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 3, quick 1)")
    parser.add_argument("--projects", type=int, default=None)
    parser.add_argument("--sessions", type=int, default=None)
    parser.add_argument("--verbose", action="store_true", help="a line per cycle as it ends")
    parser.add_argument(
        "--profile", action="store_true", help="a cProfile of the exporter (every thread)"
    )
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 3)
    default = QUICK_SIZE if args.quick else SIZE
    size = (args.projects or default[0], args.sessions or default[1])
    return standalone(
        "steady",
        "steady-state polls",
        argv,
        lambda: run(
            quick=args.quick,
            rounds=rounds,
            size=size,
            verbose=args.verbose,
            profile=args.profile,
        ),
    )


if __name__ == "__main__":
    raise SystemExit(main())
