"""A listing past 65,536 distinct index sets, where the slots' set ids move to a wider array."""

from __future__ import annotations

from exporter.aggregate import Listing, SessionTracker


def _item(n: int) -> dict[str, object]:
    return {
        "session_id": f"s{n}",
        "last_updated_at": "2026-01-01T00:00:00Z",
        "shared_access": "query",
        "index_ids": [f"idx-{n}"],
        "job_metadata": {"is_error": False, "total_input_tokens": 1, "turns": 1},
    }


def test_a_page_past_65536_index_sets_with_a_session_listed_twice() -> None:
    items = [_item(n) for n in range(70_000)]
    items.append(_item(69_999))  # listed again in the same page, after the ids widened
    items.append(_item(5))  # and one from before the widening
    tracker = SessionTracker()
    listing = Listing(tracker)
    listing.add(items)
    result = listing.finish()
    assert result.snapshot.sessions == 70_000
    assert result.snapshot.input_tokens == 70_000
    # The next listing of the same sessions keeps every one bound to its own index.
    again = Listing(tracker)
    again.add(items[:-2])
    second = again.finish()
    assert second.snapshot.sessions == 70_000
    assert sum(n for index_id, n in second.snapshot.by_index if index_id != "none") == 70_000
