"""What every benchmark shares: /proc readings, the machine, rounds, statistics and tables.

Targets are declared with ``bench.targets``; child processes are started and driven by
``bench.children``; synthetic sessions are made by ``bench.sessions``.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

REPO_ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
T = TypeVar("T")


class BenchError(RuntimeError):
    """A benchmark could not run (a child failed, a server did not start)."""


# ------------------------------------------------------------------ /proc


def proc_cpu_seconds(pid: int | str = "self") -> float:
    """utime + stime of a whole process (every thread), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    # The command name may hold spaces and parentheses: the fields start after the last ")".
    fields = data[data.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size of a process, from /proc/PID/statm."""
    with open(f"/proc/{pid}/statm", "rb") as f:
        return int(f.read().split()[1]) * PAGE_BYTES


def proc_kib_field(path: str, key: str) -> int:
    """A ``Key:  N kB`` line of a /proc file, in bytes; 0 when it is missing or unreadable."""
    prefix = key.encode() + b":"
    try:
        with open(path, "rb") as f:
            for line in f:
                if line.startswith(prefix):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def peak_rss_bytes() -> int:
    """VmHWM: the highest resident set size this process reached."""
    return proc_kib_field("/proc/self/status", "VmHWM")


def load_average() -> str:
    return f"{os.getloadavg()[0]:.2f}"


# ------------------------------------------------------------------ the machine


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(module: str) -> str:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return "not installed"


def _git_revision() -> str:
    """HEAD, and whether tracked files changed; ``--no-optional-locks`` leaves the index be."""

    def git(*args: str) -> str:
        cmd = ["git", "--no-optional-locks", *args]
        return subprocess.run(
            cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()

    try:
        revision = git("rev-parse", "--short=12", "HEAD") or "unknown"
        changed = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{revision} with uncommitted changes" if changed else revision


def header(title: str, command: str) -> None:
    """The title, the machine and the command, so every output says where it came from."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count() or 0
    memory = proc_kib_field("/proc/meminfo", "MemTotal") / 2**30
    lines = [
        f"date:        {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        f"nproc:       {usable} (os.cpu_count {os.cpu_count()})",
        f"cpu:         {_cpu_model()}",
        f"memory:      {memory:.1f} GiB",
        f"kernel:      {platform.system()} {platform.release()}",
        f"python:      {platform.python_implementation()} {sys.version.split()[0]}",
        f"packages:    httpx {_version('httpx')}, orjson {_version('orjson')}, "
        f"prometheus-client {_version('prometheus-client')}",
        f"exporter:    {_version('llamacloud-exporter')} at {_git_revision()}",
        f"load:        {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1, 5, 15 min)",
        f"command:     {command}".rstrip(),
    ]
    print(f"# llamacloud-exporter {title}\n")
    for line in lines:
        print(f"    {line}")
    sys.stdout.flush()


# ------------------------------------------------------------------ rounds and statistics


def rounds_in_turn(rounds: int, kinds: Sequence[T]) -> Iterator[list[T]]:
    """Each round's order of ``kinds``: as given, then reversed, in turn, so neither a baseline
    nor its subject always runs first; ``round N/R done (load L)`` after each round."""
    for r in range(rounds):
        yield list(kinds) if r % 2 == 0 else list(kinds)[::-1]
        print(f"round {r + 1}/{rounds} done (load {load_average()})")
        sys.stdout.flush()


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile: with 200 samples p99 is the second largest."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def per_round(values: Sequence[float], fmt: str = ".2f") -> str:
    """Each round's value beside the median, so the spread is visible: ``1.20 / 1.31``."""
    return " / ".join(format(v, fmt) for v in values)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table: the first column left-aligned, the others right-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        parts = [c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(cells)]
        return "| " + " | ".join(parts) + " |"

    rule = "|" + "|".join(
        "-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)
    )
    return "\n".join([line(headers), rule + "|", *(line(row) for row in rows)])


def columns(spec: Sequence[tuple[str, Callable[[T], str]]], items: Iterable[T]) -> str:
    """A :func:`table` with a row per item and a column per (header, the item's cell), so a
    column's header and how its figure is printed sit on one line."""
    return table([header for header, _ in spec], [[cell(x) for _, cell in spec] for x in items])
