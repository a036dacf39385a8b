"""Pure aggregation: listed session items in, snapshot and new runs out.

No I/O, no clock and no globals live here, so every rule of the metric contract can be
tested with plain data. The one piece of memory, :class:`SessionTracker`, is a plain
object owned by the caller. By job: :mod:`.runs` (one run, and what runs add up to),
:mod:`.tracker` (what each session contributes, between listings) and :mod:`.listing` (one
listing's pass over the pages).
"""

from .listing import Listing, aggregate
from .runs import (
    DURATION_BUCKETS,
    STATUSES,
    TOKEN_BUCKETS,
    Exemplar,
    Histogram,
    PollResult,
    ProjectSnapshot,
    RunTotals,
    RunTuple,
    fingerprint,
    latest,
    newer,
    read_run,
)
from .tracker import ListingState, SavedSession, SessionTracker

__all__ = [
    "DURATION_BUCKETS",
    "STATUSES",
    "TOKEN_BUCKETS",
    "Exemplar",
    "Histogram",
    "Listing",
    "ListingState",
    "PollResult",
    "ProjectSnapshot",
    "RunTotals",
    "RunTuple",
    "SavedSession",
    "SessionTracker",
    "aggregate",
    "fingerprint",
    "latest",
    "newer",
    "read_run",
]
