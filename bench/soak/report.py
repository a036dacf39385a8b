"""The soak's report: its samples over time, their flatness, activity and health, the targets.

Flatness is judged on the quiet samples (no hostile connection open, the last burst closed a
second ago), where a leak cannot hide behind connections that are legitimately open, after a
warm-up: the first tenth after it against the last tenth of the run.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.common import columns, median, percentile, table
from bench.soak.traffic import (
    CYCLE,
    EXCEPTION_LINE,
    HOSTILE_KINDS,
    HOSTILE_PER_KIND,
    POLL_INTERVAL,
    PRODUCTION_INTERVAL,
    PROJECTS,
    STOP_SECONDS,
    Tally,
)
from bench.targets import Outcome, Target, report, verdict

WARMUP_SHARE = 0.2
RSS_RATIO_TARGET = 1.10
COUNT_SLACK = 2  # threads and fds: last window's max at most the first window's max + this


@dataclass(frozen=True)
class Sample:
    """The exporter from /proc at one moment."""

    t: float  # seconds since the soak started
    quiet: bool  # no hostile connection open, the last burst closed a second ago
    rss: int
    threads: int
    fds: int
    cpu: float


@dataclass
class SoakRun:
    """What one soak yields: the samples, the tallies, and how the exporter ended."""

    tally: Tally
    endless: str  # the project whose listing never ends
    configs: list[dict[str, Any]]  # the two configs reloads switch between
    samples: list[Sample]
    wall: float = 0.0
    died: int | None = None  # the exporter's exit code if it died during the run
    stop_code: int | None = None
    stop_seconds: float = math.nan
    exit_log: str = ""


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f}"


def _int(values: Sequence[float]) -> str:
    return "" if not values else f"{median(values):.0f}"


def _max(values: Sequence[int]) -> str:
    return "" if not values else str(max(values))


def simulated_hours(seconds: float) -> float:
    return seconds * PRODUCTION_INTERVAL / POLL_INTERVAL / 3600


Event = tuple[float, dict[str, Any]]  # seconds since the start, a JSON log event


def _polls(out: SoakRun) -> tuple[list[Event], list[Event]]:
    """poll_succeeded and poll_failed events of the exporter's log."""
    events = out.tally.log_events
    ok = [(t, e) for t, e in events if e.get("event") == "poll_succeeded"]
    failed = [(t, e) for t, e in events if e.get("event") in ("poll_failed", "poll_failed_config")]
    return ok, failed


def soak_report(out: SoakRun) -> Outcome:
    """Every table of the soak, then its targets."""
    _over_time(out)
    targets = _flatness(out) + _activity(out)
    print()
    return report(*targets)


def _over_time(out: SoakRun) -> None:
    """One row per tenth of the run."""
    tally = out.tally
    samples = out.samples
    tenth = out.wall / 10
    polls_ok, polls_failed = _polls(out)

    def part(t: float) -> int:
        return min(int(t / tenth), 9) if tenth > 0 else 0

    print("\n### Over time\n")
    parts = []
    for i in range(10):
        these = [s for s in samples if part(s.t) == i]
        scrapes = [x for x in tally.scrapes if part(x.t) == i]
        parts.append(
            {
                "i": i,
                "all": these,
                "quiet": [s for s in these if s.quiet],
                "busy": [s for s in these if not s.quiet],
                "ok": [x.seconds for x in scrapes if x.ok],
                "failed": sum(1 for x in scrapes if not x.ok),
            }
        )

    def cpu(these: list[Sample]) -> str:
        if len(these) < 2 or these[-1].t <= these[0].t:
            return ""
        return f"{(these[-1].cpu - these[0].cpu) / (these[-1].t - these[0].t) * 100:.0f}"

    def quiet(x: dict[str, Any], attr: str) -> str:
        values = [getattr(s, attr) for s in x["quiet"]]
        return f"{_int(values)} / {_max(values)}"

    def when(i: int) -> str:
        return f"{i * tenth:.0f}-{(i + 1) * tenth:.0f} s" + (" (warm-up)" if i < 2 else "")

    spec = [
        ("part of the run", lambda x: when(x["i"])),
        ("RSS MiB", lambda x: _mib(median([s.rss for s in x["all"]])) if x["all"] else ""),
        ("threads quiet med / max", lambda x: quiet(x, "threads")),
        ("threads busy max", lambda x: _max([s.threads for s in x["busy"]])),
        ("fds quiet med / max", lambda x: quiet(x, "fds")),
        ("fds busy max", lambda x: _max([s.fds for s in x["busy"]])),
        ("CPU %", lambda x: cpu(x["all"])),
        ("polls ok", lambda x: str(sum(1 for t, _ in polls_ok if part(t) == x["i"]))),
        ("polls failed", lambda x: str(sum(1 for t, _ in polls_failed if part(t) == x["i"]))),
        ("scrapes ok / failed", lambda x: f"{len(x['ok'])} / {x['failed']}"),
        ("scrape p99 ms", lambda x: f"{percentile(x['ok'], 99) * 1000:.0f}" if x["ok"] else ""),
    ]
    print(columns(spec, parts))
    print(
        f"\nA sample every {CYCLE / 2:.0f} s from /proc/PID: quiet ones a second after a hostile "
        f"burst was closed, busy ones with a burst of "
        f"{HOSTILE_PER_KIND * len(HOSTILE_KINDS)} hostile connections open. RSS is the median "
        "of all samples; CPU is utime+stime of every thread over the part, in % of one core; "
        "polls are poll_succeeded / poll_failed events in the exporter's log (the endless "
        "project fails every poll by design)."
    )


def _flatness(out: SoakRun) -> list[Target]:
    """The first tenth after warm-up against the last tenth, quiet samples only."""
    samples = out.samples
    wall = out.wall
    tenth = wall / 10
    start = wall * WARMUP_SHARE
    first = [s for s in samples if s.quiet and start <= s.t < start + tenth]
    last = [s for s in samples if s.quiet and s.t >= wall - tenth]
    after = [s for s in samples if s.quiet and s.t >= start]
    print(
        f"\n### Flatness: quiet samples, {start:.0f}-{start + tenth:.0f} s against "
        f"{wall - tenth:.0f}-{wall:.0f} s ({len(first)} and {len(last)} samples; the first "
        f"{WARMUP_SHARE:.0%} is warm-up)\n"
    )
    if not first or not last:
        print("too few samples to judge flatness: run longer")
        return [Target("soak: flat RSS, threads and fds", False, "too few samples")]
    targets = []
    rows = []
    for label, attr in (("RSS MiB", "rss"), ("threads", "threads"), ("open fds", "fds")):
        head, tail = [getattr(s, attr) for s in first], [getattr(s, attr) for s in last]
        ratio = median(tail) / median(head)
        if attr == "rss":
            met = ratio <= RSS_RATIO_TARGET
            rule = f"median ratio <= {RSS_RATIO_TARGET:.2f}"
            show_median, show_max = _mib, _mib
            target = Target(
                f"soak: RSS flat (last/first median <= {RSS_RATIO_TARGET:.2f}x)",
                met,
                f"{ratio:.2f}x ({_mib(median(head))} -> {_mib(median(tail))} MiB)",
            )
        else:
            met = max(tail) <= max(head) + COUNT_SLACK
            rule = f"last max <= first max + {COUNT_SLACK}"
            show_median, show_max = (lambda v: f"{v:.0f}"), str
            target = Target(
                f"soak: {label} flat ({rule})",
                met,
                f"{max(head)} -> {max(tail)} (quiet samples; "
                f"{max(getattr(s, attr) for s in after)} at most after warm-up)",
            )
        medians = [show_median(median(head)), show_median(median(tail)), f"{ratio:.2f}x"]
        whole = max(getattr(s, attr) for s in samples)
        most = [show_max(max(head)), show_max(max(tail)), show_max(whole)]
        rows.append([label, *medians, *most, rule, verdict(met)])
        targets.append(target)
    headers = ["measure", "first median", "last median", "ratio", "first max", "last max"]
    print(table([*headers, "max of run (busy too)", "target", "status"], rows))
    return targets


def _activity(out: SoakRun) -> list[Target]:
    """What happened during the run, and the health targets."""
    tally = out.tally
    wall = out.wall
    tenth = wall / 10
    events = tally.log_events
    polls_ok, polls_failed = _polls(out)
    reasons: Counter[str] = Counter()
    endless_reasons: Counter[str] = Counter()
    for _, e in polls_failed:
        (endless_reasons if e.get("project_id") == out.endless else reasons)[
            str(e.get("reason"))
        ] += 1
    regular_ok = [e for _, e in polls_ok if e.get("project_id") != out.endless]
    per_project = Counter(str(e.get("project_id")) for e in regular_ok)
    tail_ok = {str(e.get("project_id")) for t, e in polls_ok if t >= wall - tenth}
    final = out.configs[sum(tally.reload_sent.values()) % 2]
    final_regular = [p["id"] for p in final["projects"] if p["id"] != out.endless]
    stalled = [pid for pid in final_regular if pid not in tail_ok]
    scrapes_ok = [x for x in tally.scrapes if x.ok]
    scrape_failed = len(tally.scrapes) - len(scrapes_ok)
    errors = [e for _, e in events if e.get("level") in ("error", "critical")]
    warnings = [e for _, e in events if e.get("level") == "warning"]
    error_kinds = Counter(str(e.get("event")) for e in errors)
    with_exception = [e for _, e in events if "exception" in e or "exc_info" in e]
    reloaded = sum(1 for _, e in events if e.get("event") == "config_reloaded")
    reload_failed = sum(1 for _, e in events if e.get("event") == "config_reload_failed")
    hours = simulated_hours(wall)
    attempts = len(polls_ok) + len(polls_failed)
    per_project_attempts = attempts / PROJECTS if attempts else 0.0
    lat = [x.seconds for x in scrapes_ok]
    lat_busy = [x.seconds for x in scrapes_ok if x.busy]
    lat_quiet = [x.seconds for x in scrapes_ok if not x.busy]
    slow = [x for x in tally.scrapes if x.seconds > 0.5]
    connects = [x.connect for x in tally.scrapes if math.isfinite(x.connect)]

    def spread(values: Sequence[float]) -> str:
        if not values:
            return "none"
        return (
            f"median {median(values) * 1000:.1f}, p99 {percentile(values, 99) * 1000:.1f}, "
            f"max {max(values) * 1000:.1f} ({len(values)})"
        )

    def counts(c: Counter[str]) -> str:
        return ", ".join(f"{k} {v}" for k, v in c.most_common()) or "none"

    rows = {
        "wall time": (
            f"{wall:.0f} s = {hours:.1f} simulated hours "
            f"(poll_interval_seconds {POLL_INTERVAL} standing in for {PRODUCTION_INTERVAL:.0f}, "
            f"{PRODUCTION_INTERVAL / POLL_INTERVAL:.0f}x)"
        ),
        "poll attempts": (
            f"{attempts:,} ({per_project_attempts:,.0f} per project: "
            f"{per_project_attempts * PRODUCTION_INTERVAL / 3600:.1f} h of 60 s polls)"
        ),
        "polls succeeded (log)": (
            f"{len(polls_ok):,}; per regular project min {min(per_project.values(), default=0)}, "
            f"max {max(per_project.values(), default=0)} (project-1 is configured half the time)"
        ),
        "successful polls seen moving in scrapes": f"{tally.polls_seen:,}",
        "polls failed, regular projects, by reason": counts(reasons),
        "polls failed, endless project, by reason": counts(endless_reasons),
        "scrapes": (
            f"{len(tally.scrapes):,} done, {scrape_failed} failed"
            + (f" ({counts(tally.scrape_failures)})" if scrape_failed else "")
        ),
        "scrape latency ms": spread(lat),
        "scrape latency ms, during a hostile burst": spread(lat_busy),
        "scrape latency ms, between bursts": spread(lat_quiet),
        "scrapes slower than 0.5 s": (
            f"{len(slow)}, of which {sum(1 for x in slow if x.connect > 0.5)} waited over 0.5 s "
            f"to connect (max connect {max(connects, default=0) * 1000:.0f} ms)"
        ),
        "NaN or Inf sample values": str(tally.non_finite),
        "API requests by code (llamacloud_api_requests_total, last scrape)": (
            ", ".join(f"{k} {v:,.0f}" for k, v in sorted(tally.api_requests.items()))
        ),
        "reloads sent": (
            f"{counts(tally.reload_sent)}; POST failures {tally.reload_post_failures}; "
            f"config_reloaded events {reloaded}, config_reload_failed {reload_failed}"
        ),
        "project set in /metrics not the configured one, 10 s after a reload": (
            str(tally.project_mismatch)
        ),
        "hostile connections": (
            f"{sum(tally.hostile_opened.values()):,} opened ({counts(tally.hostile_opened)}); "
            f"{tally.hostile_connect_failures} could not connect; connect ms "
            f"{spread(tally.hostile_connect)}"
        ),
        "exporter log": (
            f"{tally.log_lines:,} lines; error events: {counts(error_kinds)}; "
            f"{len(warnings):,} warnings; {len(with_exception)} with an exception; "
            f"{tally.non_json:,} not JSON; {tally.tracebacks} with 'Traceback'"
        ),
        "exporter during the run": (
            "alive throughout" if out.died is None else f"EXITED with code {out.died}"
        ),
        "SIGTERM at the end": (
            "not sent (the exporter had died)"
            if out.died is not None
            else f"exit code {out.stop_code} after {out.stop_seconds:.1f} s"
            if out.stop_code is not None
            else f"still running after {STOP_SECONDS:.0f} s (killed)"
        ),
    }
    print("\n### Activity and health\n")
    print(table(["what", "value"], list(rows.items())))
    if tally.first:
        print()
    for what, text in tally.first.items():
        print(f"{what}: {text}")
    if stalled:
        print(f"regular projects with no successful poll in the last tenth: {', '.join(stalled)}")
    if tally.non_json:
        _print_non_json(tally)
    shown = [e for e in errors if e not in with_exception] + with_exception
    if shown:
        print(f"\nError events and events with an exception ({len(shown)}; the first 5):\n")
    for e in shown[:5]:
        print(f"    {_brief(e)}")
    if out.exit_log:
        print(f"\nthe end of the exporter's log:\n{out.exit_log}")

    stopped_ok = out.died is None and out.stop_code == 0 and out.stop_seconds <= STOP_SECONDS
    return [
        Target(
            f"soak: the exporter stayed up and exits 0 on SIGTERM within {STOP_SECONDS:.0f} s",
            stopped_ok,
            "died during the run"
            if out.died is not None
            else f"exit code {out.stop_code} after {out.stop_seconds:.1f} s",
        ),
        Target(
            "soak: every scrape answered and parsed, no NaN or Inf",
            scrape_failed == 0 and tally.non_finite == 0 and bool(tally.scrapes),
            f"{len(tally.scrapes):,} scrapes, {scrape_failed} failed, "
            f"{tally.non_finite} non-finite values",
        ),
        Target(
            "soak: polling kept going (every regular project polled OK in the last tenth)",
            not stalled,
            f"{len(final_regular) - len(stalled)} of {len(final_regular)}",
        ),
        Target(
            "soak: no traceback in the exporter's log",
            tally.tracebacks == 0 and not with_exception,
            f"{tally.tracebacks} lines with 'Traceback', {len(with_exception)} events with "
            "an exception",
        ),
    ]


def _print_non_json(tally: Tally) -> None:
    """What the exporter wrote outside its JSON log: exception kinds and the first traceback."""
    lines = tally.non_json_kept
    banners = sum(1 for line in lines if line.startswith("Exception occurred during processing"))
    kinds = ", ".join(f"{k} x{v}" for k, v in tally.exceptions.most_common()) or "none"
    print(
        f"\nThe exporter wrote {tally.non_json:,} lines that are not JSON; exception lines "
        f"among them: {kinds}. The first traceback"
        + (
            f" ({banners} socketserver 'Exception occurred during processing of request'"
            f" banners in the first {len(lines)} lines)"
            if banners
            else ""
        )
        + ", threads may interleave their lines:\n"
    )
    start = next((i for i, line in enumerate(lines) if line.startswith("Traceback")), 0)
    for line in lines[start : start + 20]:
        print(f"    {line}")
        if EXCEPTION_LINE.match(line):
            break


def _brief(event: dict[str, Any]) -> str:
    """A log event on one line: its fields, and an exception's type, value and last frame."""
    fields = {k: v for k, v in event.items() if k not in ("exception", "timestamp")}
    text = json.dumps(fields)
    for exc in event.get("exception") or []:
        if isinstance(exc, dict):
            frames = exc.get("frames") or [{}]
            last = frames[-1] if isinstance(frames[-1], dict) else {}
            text += (
                f"; {exc.get('exc_type')}: {exc.get('exc_value')} at "
                f"{last.get('filename')}:{last.get('lineno')} in {last.get('name')}"
            )
    return text[:600]
