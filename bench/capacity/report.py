"""What the capacity benchmark prints: measured tables, the model's check, extrapolations.

The measured tables, the model against the cycles measured with latency, the extrapolated
tables (each titled so), the headline and the targets.

Measured and extrapolated figures never share a table: the model leaves out loopback and GIL
waits, so whatever it predicts is a little optimistic, and the reader must see which is which.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from bench.capacity.model import (
    BUSY,
    CONCURRENCY,
    FULL_EVERY,
    INTERVAL,
    PAGE_SIZE,
    Model,
    per_project,
    steady_full,
)
from bench.common import BenchError, columns, median, table
from bench.peers import Cycle, Run
from bench.targets import Outcome, Target, report

# The model must reproduce each cycle measured with latency this well, or within MODEL_SLACK
# seconds: a cycle of a fraction of a second is all fixed costs, and what matters is the
# share of the interval.
MODEL_TOLERANCE = 0.25
MODEL_SLACK = 0.01 * INTERVAL
# The extrapolated table: every pair of these.
GRID_PROJECTS = (10, 50, 100, 500, 1_000, 5_000)
GRID_SESSIONS = (1_000, 10_000, 100_000)
LARGEST_SESSIONS = (100, 1_000, 10_000, 100_000, 1_000_000)
TARGET = (100, 100_000)  # bench.incremental's target size


def ms_text(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds else "0"


def share_text(seconds: float) -> str:
    share = seconds / INTERVAL
    if share >= 10:
        return f"{share:.0f}x"
    return f"{share:.0%}" if share < 1 else f"{share:.1f}x"


def count_text(n: float) -> str:
    if n >= 1e6:
        return f"{n / 1e6:g}M"
    return f"{n:,.0f}"


def mib_text(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def size_text(size: tuple[int, int]) -> str:
    return f"{size[0]:,} x {size[1]:,}"


# The settings a measured cycle ran at: the first columns of every table of cycles.
SETTINGS = [
    ("max_concurrency", lambda c: str(c["concurrency"])),
    ("latency", lambda c: ms_text(c["latency"])),
]


@dataclasses.dataclass(frozen=True)
class FullListings:
    """What the full listings of the large group measured (latency 0 unless said)."""

    us: float  # exporter CPU per session, steady state, every page changed
    first_us: float  # the first listing after a start
    rate: dict[int, float]  # sessions/s, by max_concurrency
    rate_latency: dict[int, float]  # sessions/s with latency, by max_concurrency


def report_full(runs: dict[str, Run], bare_us: float, latency: float) -> FullListings:
    print("\n### Measured: full listings (`listing: full`)\n")
    spec = [
        ("projects x sessions: cycle", lambda c: f"{size_text(c['size'])}: {c['kind']}"),
        *SETTINGS,
        ("requests", lambda c: f"{c['requests']:,}"),
        ("sessions", lambda c: f"{c['sessions']:,}"),
        ("wall s", lambda c: f"{c['wall']:.2f}"),
        ("exporter CPU s", lambda c: f"{c['cpu']:.2f}"),
        ("simulator CPU s", lambda c: f"{c['sim_cpu']:.2f}"),
        ("sessions/s", lambda c: f"{c['sessions'] / c['wall']:,.0f}"),
        ("CPU µs/session", lambda c: f"{c['cpu'] * 1e6 / c['sessions']:.1f}"),
        ("cores used", lambda c: f"{c['cpu'] / c['wall']:.2f}"),
    ]
    runs_full = [runs["full:large"], runs["full:small"]]
    print(columns(spec, [{**c, "size": r.size} for r in runs_full for c in r.cycles]))
    large = runs["full:large"]
    steady = {c: steady_full(large, c, 0.0) for c in CONCURRENCY}
    us = median([x["cpu"] * 1e6 / x["sessions"] for x in steady[CONCURRENCY[0]]])
    first = large.cycles[0]
    unchanged = [c for c in large.cycles if c["kind"] == "nothing changed"]
    print(
        f"\nBaseline (same run): a bare httpx.Client + json.loads loop over the large projects "
        f"costs {bare_us:.1f} µs of CPU per session; the exporter's steady-state full listing "
        f"{us:.1f} µs ({us / bare_us:.2f}x the bare loop)"
        + (
            f", {unchanged[0]['cpu'] * 1e6 / unchanged[0]['sessions']:.1f} µs when nothing "
            "changed (page bodies taken unparsed)"
            if unchanged
            else ""
        )
        + ". Without latency the exporter and the simulator each run on a core of their own, "
        "so wall rates there are the pair's; the capacity figures below count the exporter's "
        "CPU only."
    )
    return FullListings(
        us=us,
        first_us=first["cpu"] * 1e6 / first["sessions"],
        rate={c: median([x["sessions"] / x["wall"] for x in steady[c]]) for c in CONCURRENCY},
        rate_latency={
            c: median([x["sessions"] / x["wall"] for x in steady_full(large, c, latency)])
            for c in CONCURRENCY
        },
    )


def report_auto(runs: dict[str, Run]) -> tuple[dict[str, list[Cycle]], dict[str, list[Cycle]]]:
    """The auto exporters' cycles; by group, the incremental ones and the periodic full one."""
    print("\n### Measured: incremental listings (`listing: auto`, the default)\n")
    rows: list[dict[str, Any]] = []
    incremental: dict[str, list[Cycle]] = {}
    periodic: dict[str, list[Cycle]] = {}
    for group in ("large", "small"):
        r = runs[f"auto:{group}"]
        steady = [c for c in r.cycles if c["kind"] == "steady" and c["latency"] == 0.0]
        incremental[group] = [c for c in steady if c["incremental"] == c["projects"]]
        periodic[group] = [c for c in steady if c["full"] == c["projects"]]
        mixed = [c for c in steady if 0 < c["incremental"] < c["projects"]]
        if not incremental[group] or not periodic[group]:
            raise BenchError(
                f"auto over {group}: expected incremental cycles and one periodic full listing, "
                f"got (incremental, full) {[(c['incremental'], c['full']) for c in steady]} "
                "(the projects' ids all have phase 0 by bench.peers.listing_phase: does it "
                "still mirror exporter/poller.py?)"
            )
        labelled: list[tuple[str, list[Cycle]]] = [
            ("first listing", [r.cycles[0]]),
            (f"incremental (median of {len(incremental[group])})", incremental[group]),
            (f"periodic full listing (poll {FULL_EVERY + 1})", periodic[group]),
        ]
        if mixed:
            labelled.append((f"mixed incremental and full ({len(mixed)})", mixed))
        labelled += [("incremental", [c]) for c in r.cycles if c["latency"] > 0]
        rows += [
            {**cs[0], "label": f"{size_text(r.size)}: {label}", "all": cs} for label, cs in labelled
        ]

    def mid(key: str, row: dict[str, Any], fmt: str) -> str:
        return format(median([c[key] for c in row["all"]]), fmt)

    spec = [
        ("projects x sessions: cycle", lambda row: row["label"]),
        *SETTINGS,
        ("requests per project", lambda row: f"{per_project(row['all'], 'requests'):.1f}"),
        ("wall s", lambda row: mid("wall", row, ".2f")),
        ("exporter CPU s", lambda row: mid("cpu", row, ".3f")),
        ("CPU ms per project", lambda row: f"{per_project(row['all']) * 1000:.2f}"),
        ("simulator CPU s", lambda row: mid("sim_cpu", row, ".2f")),
    ]
    print(columns(spec, rows))
    print(
        "\nThe incremental cycles' exporter CPU, min to max: "
        + "; ".join(
            f"{size_text(runs[f'auto:{g}'].size)}: {min(c['cpu'] for c in v):.3f}-"
            f"{max(c['cpu'] for c in v):.3f} s"
            for g, v in incremental.items()
        )
        + "."
    )
    return incremental, periodic


def check_model(runs: dict[str, Run]) -> tuple[int, int, str]:
    """The model's wall time against every cycle measured with latency: (cycles, how many
    are off by more than MODEL_TOLERANCE and MODEL_SLACK, the worst as text)."""
    checks = []
    for r in runs.values():
        for c in r.cycles:
            if not c["latency"] or c["kind"] != "steady":
                continue
            # The simulator's CPU per request is part of the latency a client sees from it.
            seen = c["latency"] + c["sim_cpu"] / c["requests"]
            per = c["projects"]
            predicted = Model.wall(per, c["requests"] / per, c["cpu"] / per, c["concurrency"], seen)
            name = f"{r.mode} over {size_text(r.size)}"
            checks.append({**c, "name": name, "predicted": predicted})
    print("\n### The model against the cycles measured with latency\n")
    print(
        "Given each cycle's measured CPU and requests, and the latency it saw (the simulator's "
        "sleep plus its CPU per request), the model predicts its wall time:\n"
    )
    spec = [
        ("exporter: cycle", lambda c: c["name"] + (" (incremental)" if c["incremental"] else "")),
        *SETTINGS,
        ("measured wall s", lambda c: f"{c['wall']:.2f}"),
        ("model s", lambda c: f"{c['predicted']:.2f}"),
        ("off", lambda c: f"{c['predicted'] / c['wall'] - 1:+.0%}"),
    ]
    print(columns(spec, checks))
    off = [abs(c["predicted"] / c["wall"] - 1) for c in checks]
    bad = [
        c
        for c, rel in zip(checks, off, strict=True)
        if rel > MODEL_TOLERANCE and abs(c["predicted"] - c["wall"]) > MODEL_SLACK
    ]
    w = checks[off.index(max(off))]
    worst = (
        f"worst {w['predicted'] / w['wall'] - 1:+.0%} ({w['wall']:.2f} s measured, "
        f"{w['predicted']:.2f} s predicted, {w['name']})"
    )
    short = sum(1 for c in checks if c["wall"] < 1)
    print(
        f"\nThe model leaves out the time a request spends in the client and on loopback and "
        f"the wait for the GIL among lanes, so it predicts a little less than measured: read "
        f"the extrapolated shares below as that much optimistic. {short} of the cycles took "
        f"under a second; there fixed costs dominate."
    )
    return len(checks), len(bad), worst


def report_grid(
    model: Model, large: tuple[int, int], small: tuple[int, int], latency: float
) -> None:
    c_lo, c_hi = CONCURRENCY
    print(
        f"\n### Extrapolated: share of a {INTERVAL:.0f} s interval, by projects x sessions "
        f"per project\n"
    )
    print(
        f"From the model, not measured (the measured sizes were {size_text(large)} and "
        f'{size_text(small)}). "CPU": the exporter\'s CPU per interval over one core (one process '
        f'cannot use more: the GIL). "cycle": a cycle\'s wall time at {ms_text(latency)} per '
        f'request, over the interval. auto: averaged over {FULL_EVERY} polls; its "peak" is the '
        "interval in which every project takes its periodic full listing, the worst case this "
        "benchmark measures (its projects' ids all have one full-listing phase). Since b303ab8 "
        "the exporter spreads the projects' periodic full listings over the cycle (a phase "
        "from a hash of each id), so the average, not the peak, is what a real replica sees. "
        "Over 100 % the polls run late.\n"
    )
    sizes = [(p, s) for p in GRID_PROJECTS for s in GRID_SESSIONS]
    at = {(p, s, c): model.cycles(p, s, c, latency) for p, s in sizes for c in CONCURRENCY}
    spec = [
        ("projects x sessions", lambda ps: f"{ps[0]:,} x {ps[1]:,}"),
        ("sessions", lambda ps: count_text(ps[0] * ps[1])),
        ("full: CPU", lambda ps: share_text(at[(*ps, c_lo)]["full_cpu"])),
        (f"full: cycle, c {c_lo}", lambda ps: share_text(at[(*ps, c_lo)]["full_wall"])),
        (f"full: cycle, c {c_hi}", lambda ps: share_text(at[(*ps, c_hi)]["full_wall"])),
        ("auto: CPU", lambda ps: share_text(at[(*ps, c_lo)]["auto_cpu"])),
        (f"auto: cycle, c {c_lo}", lambda ps: share_text(at[(*ps, c_lo)]["auto_wall"])),
        (f"auto: cycle, c {c_hi}", lambda ps: share_text(at[(*ps, c_hi)]["auto_wall"])),
        (f"auto: peak, c {c_hi}", lambda ps: share_text(at[(*ps, c_hi)]["auto_peak"])),
        ("exporter RSS", lambda ps: mib_text(at[(*ps, c_lo)]["memory"])),
    ]
    print(columns(spec, sizes))
    print(
        f"\n(c N: max_concurrency N. exporter RSS: what the polls add, a rough estimate from "
        f"the measured {model.memory_per_session:.0f} B per session and "
        f"{model.memory_fixed / 1024:.0f} KiB per project: peak RSS, pages in flight included; "
        "bench.memory measures the tracker alone.)"
    )


def _settings(latency: float) -> list[tuple[int, float, str]]:
    c_lo, c_hi = CONCURRENCY
    return [
        (c_lo, latency, f"c {c_lo}, {ms_text(latency)}"),
        (c_hi, latency, f"c {c_hi}, {ms_text(latency)}"),
        (c_hi, 0.0, f"c {c_hi}, no latency"),
    ]


def report_largest(model: Model, latency: float) -> float:
    """The most projects that fit, by project size; returns the largest project a full
    listing reads within BUSY of the interval at ``latency``."""
    print(f"\n### Extrapolated: the most projects one replica polls within {BUSY:.0%} busy\n")
    print(
        f"full: a cycle within {BUSY:.0%} of the interval. auto: on average within "
        f"{BUSY:.0%}, and its peak interval (every periodic full listing at once, the worst "
        "case) within 100 %; in brackets, on average alone, which is what a real replica sees "
        'since b303ab8 spread the periodic full listings over the cycle. "no latency" is the '
        "exporter's CPU alone: an API that answers at once.\n"
    )
    settings = _settings(latency)
    rows = []
    for sessions in LARGEST_SESSIONS:
        row = [f"{sessions:,}"]
        row += [f"{model.largest('full', sessions, c, lat):,}" for c, lat, _ in settings]
        row += [
            f"{model.largest('auto', sessions, c, lat):,} "
            f"({model.largest('auto_average', sessions, c, lat):,})"
            for c, lat, _ in settings
        ]
        rows.append(row)
    print(
        table(
            ["sessions per project"]
            + [f"full: {name}" for _, _, name in settings]
            + [f"auto: {name}" for _, _, name in settings],
            rows,
        )
    )
    per_request = latency + model.full.per_session * PAGE_SIZE
    single = BUSY * INTERVAL / per_request * PAGE_SIZE
    print(
        f"\nOne project's pages are read one after another: at {ms_text(latency)} a full listing "
        f"of more than about {_round(single)} sessions takes over {BUSY:.0%} of the interval "
        f"(over {_round(2 * single)}: the whole of it), whatever the number of replicas; "
        "sharding splits projects, not a project's listing (in auto, this is its periodic full "
        "listing). A larger page_size (up to 1,000) is the lever there; not measured here."
    )
    return single


def _round(n: float) -> str:
    """Two significant figures: extrapolated, so no more."""
    digits = max(math.floor(math.log10(n)) - 1, 0) if n > 0 else 0
    return f"{round(n, -digits):,.0f}"


def report_headline(model: Model, full: FullListings, latency: float, single: float) -> list[str]:
    c_lo, c_hi = CONCURRENCY
    settings = _settings(latency)

    def most(mode: str, c: int, lat: float) -> tuple[int, int]:
        """(projects, sessions each) with the most sessions in all, over the sizes tried."""
        return max(
            ((model.largest(mode, s, c, lat), s) for s in LARGEST_SESSIONS),
            key=lambda ps: ps[0] * ps[1],
        )

    covered = []
    for c, lat, name in settings:
        p, s = most("full", c, lat)
        covered.append(f"{count_text(p * s)} sessions ({p:,} projects of {s:,}) at {name}")
    inc_10k = model.incremental.at(10_000)
    amortised = ((FULL_EVERY - 1) * inc_10k + model.periodic.at(10_000)) / FULL_EVERY
    auto = {name: model.largest("auto", 10_000, c, lat) for c, lat, name in settings}
    inc_only = {name: model.largest("incremental", 10_000, c, lat) for c, lat, name in settings}
    lo = settings[0][2]
    full_10k = model.largest("full", 10_000, c_lo, latency)
    lines = [
        f"Full listings, measured: {full.rate[c_lo]:,.0f} sessions/s at max_concurrency {c_lo} "
        f"and {full.rate[c_hi]:,.0f} at {c_hi} with no latency (the simulator on the other "
        f"core); the exporter's CPU alone allows {1e6 / full.us:,.0f} sessions/s "
        f"({full.us:.1f} µs each; {full.first_us:.1f} µs in the first listing after a start). "
        f"With {ms_text(latency)} per request: "
        + ", ".join(f"{full.rate_latency[c]:,.0f} sessions/s at {c}" for c in CONCURRENCY)
        + ".",
        f"A `listing: full` replica covers within {BUSY:.0%} of a {INTERVAL:.0f} s interval "
        "(extrapolated; the best of the project sizes tried): " + "; ".join(covered) + ".",
        f"Incremental polls alone (`listing: auto`, steady state; extrapolated): "
        f"{inc_10k * 1000:.1f} ms of CPU and {model.incremental_requests:.1f} requests per "
        f"project, so within {BUSY:.0%} of the interval "
        + ", ".join(f"{n:,} projects at {name}" for name, n in inc_only.items())
        + ".",
        f"With the periodic full listing every {FULL_EVERY} polls, projects of 10,000 sessions "
        f"(extrapolated): {amortised * 1000:.0f} ms of CPU per project per poll on average; "
        + ", ".join(f"{n:,} projects at {name}" for name, n in auto.items())
        + " with the periodic full listings on time even if every project's falls in one "
        "interval (the worst case, measured here); "
        f"{model.largest('auto_average', 10_000, c_lo, latency):,} at {lo} on average. Since "
        "b303ab8 the exporter spreads the projects' periodic full listings over the cycle (a "
        "phase from a hash of each id), so the average, not the peak, is what a real replica "
        "sees.",
        f"Shard (at {lo}): `listing: full` past {full_10k:,} projects of 10,000 sessions "
        f"({count_text(full_10k * 10_000)} sessions); `listing: auto` past {auto[lo]:,} "
        f"projects of 10,000 or {model.largest('auto', 1_000, c_lo, latency):,} of 1,000 (the "
        "worst case, every periodic full listing in one interval). Where "
        "the cycle, not the CPU, runs out, a larger max_concurrency does what a shard would (if "
        "the API's rate limit allows). No number of replicas helps a single project of more than "
        f"{_round(single)} sessions in full listings.",
    ]
    print("\n### Headline\n")
    for line in lines:
        print(f"- {line}")
    return lines


def report_targets(model: Model, checked: tuple[int, int, str], latency: float) -> Outcome:
    count, bad, worst = checked
    c_hi = CONCURRENCY[1]
    tp, ts = TARGET
    at_target = model.cycles(tp, ts, c_hi, latency)
    return report(
        Target(
            f"the model reproduces every cycle measured with latency within "
            f"{MODEL_TOLERANCE:.0%} (or {MODEL_SLACK:.1f} s)",
            bad == 0,
            f"{count - bad} of {count}; {worst}",
        ),
        Target(
            f"one replica polls bench.incremental's target size ({tp} x {ts:,}) with listing "
            f"auto within {BUSY:.0%} of the interval on average (max_concurrency {c_hi}, "
            f"{ms_text(latency)}; extrapolated)",
            at_target["auto_wall"] <= BUSY * INTERVAL,
            f"{share_text(at_target['auto_wall'])} ({share_text(at_target['auto_cpu'])} of a core)",
        ),
        Target(
            "... and its periodic full listings of the target size finish within the "
            f"interval even when all fall in one (the worst case; max_concurrency {c_hi}, "
            f"{ms_text(latency)}; extrapolated)",
            at_target["auto_peak"] <= INTERVAL,
            f"{at_target['auto_peak']:.0f} s, {share_text(at_target['auto_peak'])} of the interval",
        ),
    )
