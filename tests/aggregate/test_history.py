"""Session histories: stop events read and checked, and which runs are new."""

from __future__ import annotations

from typing import Any

import pytest

from exporter.aggregate import Listing, SessionTracker, fingerprint
from exporter.aggregate.history import Stop, first_new, read_history
from exporter.aggregate.runs import NEVER_RUN, read_run


def stop(tokens: int, error: str | None = None, **extra: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "stop",
        "is_error": error is not None,
        "usage": {
            "duration_ms": 100.0 + tokens,
            "total_input_tokens": tokens,
            "total_output_tokens": 2 * tokens,
            "turns": 1,
        },
    }
    if error is not None:
        event["error"] = error
    event.update(extra)
    return event


def job(tokens: int, error: str | None = None) -> dict[str, Any]:
    return {
        "duration_ms": 100.0 + tokens,
        "total_input_tokens": tokens,
        "total_output_tokens": 2 * tokens,
        "turns": 1,
        "is_error": error is not None,
        "error": error,
        "export_config_ids": ["e1"],
    }


def body(*events: Any, stamp: str = "2026-01-01T00:00:00Z") -> dict[str, Any]:
    return {
        "session_id": "s",
        "last_updated_at": stamp,
        "shared_access": "query",
        "events": list(events),
    }


def test_a_stop_event_has_the_fingerprint_of_the_listing_that_showed_its_run() -> None:
    history = read_history(body({"type": "user_input", "content": "hi"}, stop(7, "timed out")))
    (only,) = history.stops
    assert only.run[5] == fingerprint(job(7, "timed out"))
    assert only.run == read_run(job(7, "timed out"))
    assert only.error == "timed out"
    assert history.updated == 1767225600.0


@pytest.mark.parametrize(
    ("listed", "event"),
    [
        ({"error": "Index not found"}, {"is_error": True, "error": "Index not found"}),
        ({"error": ""}, {"is_error": False}),
        ({"error": None, "is_error": None}, {"is_error": False}),
        ({}, {"is_error": False, "error": ""}),
    ],
)
def test_a_run_has_one_fingerprint_however_its_status_is_spelled(
    listed: dict[str, Any], event: dict[str, Any]
) -> None:
    """job_metadata may leave is_error out and let the error text tell; a stop event always
    says it. The same run must be found in the history by what the listing showed."""
    usage = {"duration_ms": 5.0, "total_input_tokens": 1, "total_output_tokens": 2, "turns": 1}
    (only,) = read_history(body({"type": "stop", "usage": usage, **event})).stops
    assert only.run[5] == fingerprint({**usage, **listed})


def test_unknown_event_types_are_skipped_and_bad_stop_events_counted() -> None:
    history = read_history(
        body(
            {"type": "citation", "url": "x"},
            "not an event",
            stop(1),
            {"type": "stop", "usage": {"total_input_tokens": 1}},  # no is_error
            {"type": "stop", "is_error": False, "usage": None},
            stop(2, skipped_index_ids="idx"),
            {"type": "stop", "is_error": False, "usage": {"total_input_tokens": -1}},
            stop(3, skipped_index_ids=["a", "a", "b"]),
        )
    )
    assert [s.run[2] for s in history.stops] == [1, 3]
    assert history.stops[1].skipped == ("a", "b")
    assert history.invalid == 4


@pytest.mark.parametrize("bad", [[], "x", {"events": None}, {"events": {}}])
def test_a_body_that_is_no_history_is_refused(bad: Any) -> None:
    from exporter.aggregate.runs import InvalidItem

    with pytest.raises(InvalidItem):
        read_history(bad)


def stops(*tokens: int) -> list[Stop]:
    return read_history(body(*(stop(t) for t in tokens))).stops


def fp(tokens: int) -> int:
    return fingerprint(job(tokens))


@pytest.mark.parametrize(
    ("history", "last", "counted", "expected"),
    [
        ((1, 2, 3), NEVER_RUN, 0, (0, True)),  # a session new after the baseline
        ((1, 2, 3), NEVER_RUN, None, (0, True)),  # the baseline saw it never run
        ((1, 2, 3), fp(1), 1, (1, True)),  # one counted, two new
        ((1, 1, 1), fp(1), 2, (2, True)),  # runs alike: the count tells them apart
        ((1, 2, 3), fp(2), None, (2, True)),  # the baseline's run, found newest first
        ((1, 2, 3), fp(2), 1, (2, True)),  # a count that disagrees: found by fingerprint
        ((1, 2, 3), fp(3), 3, (3, True)),  # nothing new
        ((4, 5), fp(3), 3, (1, False)),  # rewritten or made again: the newest only
        ((), fp(3), 3, (0, False)),
    ],
)
def test_where_the_new_runs_begin(
    history: tuple[int, ...], last: int, counted: int | None, expected: tuple[int, bool]
) -> None:
    assert first_new(stops(*history), last, counted) == expected


def item(sid: str, tokens: int | None, stamp: str) -> dict[str, Any]:
    return {
        "session_id": sid,
        "last_updated_at": stamp,
        "shared_access": "query",
        "job_metadata": None if tokens is None else job(tokens),
    }


def listed(tracker: SessionTracker, *items: dict[str, Any], exact: bool = True) -> int:
    """One listing of ``items``; the runs it counted itself."""
    listing = Listing(tracker, exact=exact)
    listing.add(list(items))
    return listing.finish().new_runs.runs


T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z"


def test_an_exact_listing_counts_no_run_and_queues_what_changed() -> None:
    tracker = SessionTracker()
    assert listed(tracker, item("a", 1, T0), item("b", 1, T0), item("c", None, T0)) == 0
    assert tracker.pending == {}  # the baseline reads nothing
    # a ran again with the same figures (only its stamp moved), b with others, d is new.
    assert (
        listed(tracker, item("a", 1, T1), item("b", 2, T1), item("c", None, T0), item("d", 3, T1))
        == 0
    )
    assert list(tracker.pending) == ["a", "b", "d"]
    reads = {sid: (last, counted) for sid, last, counted in tracker.to_read(10)}
    assert reads == {"a": (fp(1), None), "b": (fp(1), None), "d": (NEVER_RUN, 0)}
    assert [sid for sid, *_ in tracker.to_read(2)] == ["a", "b"]  # longest waiting first


def test_a_latest_listing_counts_the_listed_run_and_ignores_stamps() -> None:
    tracker = SessionTracker()
    listed(tracker, item("a", 1, T0), item("b", 1, T0), exact=False)
    assert listed(tracker, item("a", 1, T1), item("b", 2, T1), exact=False) == 1
    assert tracker.pending == {}


def test_the_first_exact_listing_after_latest_ones_takes_stamps_without_reading() -> None:
    tracker = SessionTracker()
    listed(tracker, item("a", 1, T0), exact=False)
    listed(tracker, item("a", 1, T1))  # versions now hold the stamps: not a change
    assert tracker.pending == {}
    listed(tracker, item("a", 1, "2026-01-01T00:02:00Z"))
    assert list(tracker.pending) == ["a"]


def test_a_failed_listing_queues_nothing() -> None:
    tracker = SessionTracker()
    listed(tracker, item("a", 1, T0))
    listing = Listing(tracker, exact=True)
    listing.add([item("a", 2, T1), item("n", 1, T1)])
    tracker.rollback()
    assert tracker.pending == {}
    assert listed(tracker, item("a", 1, T0)) == 0 and tracker.pending == {}


def test_what_a_read_counted_is_kept_through_a_saved_state() -> None:
    tracker = SessionTracker()
    listed(tracker, item("a", 1, T0), item("b", 1, T0))
    listed(tracker, item("a", 2, T1), item("b", 2, T1))
    tracker.read("a", 20, fp(3))  # the history had a run the listing has not shown yet
    restored = SessionTracker(list(tracker.rows()), tracker.state)
    assert list(restored.pending) == ["b"]
    assert restored.to_read(5) == [("b", fp(1), None)]
    listed(restored, item("a", 3, "2026-01-01T00:02:00Z"), item("b", 2, T1))
    assert restored.to_read(5) == [("b", fp(1), None), ("a", fp(3), 20)]
    restored.drop_pending("b")
    restored.requeue("a")
    assert restored.to_read(5) == [("a", fp(3), 20)]
