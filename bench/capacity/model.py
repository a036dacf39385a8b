"""The capacity model: what a poll costs one exporter process, for any projects x sessions.

Measured at two sizes only (a few large projects, many small ones), so a line per project,
``fixed + per_session x sessions`` seconds of exporter CPU, fit through the two, gives the CPU
of a cycle of any size. A cycle's wall time is at least that CPU (one process, one GIL: about
one core) and at least its latency floor: ``ceil(projects / max_concurrency)`` rounds of one
project's pages, each page the latency plus the exporter's CPU for it. Pages of one project
are read one after another, so a project's full listing cannot beat its pages times the
latency, however many replicas there are. ``bench.capacity.report`` checks the model against
the cycles measured with latency and prints what it predicts, labelled as extrapolated.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from bench.common import median, table
from bench.peers import FULL_LISTING_EVERY, Cycle, Run

INTERVAL = 60.0  # seconds: poll_interval_seconds' default
BUSY = 0.5  # the share of the interval a replica may use, leaving the rest as headroom
PAGE_SIZE = 100  # llamacloud.page_size's default
FULL_EVERY = FULL_LISTING_EVERY  # llamacloud.full_listing_every's default (checked on start)
CONCURRENCY = (4, 16)  # max_concurrency: the default, and a larger one


@dataclasses.dataclass(frozen=True)
class Line:
    """Seconds of exporter CPU per project per poll: ``fixed + per_session * sessions``."""

    fixed: float
    per_session: float

    def at(self, sessions: float) -> float:
        return self.fixed + self.per_session * sessions

    @classmethod
    def through(cls, a: tuple[float, float], b: tuple[float, float]) -> Line:
        """Through two (sessions, seconds) points; a slope or intercept below zero (noise) is
        replaced by the conservative choice: flat at the larger cost, or through the origin."""
        (s1, c1), (s2, c2) = sorted([a, b])
        if s2 == s1:
            return cls(max(c1, c2), 0.0)
        slope = (c2 - c1) / (s2 - s1)
        if slope < 0:
            return cls(max(c1, c2), 0.0)
        fixed = c1 - slope * s1
        if fixed < 0:
            return cls(0.0, max(c1 / s1, c2 / s2))
        return cls(fixed, slope)


@dataclasses.dataclass(frozen=True)
class Model:
    full: Line  # a full listing (listing: full), every page changed
    incremental: Line  # an incremental poll (listing: auto)
    periodic: Line  # auto's periodic full listing
    incremental_requests: float  # requests per incremental poll
    memory_fixed: float  # resident bytes per project
    memory_per_session: float

    @staticmethod
    def full_pages(sessions: float) -> int:
        return max(1, math.ceil(sessions / PAGE_SIZE))

    @staticmethod
    def wall(projects: int, requests: float, cpu: float, concurrency: int, latency: float) -> float:
        """A cycle's wall time: at least its CPU on one core, and at least
        ``ceil(projects / concurrency)`` rounds of one project's requests in turn, each the
        latency plus the exporter's CPU for that page (``cpu`` is per project)."""
        rounds = math.ceil(projects / concurrency)
        return max(projects * cpu, rounds * requests * (latency + cpu / requests))

    def cycles(
        self, projects: int, sessions: float, concurrency: int, latency: float
    ) -> dict[str, float]:
        """CPU and wall seconds of a full-mode cycle and of auto's cycles."""
        full = self.full.at(sessions)
        inc = self.incremental.at(sessions)
        periodic = self.periodic.at(sessions)
        pages = self.full_pages(sessions)
        wall_inc = self.wall(projects, self.incremental_requests, inc, concurrency, latency)
        wall_periodic = self.wall(projects, pages, periodic, concurrency, latency)
        return {
            "full_cpu": projects * full,
            "full_wall": self.wall(projects, pages, full, concurrency, latency),
            "incremental_cpu": projects * inc,
            "incremental_wall": wall_inc,
            "auto_cpu": projects * ((FULL_EVERY - 1) * inc + periodic) / FULL_EVERY,
            "auto_wall": ((FULL_EVERY - 1) * wall_inc + wall_periodic) / FULL_EVERY,
            "auto_peak": wall_periodic,
            "memory": projects * (self.memory_fixed + self.memory_per_session * sessions),
        }

    def fits(
        self, projects: int, sessions: float, concurrency: int, latency: float
    ) -> dict[str, bool]:
        """full: its cycle within BUSY of the interval; auto: on average within BUSY, and the
        interval with the periodic full listings (every project's at once) within the whole;
        incremental: an incremental cycle alone within BUSY."""
        c = self.cycles(projects, sessions, concurrency, latency)
        return {
            "full": c["full_wall"] <= BUSY * INTERVAL,
            "incremental": c["incremental_wall"] <= BUSY * INTERVAL,
            "auto": c["auto_wall"] <= BUSY * INTERVAL and c["auto_peak"] <= INTERVAL,
            "auto_average": c["auto_wall"] <= BUSY * INTERVAL,
        }

    def largest(self, mode: str, sessions: float, concurrency: int, latency: float) -> int:
        """The most projects of ``sessions`` each that fit (0: not even one)."""
        if not self.fits(1, sessions, concurrency, latency)[mode]:
            return 0
        low, high = 1, 2
        while self.fits(high, sessions, concurrency, latency)[mode]:
            low, high = high, high * 2
            if high > 10**8:
                return high
        while high - low > 1:
            mid = (low + high) // 2
            if self.fits(mid, sessions, concurrency, latency)[mode]:
                low = mid
            else:
                high = mid
        return low


def steady_full(run: Run, concurrency: int, latency: float) -> list[Cycle]:
    return [
        c
        for c in run.cycles
        if c["kind"] == "steady"
        and c["concurrency"] == concurrency
        and c["latency"] == latency
        and c["full"] == c["projects"]
    ]


def per_project(cycles: Sequence[Cycle], key: str = "cpu") -> float:
    """Exporter CPU seconds (or another figure) per project, the median over ``cycles``."""
    return median([c[key] / c["projects"] for c in cycles])


def point(cycles: Sequence[Cycle]) -> tuple[float, float]:
    """(sessions per project, CPU seconds per project): one point for :meth:`Line.through`."""
    return median([c["sessions"] / c["projects"] for c in cycles]), per_project(cycles)


def fit(
    runs: dict[str, Run], incremental: dict[str, list[Cycle]], periodic: dict[str, list[Cycle]]
) -> Model:
    """The model, through the two groups' measured costs; printed."""
    full_line = Line.through(
        point(steady_full(runs["full:small"], CONCURRENCY[0], 0.0)),
        point(steady_full(runs["full:large"], CONCURRENCY[0], 0.0)),
    )
    inc_line = Line.through(point(incremental["small"]), point(incremental["large"]))
    periodic_line = Line.through(point(periodic["small"]), point(periodic["large"]))
    inc_requests = max(per_project(cycles, "requests") for cycles in incremental.values())
    # Memory: what each auto exporter's peak added over its start; for both groups
    # added = projects * fixed + sessions * per_session, two equations in two unknowns.
    (p1, n1, m1), (p2, n2, m2) = (
        (
            run.size[0],
            run.cycles[-1]["sessions"],
            max(c["peak_rss"] for c in run.cycles) - run.exporter.ready["rss"],
        )
        for run in (runs["auto:large"], runs["auto:small"])
    )
    det = p1 * n2 - p2 * n1
    mem_fixed = (m1 * n2 - m2 * n1) / det if det else 0.0
    mem_session = (p1 * m2 - p2 * m1) / det if det else m1 / n1
    if mem_fixed < 0 or mem_session < 0:
        mem_fixed, mem_session = 0.0, max(m1 / n1, m2 / n2)
    model = Model(full_line, inc_line, periodic_line, inc_requests, mem_fixed, mem_session)

    print("\n### The model: exporter CPU per project per poll (fit through both groups)\n")
    print(
        table(
            ["poll", "fixed per project", "per session", "at 1,000", "at 100,000"],
            [
                [
                    label,
                    f"{line.fixed * 1000:.2f} ms",
                    f"{line.per_session * 1e6:.2f} µs",
                    f"{line.at(1_000) * 1000:.1f} ms",
                    f"{line.at(100_000) * 1000:,.0f} ms",
                ]
                for label, line in (
                    ("full listing (`listing: full`), every page changed", full_line),
                    ("incremental poll (`listing: auto`)", inc_line),
                    (f"auto's periodic full listing (every {FULL_EVERY}th poll)", periodic_line),
                )
            ],
        )
    )
    print(
        f"\nAn incremental poll makes {inc_requests:.1f} requests (measured); a full listing "
        f"ceil(sessions / {PAGE_SIZE}). Memory (the auto exporters' peak RSS over their start): "
        f"{mem_fixed / 1024:.0f} KiB per project plus {mem_session:.0f} B per session. "
        f"Per interval of {INTERVAL:.0f} s, for P projects of S sessions:\n"
    )
    print(
        "    full:  CPU = P x full(S)\n"
        f"    auto:  CPU = P x ({FULL_EVERY - 1} x incremental(S) + periodic(S)) / {FULL_EVERY} "
        "on average, what a replica sees (the exporter spreads the projects' periodic full "
        "listings over the cycle); the peak, an interval in which every project takes its "
        "periodic full listing (the worst case, measured here), costs P x periodic(S)\n"
        "    wall of a cycle = max(its CPU, ceil(P / max_concurrency) x requests per project x "
        "(latency + CPU per request))\n"
        f"    share of the interval = wall / {INTERVAL:.0f} s"
    )
    return model
