"""Idle CPU between polls: the real daemon process, measured from /proc while nothing happens.

The exporter and two bare Python processes (one sleeping, one running an idle asyncio loop)
are measured over the same window, after the exporter's first polls are done and before its
next one is due; nothing scrapes it during the window.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    REPO_ROOT,
    BenchError,
    load_average,
    median,
    proc_cpu_seconds,
    table,
    verdict,
)
from bench.peers import free_port, simulator_process, stop_process

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


def _wakeups(pid: int) -> int:
    """Context switches of every thread of a process: how often it woke up."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError), open(task / "status", "rb") as f:
            for line in f:
                if line.startswith((b"voluntary_ctxt_switches", b"nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
    return total


def _on_cpu_ns(pid: int) -> int:
    """Nanoseconds on CPU of every live thread (schedstat): finer than the 10 ms of ticks."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError), open(task / "schedstat", "rb") as f:
            total += int(f.read().split()[0])
    return total


def _wait_ready(port: int, proc: subprocess.Popen[Any], timeout: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=5) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BenchError(f"exporter exited {proc.returncode} before it was ready")
            with contextlib.suppress(httpx.HTTPError):
                if client.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    text = client.get(f"http://127.0.0.1:{port}/metrics").text
                    up = [
                        line
                        for line in text.splitlines()
                        if line.startswith("llamacloud_up{") and line.endswith(" 1.0")
                    ]
                    if len(up) != PROJECTS:
                        raise BenchError(f"first polls: {len(up)} of {PROJECTS} projects up")
                    return
            time.sleep(0.2)
    raise BenchError(f"exporter not ready within {timeout:.0f} s")


def _round(window: float) -> dict[str, dict[str, float]]:
    from exporter.simulator import DEFAULT_API_KEY

    with (
        simulator_process(PROJECTS, SESSIONS) as sim,
        tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp,
    ):
        config = Path(tmp) / "config.yaml"
        projects = "\n".join(f"  - id: {pid}" for pid in sim.project_ids)
        config.write_text(
            f"llamacloud:\n  base_url: {sim.base_url}\n  api_key: {DEFAULT_API_KEY}\n"
            f"  page_size: 100\npoll_interval_seconds: {POLL_INTERVAL}\n"
            f"projects:\n{projects}\n",
            encoding="utf-8",
        )
        port = free_port()
        procs: dict[str, subprocess.Popen[Any]] = {}
        with open(Path(tmp) / "exporter.log", "wb") as log:
            try:
                procs[EXPORTER] = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "exporter",
                        "--config",
                        str(config),
                        "--web.listen-address",
                        f"127.0.0.1:{port}",
                    ],
                    cwd=REPO_ROOT,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                )
                for name, code in BARE.items():
                    procs[name] = subprocess.Popen(
                        [sys.executable, "-c", code], stdin=subprocess.DEVNULL
                    )
                started = time.monotonic()
                _wait_ready(port, procs[EXPORTER])
                time.sleep(SETTLE_SECONDS)
                cpu0 = {name: proc_cpu_seconds(p.pid) for name, p in procs.items()}
                wake0 = {name: _wakeups(p.pid) for name, p in procs.items()}
                ns0 = {name: _on_cpu_ns(p.pid) for name, p in procs.items()}
                t0 = time.monotonic()
                time.sleep(window)
                elapsed = time.monotonic() - t0
                cpu1 = {name: proc_cpu_seconds(p.pid) for name, p in procs.items()}
                wake1 = {name: _wakeups(p.pid) for name, p in procs.items()}
                ns1 = {name: _on_cpu_ns(p.pid) for name, p in procs.items()}
                if time.monotonic() - started > POLL_INTERVAL * 0.95:
                    raise BenchError("the idle window ran into the next poll; the machine is slow")
                for name, p in procs.items():
                    if p.poll() is not None:
                        raise BenchError(f"{name} exited {p.returncode} during the window")
            except BenchError as exc:
                log.flush()
                text = (Path(tmp) / "exporter.log").read_text(errors="replace")[-3000:]
                raise BenchError(f"{exc}\nexporter log:\n{text}") from None
            finally:
                for p in procs.values():
                    stop_process(p)
    return {
        name: {
            "cpu": cpu1[name] - cpu0[name],
            "window": elapsed,
            "wakeups": (wake1[name] - wake0[name]) / elapsed,
            "schedstat": (ns1[name] - ns0[name]) / 1e9,
        }
        for name in procs
    }


def run(*, quick: bool, rounds: int) -> list[tuple[str, bool, str]]:
    window = 5.0 if quick else 10.0
    tick_ms = 1000 / os.sysconf("SC_CLK_TCK")
    print(
        f"\n## Idle CPU between polls: {window:.0f} s window, poll_interval_seconds "
        f"{POLL_INTERVAL}, {PROJECTS} projects of {SESSIONS:,} sessions\n"
    )
    runs: list[dict[str, dict[str, float]]] = []
    for r in range(rounds):
        runs.append(_round(window))
        print(f"round {r + 1}/{rounds} done (load {load_average()})")
    rows = []
    percent: dict[str, float] = {}
    for name in [EXPORTER, *BARE]:
        cpu = [x[name]["cpu"] for x in runs]
        share = median([x[name]["cpu"] / x[name]["window"] * 100 for x in runs])
        percent[name] = share
        rows.append(
            [
                name,
                f"{median(cpu) * 1000:.0f}",
                f"{share:.2f}",
                f"{median([x[name]['schedstat'] / x[name]['window'] * 100 for x in runs]):.3f}",
                f"{median([x[name]['wakeups'] for x in runs]):.1f}",
                " / ".join(f"{c * 1000:.0f}" for c in cpu),
            ]
        )
    asyncio_name = list(BARE)[1]
    print()
    print(
        table(
            [
                "process",
                "CPU ms in window",
                "CPU %",
                "CPU % (schedstat)",
                "wakeups/s",
                "CPU ms per round",
            ],
            rows,
        )
    )
    print(
        f"\nMedians over {rounds} rounds; CPU is utime+stime from /proc/PID/stat "
        f"(resolution {tick_ms:.0f} ms); schedstat is nanoseconds on CPU of all threads; "
        f"wakeups are context switches of all threads."
    )
    excess = percent[EXPORTER] - percent[asyncio_name]
    outcome = [
        (
            f"idle exporter CPU near zero (under {TARGET_PERCENT} % of one core)",
            percent[EXPORTER] < TARGET_PERCENT,
            f"{percent[EXPORTER]:.2f} % ({excess:+.2f} points over an idle asyncio loop)",
        )
    ]
    for name, met, detail in outcome:
        print(f"target: {name}: {verdict(met)}, {detail}")
    return outcome
