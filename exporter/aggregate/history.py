"""One session's history: its stop events (one per run), and which of them are not counted yet.

``GET /api/v1/chat/{session_id}`` answers the session's fields and ``events``, the ordered
conversation; each run ends with one ``stop`` event carrying its own status, usage and skipped
indexes, and the newest one is what the listing's ``job_metadata`` shows. Event types this
exporter does not know are skipped; a stop event of the wrong shape is skipped and counted.
Pure: no I/O.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

from .indexes import MAX_INDEX_ID_LENGTH
from .runs import NEVER_RUN, InvalidItem, RunTuple, parse_datetime_slow, read_run, utc_timestamp


class Stop(NamedTuple):
    """One run, as its stop event tells it."""

    run: RunTuple
    error: Any  # its error text, if any
    skipped: tuple[str, ...]  # the indexes it asked for and could not query


class History(NamedTuple):
    stops: list[Stop]
    invalid: int  # stop events of the wrong shape, skipped
    updated: float | None  # the session's last_updated_at, Unix seconds


def read_history(body: Any) -> History:
    """The stop events of a history body, in order; :class:`InvalidItem` when the body is not
    a session with a list of events."""
    if type(body) is not dict:
        raise InvalidItem("the history is not an object")
    events = body.get("events")
    if type(events) is not list:
        raise InvalidItem("the history has no list of events")
    stops: list[Stop] = []
    invalid = 0
    for event in events:
        if type(event) is not dict or event.get("type") != "stop":
            continue  # text, tool calls, thinking, and types to come
        try:
            stops.append(_stop(event))
        except (InvalidItem, TypeError):
            invalid += 1
    return History(stops, invalid, _updated(body.get("last_updated_at")))


def _stop(event: dict[str, Any]) -> Stop:
    usage = event.get("usage")
    flag = event.get("is_error")
    if type(usage) is not dict:
        raise InvalidItem("a stop event has no usage")
    if flag is not True and flag is not False:
        raise InvalidItem("a stop event's is_error is not a boolean")
    error = event.get("error")
    # The fields job_metadata has, so the fingerprint is the listing's for the same run.
    run = read_run(
        {
            "duration_ms": usage.get("duration_ms"),
            "total_input_tokens": usage.get("total_input_tokens"),
            "total_output_tokens": usage.get("total_output_tokens"),
            "turns": usage.get("turns"),
            "is_error": flag,
            "error": error,
        }
    )
    skipped = event.get("skipped_index_ids")
    if skipped is None:
        ids: tuple[str, ...] = ()
    elif type(skipped) is not list or not all(
        type(i) is str and i and len(i) <= MAX_INDEX_ID_LENGTH and i.isprintable() for i in skipped
    ):
        raise InvalidItem("skipped_index_ids is not a list of index ids")
    else:
        ids = tuple(dict.fromkeys(skipped))
    return Stop(run, error, ids)


def _updated(stamp: Any) -> float | None:
    if type(stamp) is not str:
        return None
    try:
        try:
            return utc_timestamp(datetime.fromisoformat(stamp))
        except ValueError:
            return utc_timestamp(parse_datetime_slow(stamp))
    except (InvalidItem, OverflowError, OSError, ValueError):
        return None


def first_new(stops: list[Stop], last_fp: int, counted: int | None) -> tuple[int, bool]:
    """Where the runs not counted yet begin among ``stops``, and whether the last counted run
    was found there.

    ``counted`` stop events were counted before (None: unknown, for a session the baseline
    saw), the last of them with fingerprint ``last_fp`` (NEVER_RUN: none). When the count
    and the fingerprint agree, the rest are new; else the newest stop event with that
    fingerprint is the last one counted. When none has it (the history was rewritten, or the
    session deleted and made again under its id), only the newest run is new, as the
    listing would have counted it, and the second value is False.
    """
    n = len(stops)
    if last_fp == NEVER_RUN:
        return (0 if counted is None or counted > n else counted), True
    if counted is not None and 0 < counted <= n and stops[counted - 1].run[5] == last_fp:
        return counted, True
    for k in range(n - 1, -1, -1):
        if stops[k].run[5] == last_fp:
            return k + 1, True
    return max(n - 1, 0), False
