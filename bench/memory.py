"""Resident memory per tracked session: ``SessionTracker`` fed page by page in a fresh process.

Items are made on the fly and dropped a page at a time, as a poll drops them, so what stays
resident is what the tracker keeps (plus whatever the allocator could not give back, which a
long-running exporter pays too). A control run without a tracker shows that residue alone.
"""

from __future__ import annotations

import gc
import sys
from typing import Any

from bench.children import run_child
from bench.common import median, peak_rss_bytes, per_round, rounds_in_turn, rss_bytes, table
from bench.sessions import synthetic_pages
from bench.targets import Outcome, Target, report

TARGET_BYTES = 200
CHANGED_SHARE = 0.02


def _feed(tracker: Any, sessions: int, changed_share: float) -> Any:
    """One listing, each page remembered under a key as the poller remembers page bodies
    (so what the tracker keeps to take an unchanged page unread is counted too)."""
    from exporter.aggregate import Listing

    listing = Listing(tracker, exact=True)  # runs: exact, the default
    for number, page in enumerate(synthetic_pages(sessions, changed_share=changed_share)):
        listing.add(page, (number, changed_share), None)
    return listing.finish()


def _getsizeof_estimate(tracker: Any) -> float | None:
    """sys.getsizeof of the index (dict, keys, values) and the per-slot arrays, per session."""
    index = getattr(tracker, "index", None)
    if not isinstance(index, dict) or not index:
        return None
    getsizeof = sys.getsizeof
    size = getsizeof(index)
    for sid, value in index.items():
        size += getsizeof(sid) + getsizeof(value)
    size += getsizeof(tracker.flags) + getsizeof(tracker._free) + getsizeof(tracker._runs.big)
    size += sum(getsizeof(column) for column in tracker._runs.columns)
    size += getsizeof(tracker._runs.duration) + getsizeof(tracker._runs.odd)
    size += getsizeof(tracker.versions)
    # Exact counting: the sessions waiting for a read, and where counting left off.
    for extra in (tracker.pending, tracker._last, tracker._counted):
        size += getsizeof(extra)
    for page in tracker._pages.values():
        size += getsizeof(page) + getsizeof(page.slots)
    return size / len(index)


def child(params: dict[str, Any]) -> dict[str, Any]:
    from exporter.aggregate import SessionTracker

    sessions = params["sessions"]
    gc.collect()
    before = rss_bytes()
    if not params["tracker"]:
        for _page in synthetic_pages(sessions):
            pass
        for _page in synthetic_pages(sessions, changed_share=CHANGED_SHARE):
            pass
        gc.collect()
        after = rss_bytes()
        return {"before": before, "first": after, "second": after, "peak": peak_rss_bytes()}
    tracker = SessionTracker()
    first = _feed(tracker, sessions, 0.0)
    gc.collect()
    after_first = rss_bytes()
    second = _feed(tracker, sessions, CHANGED_SHARE)
    gc.collect()
    after_second = rss_bytes()
    if len(tracker) != sessions or first.snapshot.sessions != sessions:
        raise RuntimeError(f"tracker holds {len(tracker)} sessions, expected {sessions}")
    return {
        "before": before,
        "first": after_first,
        "second": after_second,
        "peak": peak_rss_bytes(),
        "getsizeof": _getsizeof_estimate(tracker),
        "new_runs": second.new_runs.runs + len(tracker.pending),  # counted or to be read
        "tracked": len(tracker),
    }


def run(*, quick: bool, rounds: int) -> Outcome:
    sessions = 100_000 if quick else 1_000_000
    print(f"\n## Memory: resident bytes per tracked session, {sessions:,} sessions\n")
    runs: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
    for order in rounds_in_turn(rounds, (True, False)):
        for tracker in order:
            params = {"sessions": sessions, "tracker": tracker}
            runs[tracker].append(run_child("memory", params, timeout=900))

    def each(results: list[dict[str, Any]], key: str) -> list[float]:
        return [(x[key] - x["before"]) / sessions for x in results]

    def per_session(results: list[dict[str, Any]], key: str) -> float:
        return median(each(results, key))

    tracked = runs[True]
    first = per_session(tracked, "first")
    second = per_session(tracked, "second")
    control_first = per_session(runs[False], "first")
    control_second = per_session(runs[False], "second")
    estimate = median([x["getsizeof"] for x in tracked if x["getsizeof"] is not None])
    new_runs = median([x["new_runs"] for x in tracked])
    peak = median([(x["peak"] - x["before"]) / sessions for x in tracked])
    rows = [
        [
            "SessionTracker, after the first poll (baseline)",
            f"{first:.1f}",
            f"{first / TARGET_BYTES:.2f}x",
            per_round(each(tracked, "first"), ".1f"),
        ],
        [
            f"SessionTracker, after a second poll ({CHANGED_SHARE:.0%} changed)",
            f"{second:.1f}",
            f"{second / TARGET_BYTES:.2f}x",
            per_round(each(tracked, "second"), ".1f"),
        ],
        [
            "peak during the two polls (VmHWM)",
            f"{peak:.1f}",
            f"{peak / TARGET_BYTES:.2f}x",
            "",
        ],
        [
            "sys.getsizeof estimate (dict + keys + values)",
            f"{estimate:.1f}",
            f"{estimate / TARGET_BYTES:.2f}x",
            "",
        ],
        [
            "control: same pages made and dropped, no tracker",
            f"{max(control_first, control_second):.1f}",
            "",
            per_round(each(runs[False], "second"), ".1f"),
        ],
    ]
    print()
    print(table(["measurement", "bytes/session", f"vs {TARGET_BYTES} B", "per round"], rows))
    print(
        f"\nMedians over {rounds} fresh processes; RSS from /proc/self/statm after gc.collect(). "
        f"The second poll found {new_runs:,.0f} changed sessions (their histories to be read)."
    )
    return report(
        *(
            Target(
                f"tracked session under {TARGET_BYTES} bytes ({when})",
                value < TARGET_BYTES,
                f"{value:.1f} B ({value / TARGET_BYTES:.2f}x the target)",
            )
            for when, value in (("after first poll", first), ("steady state", second))
        )
    )
