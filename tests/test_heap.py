"""heap: the collector's settings for a daemon whose heap is mostly long-lived state."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from exporter import heap


@pytest.fixture(autouse=True)
def thresholds() -> Iterator[None]:
    """The process's collector thresholds as they were, after each test."""
    before = gc.get_threshold()
    try:
        yield
    finally:
        gc.set_threshold(*before)


def test_tune_collects_the_young_generation_far_less_often() -> None:
    gc.set_threshold(700, 10, 10)
    heap.tune()
    assert gc.get_threshold() == (heap.YOUNG_THRESHOLD, 10, 10)
    gc.set_threshold(50_000, 5, 20)  # rarer already: kept
    heap.tune()
    assert gc.get_threshold() == (50_000, 5, 20)
    gc.set_threshold(0)  # collection switched off: it stays off
    heap.tune()
    assert gc.get_threshold()[0] == 0
