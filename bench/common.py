"""Shared pieces: /proc readings, the machine, statistics, tables and synthetic sessions.

Child processes (one-shot children, and the simulator and exporter children driven over a
pipe) are in ``bench.peers``."""

from __future__ import annotations

import math
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


class BenchError(RuntimeError):
    """A benchmark could not run (a child failed, a server did not start)."""


# ------------------------------------------------------------------ /proc


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a whole process (every thread), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    # The command name may hold spaces and parentheses: the fields start after the last ")".
    fields = data[data.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes() -> int:
    """Resident set size of this process, from /proc/self/statm."""
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * PAGE_BYTES


def peak_rss_bytes() -> int:
    """VmHWM: the highest resident set size this process reached."""
    with open("/proc/self/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


# ------------------------------------------------------------------ machine


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


def _git(*args: str) -> str:
    """A read-only git query; ``--no-optional-locks`` keeps it from refreshing the index."""
    out = subprocess.run(
        ["git", "--no-optional-locks", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=10,
    )
    return out.stdout.strip()


def _git_revision() -> str:
    try:
        revision = _git("rev-parse", "--short=12", "HEAD") or "unknown"
        changed = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{revision} with uncommitted changes" if changed else revision


def machine_lines() -> list[str]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count() or 0
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"date:        {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        f"nproc:       {usable} (os.cpu_count {os.cpu_count()})",
        f"cpu:         {_cpu_model()}",
        f"memory:      {_mem_total_gib():.1f} GiB",
        f"kernel:      {platform.system()} {platform.release()}",
        f"python:      {platform.python_implementation()} {sys.version.split()[0]}",
        f"packages:    httpx {_version('httpx')}, orjson {_version('orjson')}, "
        f"prometheus-client {_version('prometheus-client')}",
        f"exporter:    {_version('llamacloud-exporter')} at {_git_revision()}",
        f"load:        {load} (1, 5, 15 min)",
    ]


def _mem_total_gib() -> float:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def load_average() -> str:
    return f"{os.getloadavg()[0]:.2f}"


# ------------------------------------------------------------------ statistics and tables


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile: with 200 samples p99 is the second largest."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table: the first column left-aligned, the others right-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
            for i, cell in enumerate(cells)
        ]
        return "| " + " | ".join(parts) + " |"

    rule = "|" + "|".join(
        "-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)
    )
    return "\n".join([line(headers), rule + "|", *(line(row) for row in rows)])


def verdict(met: bool) -> str:
    return "MET" if met else "NOT MET"


Outcome = list[tuple[str, bool, str]]


def print_targets(outcome: Outcome) -> None:
    print("\n## Targets\n")
    for target, met, detail in outcome:
        print(f"- {verdict(met)}: {target}: {detail}")


def standalone(
    name: str, title: str, argv: Sequence[str] | None, measure: Callable[[], Outcome]
) -> int:
    """A benchmark run as ``python -m bench.NAME``: the machine, the command, its targets."""
    print(f"# llamacloud-exporter {title}")
    print()
    for line in machine_lines():
        print(f"    {line}")
    shown = list(argv) if argv is not None else sys.argv[1:]
    print(f"    command:     python -m bench.{name} {' '.join(shown)}".rstrip())
    try:
        outcome = measure()
    except BenchError as exc:
        print(f"\n{name}: could not run: {exc}", file=sys.stderr)
        return 1
    print_targets(outcome)
    return 0


# ------------------------------------------------------------------ synthetic sessions

_TITLES = (
    "What were the main findings in Q3?",
    "Summarize the onboarding handbook",
    "Compare the 2024 and 2025 pricing tables",
    "Which contracts renew in March?",
    None,
)
_ERRORS = (
    "Context length exceeded",
    "Rate limit exceeded by the model provider",
    "Index not found",
)
_INDEXES = ("idx-5f0c3a9e12ab", "idx-0b7d41c2e9f3", "idx-93aa0e6c7d15")


def synthetic_pages(
    count: int, *, page_size: int = 100, seed: int = 0, changed_share: float = 0.0
) -> Iterator[list[dict[str, Any]]]:
    """Pages of API-shaped session items, made on the fly so only one page is alive at a time.

    The same ``seed`` gives the same sessions in the same order; ``changed_share`` of them get a
    different most recent run (as a re-run between two polls would), the rest are identical.
    """
    ids = random.Random(seed).getrandbits
    rng = random.Random(seed + 1)
    rand = rng.random
    change = random.Random(seed + 2).random
    done = 0
    while done < count:
        page: list[dict[str, Any]] = []
        for _ in range(min(page_size, count - done)):
            sid = f"ses-{ids(96):024x}"
            stamp = (
                f"2025-12-{1 + int(rand() * 28):02d}T{int(rand() * 24):02d}:"
                f"{int(rand() * 60):02d}:{int(rand() * 60):02d}.{int(rand() * 1e6):06d}"
            )
            pick = rand()
            job: dict[str, Any] | None = None
            if pick >= 0.15:
                failed = pick > 0.9
                job = {
                    "duration_ms": round(500 + rand() * 20000, 3),
                    "error": _ERRORS[int(rand() * 3)] if failed else None,
                    "export_config_ids": [],
                    "is_error": failed,
                    "total_input_tokens": int(100 + rand() * 5000),
                    "total_output_tokens": int(20 + rand() * 800),
                    "turns": 1 + int(rand() * 12),
                }
                if changed_share and change() < changed_share:
                    job["turns"] += 1
                    job["total_output_tokens"] += 37
            page.append(
                {
                    "session_id": sid,
                    "last_updated_at": stamp,
                    "shared_access": "read_only" if pick < 0.1 else "query",
                    "generated_title": _TITLES[int(rand() * len(_TITLES))] if job else None,
                    "index_ids": None if pick < 0.3 else [_INDEXES[int(rand() * 3)]],
                    "job_metadata": job,
                }
            )
        done += len(page)
        yield page
