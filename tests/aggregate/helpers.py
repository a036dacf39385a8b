"""What the aggregate tests share: listed items as hypothesis strategies, timestamps, detail
settings."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import strategies as st

from exporter.aggregate.indexes import Detail
from exporter.config import parse_config
from tests.config.helpers import ENV
from tests.helpers import session


def utc(stamp: str) -> float:
    """Unix seconds of an ISO 8601 timestamp with a zone."""
    return datetime.fromisoformat(stamp).timestamp()


counts = st.one_of(st.none(), st.integers(0, 10**7), st.floats(0, 1e7, allow_nan=False))
jobs = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {},
        optional={
            "duration_ms": counts,
            "total_input_tokens": counts,
            "total_output_tokens": counts,
            "turns": counts,
            "is_error": st.one_of(st.none(), st.booleans()),
            "error": st.one_of(st.none(), st.text(max_size=5)),
        },
    ),
)
valid_items = st.builds(
    lambda sid, job: {"session_id": f"s{sid}", "job_metadata": job},
    st.integers(0, 50),
    jobs,
)
invalid_items = st.one_of(
    st.integers(),
    st.text(),
    st.builds(lambda j: {"job_metadata": j}, jobs),
    st.builds(lambda n: {"session_id": "bad", "job_metadata": {"turns": n}}, st.text()),
    st.builds(
        lambda n: {"session_id": "bad", "job_metadata": {"total_input_tokens": n}},
        st.integers(max_value=-1),
    ),
)


def _unique(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return list({item["session_id"]: item for item in items}.values())


def detail(**raw: Any) -> Detail:
    return parse_config({"projects": [{"id": "p"}], "detail": raw}, ENV).detail


def bound(sid: str, *index_ids: str | None, **job: Any) -> dict[str, Any]:
    item = session(sid, **job)
    item["index_ids"] = None if index_ids == (None,) else list(index_ids)
    return item


EPOCH = datetime(2026, 11, 1, tzinfo=timezone.utc)


def stamp(seconds: float, naive: bool = False) -> str:
    moment = EPOCH + timedelta(seconds=seconds)
    return (moment.replace(tzinfo=None) if naive else moment).isoformat()


def at(sid: str, seconds: float | None, **job: Any) -> dict[str, Any]:
    """A session last updated ``seconds`` after the epoch (None: no timestamp)."""
    item = session(sid, **job)
    item["last_updated_at"] = None if seconds is None else stamp(seconds)
    return item


def newest_first(n: int, start: float = 0.0) -> list[dict[str, Any]]:
    """``n`` sessions, one a second, listed newest first."""
    return [at(f"s{i}", start + i) for i in reversed(range(n))]
