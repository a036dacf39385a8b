"""Idle CPU between polls: the real daemon process, measured from /proc while nothing happens.

The exporter and two bare Python processes (one sleeping, one running an idle asyncio loop)
are measured over the same window, after the exporter's first polls are done and before its
next one is due; nothing scrapes it during the window.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from pathlib import Path

from bench.children import Child, http_get, start_exporter, start_simulator
from bench.common import (
    CLK_TCK,
    BenchError,
    columns,
    median,
    per_round,
    proc_cpu_seconds,
    rounds_in_turn,
)
from bench.targets import Outcome, Target, report

TARGET_PERCENT = 0.5  # "near zero": under half a percent of one core
POLL_INTERVAL = 30
PROJECTS = 3
SESSIONS = 1000
SETTLE_SECONDS = 2.0

BARE = {
    "sleeping python (time.sleep)": "import time; time.sleep(120)",
    "idle asyncio loop (asyncio.sleep)": "import asyncio; asyncio.run(asyncio.sleep(120))",
}
EXPORTER = "exporter daemon (3 projects x 1,000 sessions)"


def _readings(procs: dict[str, Child]) -> dict[str, tuple[float, int, int]]:
    """Of each process: CPU seconds (/proc/PID/stat), and over every live thread its context
    switches (how often it woke up) and nanoseconds on CPU (schedstat: finer than ticks)."""
    out = {}
    for name, p in procs.items():
        wakeups = on_cpu = 0
        for task in Path(f"/proc/{p.pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError):
                for line in (task / "status").read_bytes().splitlines():
                    if line.startswith((b"voluntary_ctxt_switches", b"nonvoluntary_ctxt")):
                        wakeups += int(line.split()[1])
                on_cpu += int((task / "schedstat").read_bytes().split()[0])
        out[name] = (proc_cpu_seconds(p.pid), wakeups, on_cpu)
    return out


def _round(window: float) -> dict[str, dict[str, float]]:
    from exporter.simulator import DEFAULT_API_KEY

    with contextlib.ExitStack() as stack:
        sim = start_simulator(stack, PROJECTS, SESSIONS)
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-idle-")))
        config = tmp / "config.yaml"
        projects = "\n".join(f"  - id: {pid}" for pid in sim.ready["project_ids"])
        config.write_text(
            f"llamacloud:\n  base_url: {sim.ready['base_url']}\n  api_key: {DEFAULT_API_KEY}\n"
            f"  page_size: 100\npoll_interval_seconds: {POLL_INTERVAL}\n"
            f"projects:\n{projects}\n",
            encoding="utf-8",
        )
        started = time.monotonic()
        exporter, port = start_exporter(stack, config, tmp / "exporter.log")
        procs = {EXPORTER: exporter}
        for name, code in BARE.items():
            procs[name] = Child(stack, name, [sys.executable, "-c", code], stdin=False)
        text = http_get(port, "/metrics")[1]
        up = [x for x in text.splitlines() if x.startswith("llamacloud_up{") and x.endswith(" 1.0")]
        if len(up) != PROJECTS:
            raise BenchError(f"first polls: {len(up)} of {PROJECTS} up:\n{exporter.tail()}")
        time.sleep(SETTLE_SECONDS)
        before = _readings(procs)
        t0 = time.monotonic()
        time.sleep(window)
        elapsed = time.monotonic() - t0
        after = _readings(procs)
        if time.monotonic() - started > POLL_INTERVAL * 0.95:
            raise BenchError("the idle window ran into the next poll; the machine is slow")
        for name, p in procs.items():
            if p.proc.poll() is not None:
                raise BenchError(f"{name} exited {p.proc.returncode} during the window")
    return {
        name: {
            "cpu": after[name][0] - before[name][0],
            "window": elapsed,
            "wakeups": (after[name][1] - before[name][1]) / elapsed,
            "schedstat": (after[name][2] - before[name][2]) / 1e9,
        }
        for name in procs
    }


def run(*, quick: bool, rounds: int) -> Outcome:
    window = 5.0 if quick else 10.0
    tick_ms = 1000 / CLK_TCK
    print(
        f"\n## Idle CPU between polls: {window:.0f} s window, poll_interval_seconds "
        f"{POLL_INTERVAL}, {PROJECTS} projects of {SESSIONS:,} sessions\n"
    )
    runs = [_round(window) for _ in rounds_in_turn(rounds, [window])]

    def share(name: str, key: str) -> float:
        return median([x[name][key] / x[name]["window"] * 100 for x in runs])

    spec = [
        ("process", str),
        ("CPU ms in window", lambda n: f"{median([x[n]['cpu'] for x in runs]) * 1000:.0f}"),
        ("CPU %", lambda n: f"{share(n, 'cpu'):.2f}"),
        ("CPU % (schedstat)", lambda n: f"{share(n, 'schedstat'):.3f}"),
        ("wakeups/s", lambda n: f"{median([x[n]['wakeups'] for x in runs]):.1f}"),
        ("CPU ms per round", lambda n: per_round([x[n]["cpu"] * 1000 for x in runs], ".0f")),
    ]
    print()
    print(columns(spec, [EXPORTER, *BARE]))
    print(
        f"\nMedians over {rounds} rounds; CPU is utime+stime from /proc/PID/stat "
        f"(resolution {tick_ms:.0f} ms); schedstat is nanoseconds on CPU of all threads; "
        f"wakeups are context switches of all threads."
    )
    percent, excess = share(EXPORTER, "cpu"), share(EXPORTER, "cpu") - share(list(BARE)[1], "cpu")
    return report(
        Target(
            f"idle exporter CPU near zero (under {TARGET_PERCENT} % of one core)",
            percent < TARGET_PERCENT,
            f"{percent:.2f} % ({excess:+.2f} points over an idle asyncio loop)",
        )
    )
