"""Exact run counting: what reading session histories costs, and what ``runs: latest`` misses.

Three measurements, each with ``runs: exact`` (the default) and its baseline in the same run:

1. **Steady-state polls with k changed sessions.** One project of 20,000 sessions (``--quick``:
   5,000), newest first, ``page_size`` 100, polled by two exporters, ``exact`` and ``latest``,
   in turn over one simulator: a baseline poll, a warm-up poll (5 sessions changed; the project's
   id has the full-listing phase that makes it the periodic full listing, so the measured polls
   are incremental listings), then polls before which k sessions (0, 5, 50, every round) re-ran,
   1, 2 and 3 times in turn. Reported per poll: the requests as the simulator recorded them,
   listing pages and history reads apart, and each exporter's CPU. The target: exact reads
   exactly k histories (one per changed session, however many runs) and lists the same pages as
   latest.

2. **Bytes and CPU per history read.** Sessions of 1, 10 and 50 runs, their histories rendered as
   the simulator renders them (thinking, tool calls and results, answers), each read once with
   its newest run new (the steady state: a session that ran again since it was read; the 1-run
   sessions are new ones). In one fresh interpreter, over the same history URLs of the same
   simulator: the exporter's read (``read_pending`` with the daemon's ``ApiClient`` and a
   ``SessionTracker`` that listed them: ``ApiClient.session``, ``read_history`` and the
   counting) against a bare ``httpx.Client`` + ``orjson.loads`` loop. CPU per read and body
   bytes per read; rounds alternate which goes first, fresh sessions each round.

3. **A simulated day.** A simulator whose sessions behave as chats do (``burst`` 0.6: a session
   that re-runs in a tick runs again with that chance, again and again; sessions created,
   re-run and deleted by its own evolution, ``step()``), one tick of 60 s per poll: 1,440 polls
   by the two exporters in turn. The ground truth is every run made after the baseline, read
   from the simulator's histories (``bench.peers.RunsMade``) after each tick. Reported: the
   share of runs, errors, tokens and turns that latest misses and that exact misses, and what
   the day cost each. The benchmark fails loudly if exact's counters ever differ from the ground
   truth with no read pending.

Each simulator runs in its own process (``bench.peers``), so its CPU is never the exporter's;
each exporter in another (the daemon's wiring, ``cli._components``), its CPU measured there with
``time.process_time()``. Run with the others (``python -m bench.run --only histories``) or
alone: ``python -m bench.histories [--quick]``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote, urlencode

from bench.children import commands, peer, reply
from bench.common import (
    BenchError,
    columns,
    load_average,
    median,
    per_round,
    rounds_in_turn,
    table,
)
from bench.peers import FULL_LISTING_EVERY, Cycle, Run, start_simulators
from bench.targets import Outcome, Target, report, standalone

SEED = 20261201
MODES = ("exact", "latest")
PAGE_SIZE = 100

# Measurement 1: one project, k sessions changed before each poll.
POLL_SESSIONS = 20_000
QUICK_POLL_SESSIONS = 5_000
CHANGED = (0, 5, 50)
WARM_UP_CHANGED = 5
TIMES = [1, 2, 3]  # the runs of each changed session, in turn

# Measurement 2: one read per session of so many runs.
READ_RUNS = (1, 10, 50)
READS = {1: 300, 10: 200, 50: 60}  # sessions read per size and round
QUICK_READS = {1: 100, 10: 60, 50: 20}
TARGET_READ_RATIO = 1.5

# Measurement 3: a day of 60 s polls.
DAY_POLLS = 1440
DAY_BURST = 0.6
DAY_SIZE = (2, 500)  # projects, sessions each
QUICK_DAY_SIZE = (1, 100)
DRAIN_POLLS = 5  # at most, after the day, for reads still pending
TRUTH_KEYS = ("runs", "errors", "input_tokens", "output_tokens", "turns")


def _share(part: float, whole: float) -> str:
    return f"{part / whole:.1%}" if whole else "-"


# ------------------------------------------------------------------ measurement 1


def _changed_sessions(quick: bool, rounds: int) -> Outcome:
    sessions = QUICK_POLL_SESSIONS if quick else POLL_SESSIONS
    print(
        f"\n### 1. Steady-state polls with k changed sessions: {sessions:,} sessions, newest "
        f"first, page_size {PAGE_SIZE}\n"
    )
    plan = [("baseline", 0), ("warm-up", WARM_UP_CHANGED)]
    plan += [("measured", k) for _ in range(rounds) for k in CHANGED]
    polls: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        (sim,) = start_simulators(
            stack,
            ["simulator"],
            120,
            groups={"one": [1, sessions]},
            seed=SEED,
            pool="listing",
            # The baseline counts as FULL_LISTING_EVERY - 1 polls since a full listing: the
            # warm-up is the periodic full listing, the next one comes after the measured polls.
            phase=FULL_LISTING_EVERY - 1,
        ).values()
        runs = {
            mode: Run.start(stack, sim, "auto", (1, sessions), name=f"exporter ({mode})", runs=mode)
            for mode in MODES
        }
        for n, (kind, k) in enumerate(plan):
            if n:
                sim.call(60, op="advance", reruns=k, creates=0, times=TIMES)
            sim.call(30, op="requests")  # from here on, this poll's
            poll: dict[str, Any] = {"n": n + 1, "kind": kind, "k": k}
            poll["runs made"] = sum(TIMES[i % len(TIMES)] for i in range(k))
            for mode in MODES if n % 2 == 0 else MODES[::-1]:
                cycle = runs[mode].cycle(kind, change=False)
                cycle["endpoints"] = sim.call(30, op="requests")["endpoints"]
                poll[mode] = cycle
            polls.append(poll)

    def listing(p: dict[str, Any]) -> str:
        kinds = {"incremental" if p[m]["incremental"] else "full" for m in MODES}
        return " / ".join(sorted(kinds))

    def requests(mode: str, p: dict[str, Any]) -> str:
        e = p[mode]["endpoints"]
        return f"{e.get('chat', 0)} + {e.get('session', 0)}"

    spec = [
        ("poll", lambda p: f"{p['n']} ({p['kind']})"),
        ("listing", listing),
        ("k changed (runs)", lambda p: f"{p['k']} ({p['runs made']})"),
        ("exact: pages + reads", lambda p: requests("exact", p)),
        ("latest: pages + reads", lambda p: requests("latest", p)),
        ("exact CPU ms", lambda p: f"{p['exact']['cpu'] * 1000:.1f}"),
        ("latest CPU ms", lambda p: f"{p['latest']['cpu'] * 1000:.1f}"),
        ("exact / latest", lambda p: f"{p['exact']['cpu'] / p['latest']['cpu']:.2f}x"),
    ]
    print(columns(spec, polls))

    measured = [p for p in polls if p["kind"] == "measured"]
    rows = []
    for k in CHANGED:
        mine = [p for p in measured if p["k"] == k]
        exact = [p["exact"]["cpu"] * 1000 for p in mine]
        latest = [p["latest"]["cpu"] * 1000 for p in mine]
        extra = median(exact) - median(latest)
        rows.append(
            [
                str(k),
                f"{median(exact):.1f}",
                f"{median(latest):.1f}",
                f"{median(exact) / median(latest):.2f}x",
                f"{extra / k * 1000:.0f}" if k else "-",
                per_round(exact, ".1f"),
            ]
        )
    print()
    print(
        table(
            [
                "k changed",
                "exact CPU ms (median)",
                "latest CPU ms",
                "exact / latest",
                "extra µs per read",
                "exact per round",
            ],
            rows,
        )
    )
    print(
        "\nRequests as the simulator recorded them: listing pages + history reads. Each poll's "
        f"changed sessions re-ran {', '.join(map(str, TIMES))} times in turn, drawn from "
        f"{sim.ready['project_ids'][0][:8]}'s sessions, so a read covers one run or several. "
        "Both exporters list the same data (one simulator, polled by each in turn, the order "
        "alternating); CPU is each exporter's own (time.process_time() over Poller.poll_all_once, "
        "every thread)."
    )
    wrong = []
    for p in measured:
        e, latest = p["exact"]["endpoints"], p["latest"]["endpoints"]
        if e.get("session", 0) != p["k"] or latest.get("session", 0) != 0:
            wrong.append(f"poll {p['n']}: {e.get('session', 0)} reads for k = {p['k']}")
        if e.get("chat", 0) != latest.get("chat", 0):
            wrong.append(f"poll {p['n']}: {e.get('chat', 0)} pages against {latest.get('chat')}")
        if p["exact"]["reads"] != e.get("session", 0):
            wrong.append(f"poll {p['n']}: the exporter asked for {p['exact']['reads']} reads")
        if not (p["exact"]["incremental"] and p["latest"]["incremental"]):
            wrong.append(f"poll {p['n']}: a full listing")
    pages = sorted({p["exact"]["endpoints"].get("chat", 0) for p in measured})
    return report(
        Target(
            "exact makes exactly k history reads per steady-state poll (one per changed session, "
            "however many runs) and the same page requests as latest",
            not wrong,
            f"{len(measured)} polls, k = {', '.join(map(str, CHANGED))}: "
            + (
                f"reads = k and pages equal in every one ({'/'.join(map(str, pages))} pages)"
                if not wrong
                else "; ".join(wrong)
            ),
        )
    )


# ------------------------------------------------------------------ measurement 2


def child(params: dict[str, Any]) -> dict[str, Any]:
    if params["role"] == "reader":
        return _serve_reader(params)
    raise ValueError(params["role"])


def _serve_reader(params: dict[str, Any]) -> dict[str, Any]:
    """History reads in this process, on command, over the project ``project_id`` at
    ``base_url``: ``list`` (a full listing into the tracker, ``runs: exact``: the sessions that
    changed are pending), ``exporter`` (``read_pending`` of every pending session, timed) and
    ``bare`` (the same sessions' history URLs with httpx + orjson, timed)."""
    import httpx
    import orjson

    from exporter.aggregate import Listing, SessionTracker
    from exporter.cli import _components
    from exporter.config import Config, ProjectConfig, Secret
    from exporter.histories import read_pending
    from exporter.simulator import CHAT_PATH, DEFAULT_API_KEY

    pid = params["project_id"]
    project = ProjectConfig(
        id=pid,
        name="bench",
        organization_id="",
        base_url=params["base_url"],
        page_size=PAGE_SIZE,
        api_key=Secret(DEFAULT_API_KEY),
    )
    config = Config(projects=(project,), max_pages=10**6)
    _store, _poller, client, _targets = _components(config, None)
    tracker = SessionTracker()
    bare = httpx.Client(headers={"Authorization": f"Bearer {DEFAULT_API_KEY}"}, timeout=60)
    query = urlencode({"project_id": pid})  # as ApiClient.session asks (no organization id)
    bare.get(f"{params['base_url']}{CHAT_PATH}?{query}").raise_for_status()  # its connection
    reply({"ready": True})
    try:
        for command in commands():
            ids: list[str] = command.get("ids", [])
            cpu = time.process_time()
            if command["op"] == "list":
                listing = Listing(tracker, None, detail=config.detail, exact=True)
                for page in client.pages(project, config.max_pages):
                    if page.items is not None:
                        listing.add(page.items, page.key, page.token)
                listing.finish()
                reply({"pending": list(tracker.pending)})
            elif command["op"] == "exporter":
                reads = read_pending(
                    client, project, tracker, len(ids), config.max_response_bytes, config.detail
                )
                cpu = time.process_time() - cpu
                fine = reads.failed == reads.not_found == reads.invalid == 0
                reply({"cpu": cpu, "reads": len(reads.sessions), "runs": reads.runs, "ok": fine})
            elif command["op"] == "bare":
                urls = [f"{params['base_url']}{CHAT_PATH}/{quote(s, safe='')}?{query}" for s in ids]
                bodies, size = [], 0
                cpu = time.process_time()
                for url in urls:
                    content = bare.get(url).raise_for_status().content
                    size += len(content)
                    bodies.append(orjson.loads(content))
                cpu = time.process_time() - cpu
                stops = [sum(e.get("type") == "stop" for e in b["events"]) for b in bodies]
                reply({"cpu": cpu, "reads": len(bodies), "bytes": size, "stops": stops})
            else:
                raise ValueError(command)
    finally:
        bare.close()
        client.close()
    return {}


def _per_read(quick: bool, rounds: int) -> Outcome:
    counts = QUICK_READS if quick else READS
    print(
        "\n### 2. Bytes and CPU per history read: sessions of "
        f"{', '.join(map(str, READ_RUNS))} runs, against a bare httpx.Client + orjson.loads loop\n"
    )
    with contextlib.ExitStack() as stack:
        (sim,) = start_simulators(
            stack,
            ["simulator"],
            60,
            groups={"reads": [1, 0]},
            seed=SEED,
            pool="created",
            pool_size=0,
        ).values()
        pid = sim.ready["project_ids"][0]

        def make(count: int, runs: int) -> list[str]:
            return list(sim.call(120, op="sessions", project=pid, count=count, runs=runs)["ids"])

        # Sessions that will have n runs: n - 1 now, listed by the baseline, one more later.
        older = {(r, n): make(counts[n], n - 1) for r in range(rounds) for n in READ_RUNS if n > 1}
        params = {"role": "reader", "base_url": sim.ready["base_url"], "project_id": pid}
        reader = peer(stack, "histories", "reader", params)
        reader.ready = reader.receive(60)
        reader.call(120, op="list")  # the baseline: nothing pending
        results: dict[tuple[int, str], list[dict[str, Any]]] = {}
        for r, order in enumerate(rounds_in_turn(rounds, ("bare", "exporter"))):
            for n in READ_RUNS:
                if n == 1:
                    ids = make(counts[n], 1)  # new since the last listing, one run each
                else:
                    ids = older[(r, n)]
                    sim.call(120, op="rerun", project=pid, ids=ids)
                pending = reader.call(120, op="list")["pending"]
                if sorted(pending) != sorted(ids):
                    raise BenchError(f"{len(pending)} sessions pending, not the {len(ids)} changed")
                for kind in order:
                    result = reader.call(300, op=kind, ids=ids)
                    results.setdefault((n, kind), []).append(result)
                    if kind == "exporter" and not (
                        result["ok"] and result["reads"] == result["runs"] == len(ids)
                    ):
                        raise BenchError(
                            f"{n} runs: the exporter read {result['reads']} histories and counted "
                            f"{result['runs']} runs, not one each of {len(ids)}"
                        )
                    if kind == "bare" and set(result["stops"]) != {n}:
                        raise BenchError(f"{n} runs: histories of {set(result['stops'])} runs")

    rows, ratios = [], {}
    for n in READ_RUNS:
        bare = [x["cpu"] / x["reads"] * 1e6 for x in results[(n, "bare")]]
        mine = [x["cpu"] / x["reads"] * 1e6 for x in results[(n, "exporter")]]
        size = sum(x["bytes"] for x in results[(n, "bare")]) / sum(
            x["reads"] for x in results[(n, "bare")]
        )
        ratios[n] = median(mine) / median(bare)
        rows.append(
            [
                f"{n} run{'s' if n > 1 else ''}",
                f"{size / 1024:,.1f}",
                f"{median(bare):.0f}",
                f"{median(mine):.0f}",
                f"{ratios[n]:.2f}x",
                f"{(median(mine) - median(bare)) / (size / 1024):.1f}",
                per_round(mine, ".0f"),
                per_round(bare, ".0f"),
            ]
        )
    print(
        table(
            [
                "history of",
                "KiB per read",
                "bare µs CPU per read",
                "exporter µs CPU per read",
                "exporter / bare",
                "extra µs per KiB",
                "exporter per round",
                "bare per round",
            ],
            rows,
        )
    )
    print(
        f"\n{rounds} round(s) of {', '.join(f'{counts[n]} reads of {n}-run' for n in READ_RUNS)} "
        "histories, fresh sessions each round, the same URLs for both: the exporter's is "
        "read_pending over a tracker that listed them (ApiClient.session, its deadline, body "
        "bound and JSON parse, read_history, first_new, counting the new run, tracker.read); "
        "the bare loop's is httpx.Client.get + orjson.loads. Each read counts one run: the "
        "session's newest (10 and 50 runs: it ran again since the last listing; 1 run: new)."
    )
    worst = max(ratios, key=lambda n: ratios[n])
    return report(
        Target(
            f"exporter CPU per history read at most {TARGET_READ_RATIO:g}x a bare httpx + "
            "orjson read of the same body",
            ratios[worst] <= TARGET_READ_RATIO,
            ", ".join(f"{ratios[n]:.2f}x at {n} run{'s' if n > 1 else ''}" for n in READ_RUNS),
        )
    )


# ------------------------------------------------------------------ measurement 3


def _counted(cycle: Cycle) -> dict[str, float]:
    """An exporter's run counters after a cycle, summed over its projects."""
    states = cycle["state"].values()
    return {key: sum(s["counters"][key] for s in states) for key in TRUTH_KEYS}


def _miscount(
    counted: dict[str, float], truth: dict[str, int], n: int, projects: int, sessions: int
) -> str:
    differ = ", ".join(f"{k} {counted[k]:,.0f} for {truth[k]:,}" for k in TRUTH_KEYS)
    return (
        f"exact's counters differ from the runs made after poll {n + 1}, no read pending: "
        f"{differ} (seed {SEED}, {projects} x {sessions} sessions, burst {DAY_BURST}, one "
        "step() per poll)"
    )


def _day(quick: bool) -> Outcome:
    projects, sessions = QUICK_DAY_SIZE if quick else DAY_SIZE
    print(
        f"\n### 3. A simulated day: {projects} x {sessions:,} sessions, burst {DAY_BURST}, "
        f"{DAY_POLLS:,} polls of a 60 s tick\n"
    )
    sys.stdout.flush()
    began = time.monotonic()
    drained = 0
    with contextlib.ExitStack() as stack:
        (sim,) = start_simulators(
            stack,
            ["simulator"],
            120,
            groups={"day": [projects, sessions]},
            seed=SEED,
            pool="created",
            pool_size=0,
            burst=DAY_BURST,
            truth=True,
            # The simulated clock ends the day before the wall clock: the exporter's cutoff is
            # never held back by sessions stamped in its future.
            clock_start=(DAY_POLLS + 60) * 60,
        ).values()
        runs = {
            mode: Run.start(
                stack,
                sim,
                "auto",
                (projects, sessions),
                name=f"exporter ({mode})",
                runs=mode,
                compare=True,
            )
            for mode in MODES
        }
        truth = dict.fromkeys(TRUTH_KEYS, 0)
        for n in range(1 + DAY_POLLS + DRAIN_POLLS):
            if n > DAY_POLLS and not runs["exact"].cycles[-1]["reads_pending"]:
                break
            if 0 < n <= DAY_POLLS:
                truth = sim.call(60, op="step")["truth"]
            elif n:
                drained += 1
            for mode in MODES if n % 2 == 0 else MODES[::-1]:
                runs[mode].cycle("day", change=False)
            exact = runs["exact"].cycles[-1]
            if not exact["reads_pending"] and _counted(exact) != truth:
                raise BenchError(_miscount(_counted(exact), truth, n, projects, sessions))
            if n and n % 240 == 0:
                print(f"poll {n}/{DAY_POLLS} (load {load_average()})")
                sys.stdout.flush()
    elapsed = time.monotonic() - began
    cycles = {mode: run.cycles[1:] for mode, run in runs.items()}  # after the baseline
    counted = {mode: _counted(run.cycles[-1]) for mode, run in runs.items()}
    if counted["exact"] != truth:
        raise BenchError(
            _miscount(counted["exact"], truth, DAY_POLLS + drained, projects, sessions)
        )

    def row(key: str, label: str) -> list[str]:
        made = truth[key]
        cells = [label, f"{made:,.0f}"]
        for mode in MODES:
            cells += [f"{counted[mode][key]:,.0f}", _share(made - counted[mode][key], made)]
        return cells

    print(
        table(
            ["since the baseline", "made", "exact", "exact misses", "latest", "latest misses"],
            [
                row("runs", "runs"),
                row("errors", "failed runs"),
                row("input_tokens", "input tokens"),
                row("output_tokens", "output tokens"),
                row("turns", "turns"),
            ],
        )
    )

    def cost(mode: str) -> list[str]:
        c = cycles[mode]
        pages = sum(x["pages"] for x in c)
        reads = sum(x["reads"] for x in c)
        cpu = sum(x["cpu"] for x in c)
        return [
            mode,
            f"{pages:,}",
            f"{reads:,}",
            f"{(pages + reads) / len(c):.1f}",
            str(max(x["reads"] for x in c)),
            str(max(x["reads_pending"] for x in c)),
            f"{cpu:.1f}",
            f"{cpu / len(c) * 1000:.1f}",
        ]

    print()
    print(
        table(
            [
                "runs:",
                "pages",
                "history reads",
                "requests per poll",
                "most reads in a poll",
                "most pending after a poll",
                "exporter CPU s",
                "CPU ms per poll",
            ],
            [cost(mode) for mode in MODES],
        )
    )
    per_run = truth["runs"] / max(sum(x["reads"] for x in cycles["exact"]), 1)
    print(
        f"\n{len(cycles['exact']):,} polls after the baseline ({drained} after the day, for reads "
        f"still pending), {elapsed:.0f} s. The ground truth: every stop event the simulator's "
        "histories gained after the baseline, read after every tick (a session runs and is "
        f"deleted at different ticks, so none is missed). {per_run:.2f} runs per history read. "
        "latest counts one run per changed session per poll: a session that ran n times "
        "between two polls counts once, with its last run's tokens and status."
    )
    lost = {key: _share(truth[key] - counted["latest"][key], truth[key]) for key in TRUTH_KEYS}
    return report(
        Target(
            "over a simulated day (burst 0.6), exact's counters equal the runs made, exactly",
            counted["exact"] == truth,
            f"exact counted {counted['exact']['runs']:,} of {truth['runs']:,} runs and every "
            f"error, token and turn; latest missed {truth['runs'] - counted['latest']['runs']:,} "
            f"runs ({lost['runs']}), {lost['errors']} of failed runs, {lost['input_tokens']} of "
            f"input and {lost['output_tokens']} of output tokens",
        )
    )


# ------------------------------------------------------------------ orchestration


def run(*, quick: bool, rounds: int) -> Outcome:
    print(f"\n## Exact run counting: history reads, {'quick' if quick else 'full'} size\n")
    return _changed_sessions(quick, rounds) + _per_read(quick, rounds) + _day(quick)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.histories",
        description="What exact run counting costs per poll and per read, and what latest misses.",
    )
    parser.add_argument("--quick", action="store_true", help="the smoke size of bench.run --quick")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 3, quick 1)")
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 3)
    return standalone(
        "histories", "history reads", argv, lambda: run(quick=args.quick, rounds=rounds)
    )


if __name__ == "__main__":
    raise SystemExit(main())
