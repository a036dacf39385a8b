"""The garbage collector, set for a daemon whose heap is mostly state that lives for hours.

Python's defaults suit programs that make and drop objects in equal measure. Here nearly
everything that survives a poll is a project's tracker, snapshot and rendered lines, held
until the next poll replaces them, while every page parsed and every scrape makes thousands
of objects that reference counting frees at once. With the youngest generation collected
every 700 allocations, the collector ran about 700 times over a steady minute of 300 small
projects, and every few seconds of polls and scrapes a full collection walked every tracker:
57 ms with 1,000 projects, the GIL held throughout, so a scrape under way waited for it (the
slowest scrapes of ``bench.scrape`` were those). Collecting the youngest generation every
:data:`YOUNG_THRESHOLD` allocations makes every collection rarer: about 100 over that minute,
and the full ones too, since the older generations count collections of the younger. What a
collection walks is the same. (Measured on CPython 3.11, whose collector has three
generations; "allocations" are those of objects the collector tracks, less those freed.)
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000  # allocations between collections of the youngest generation


def tune() -> None:
    """Collect the youngest generation every :data:`YOUNG_THRESHOLD` allocations, or as a
    setting made before asks, when that is rarer; collection switched off stays off."""
    young, *older = gc.get_threshold()
    if young:
        gc.set_threshold(max(young, YOUNG_THRESHOLD), *older)
