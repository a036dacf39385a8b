"""The synthetic data: projects, sessions and their runs, rendered as the API renders them.

Sessions are generated from a project's seeded RNG and kept as compact JSON bytes; timestamps
are microseconds since the epoch, formatted the way the API formats them. A session's newest
run is its ``job_metadata``; the stop events of its earlier runs are kept packed, a few bytes
each, for the sessions that ran more than once only (``_Project.prior``).
"""

from __future__ import annotations

import json
import math
import random
import struct
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

STEP_SECONDS = 60
# Initial sessions are spread over this many days before the clock starts.
HISTORY_DAYS = 30
# The values of a session's ``shared_access`` (what its share link grants), the common one first.
SHARED_ACCESS = ("query", "read_only")
# The most runs one session makes in one ``step()`` when ``burst`` makes it run again.
MAX_RUNS_PER_STEP = 8

_EPOCH = datetime(1970, 1, 1)
_ENCODER = json.JSONEncoder(separators=(",", ":"))

_TITLES = (
    "What were the main findings in Q3?",
    "Summarize the onboarding handbook",
    "Compare the 2024 and 2025 pricing tables",
    "Which contracts renew in March?",
    "List open risks from the audit report",
    "Explain the refund policy for enterprise plans",
    "Draft a reply to the security questionnaire",
    "What changed in the latest API release notes?",
    "Find the SLA for the EU region",
    "How many support tickets mention latency?",
    "Extract invoice totals by vendor",
    "Who owns the data retention policy?",
    "Translate the product FAQ into German",
    "What does clause 7.2 of the MSA say?",
    "Give me the board deck highlights",
    "Résumé des ventes du deuxième trimestre",
)
_ERRORS = (
    "Rate limit exceeded by the model provider",
    "Context length exceeded",
    "Index not found",
    "Timed out while retrieving nodes",
    "Internal server error",
    "Model returned an empty response",
    "Export destination rejected the payload",
)
_TITLES_JSON = tuple(_ENCODER.encode(title) for title in _TITLES)
_ERRORS_JSON = {error: _ENCODER.encode(error) for error in _ERRORS}
_SHARED_ACCESS_JSON = tuple(_ENCODER.encode(value) for value in SHARED_ACCESS)


@dataclass
class _Project:
    """One project's data; ``items`` holds each session already encoded as compact JSON."""

    project_id: str
    api_key: str | None
    organization_id: str | None
    """None: the simulator's organization, and chat requests may name any organization."""
    rng: random.Random
    index_pool: tuple[str, ...]
    target: int
    items: list[bytes] = field(default_factory=list)
    version: int = 0
    endless: bool = False
    repeat_token: bool = False
    cache: OrderedDict[tuple[str, int, int], bytes] = field(default_factory=OrderedDict)
    cache_bytes: int = 0
    tag: str = ""
    newest_us: int = 0
    """An upper bound of the items' ``last_updated_at``, in microseconds since the epoch."""
    hook_rng: random.Random | None = None
    """Draws for the test hooks, apart from ``rng`` so that they leave ``step()``'s draws alone."""
    name: str = ""
    """The display name that ``GET /api/v2/projects`` lists."""
    created_us: int = 0
    """``created_at`` (and ``updated_at``) in microseconds since the epoch."""
    is_default: bool = False
    """Whether it was the first project of its organization (its default project)."""
    prior: dict[str, bytes] = field(default_factory=dict)
    """The stop events of each session's runs before its newest (``_pack_stop``), by session id;
    a session that ran once or never has no entry."""

    def __post_init__(self) -> None:
        # Binds page tokens to their project, so a token replayed elsewhere is rejected.
        self.tag = f"{zlib.crc32(self.project_id.encode()):08x}"


def _format_ts(us: int, style: float) -> str:
    """ISO 8601 like the API: mostly naive (meant as UTC), sometimes with an explicit UTC offset."""
    text = (_EPOCH + timedelta(microseconds=us)).isoformat()
    if style < 0.7:
        return text
    if style < 0.9:
        return text + "+00:00"
    return text + "Z"


def _ts_style(previous: object) -> float:
    """The ``_format_ts`` style that reproduces an existing timestamp's: naive, "+00:00" or "Z"."""
    if isinstance(previous, str) and previous.endswith("Z"):
        return 0.95
    if isinstance(previous, str) and previous.endswith("+00:00"):
        return 0.8
    return 0.0


def _parse_us(value: object) -> int | None:
    """An ISO 8601 timestamp in microseconds since the epoch (naive means UTC), or None."""
    if not isinstance(value, str):
        return None
    if value.endswith("Z"):  # fromisoformat takes "Z" from Python 3.11 on only
        value = value[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(timezone.utc).replace(tzinfo=None)
    return (parsed - _EPOCH) // timedelta(microseconds=1)


def _clock_start_us(start: datetime | None) -> int:
    """The simulated clock's start in microseconds since the epoch.

    None means now, rounded down to the second; a naive datetime is taken as UTC.
    """
    if start is None:
        start = datetime.now(timezone.utc).replace(microsecond=0)
    if start.tzinfo is not None:
        start = start.astimezone(timezone.utc).replace(tzinfo=None)
    return (start - _EPOCH) // timedelta(microseconds=1)


def _lognormal(rand: Callable[[], float], mu: float, sigma: float) -> float:
    """Roughly log-normal from three uniforms; ``random.lognormvariate`` is several times slower."""
    return math.exp(mu + sigma * 2.0 * (rand() + rand() + rand() - 1.5))


def _run_values(
    rng: random.Random, error_share: float
) -> tuple[float, str | None, bool | None, int, int, int]:
    """A most-recent run: (duration_ms, error, is_error, input, output, turns).

    ``is_error`` None means the field is absent: some records report a failure by its text only.
    """
    rand = rng.random
    duration = round(_lognormal(rand, 8.0, 0.8), 3)
    tokens_in = int(_lognormal(rand, 7.0, 1.0))
    tokens_out = int(_lognormal(rand, 5.5, 0.9))
    turns = 1 + int(rand() * 12)
    if rand() < error_share:
        error = _ERRORS[int(rand() * len(_ERRORS))]
        return duration, error, None if rand() < 0.1 else True, tokens_in, tokens_out, turns
    return duration, None, False, tokens_in, tokens_out, turns


def _run_dict(
    duration: float,
    error: str | None,
    is_error: bool | None,
    tokens_in: int,
    tokens_out: int,
    turns: int,
) -> dict[str, Any]:
    run: dict[str, Any] = {
        "duration_ms": duration,
        "error": error,
        "export_config_ids": [],
        "is_error": is_error,
        "total_input_tokens": tokens_in,
        "total_output_tokens": tokens_out,
        "turns": turns,
    }
    if is_error is None:
        del run["is_error"]
    return run


def _render_run(
    duration: float,
    error: str | None,
    is_error: bool | None,
    tokens_in: int,
    tokens_out: int,
    turns: int,
) -> str:
    """Same bytes as encoding ``_run_dict`` with the compact encoder, only faster."""
    error_json = _ERRORS_JSON[error] if error is not None else "null"
    flag = "" if is_error is None else f'"is_error":{"true" if is_error else "false"},'
    return (
        f'{{"duration_ms":{duration!r},"error":{error_json},"export_config_ids":[],{flag}'
        f'"total_input_tokens":{tokens_in},"total_output_tokens":{tokens_out},"turns":{turns}}}'
    )


# The usage a stop event reports, copied from the run's ``job_metadata``.
_USAGE_KEYS = ("duration_ms", "total_input_tokens", "total_output_tokens", "turns")
# A packed stop event is a tag and then either the fields of a run the simulator drew (b"F":
# duration, input and output tokens, turns, the error's place in ``_ERRORS`` plus one or 0,
# is_error), 21 bytes, or any other stop event as JSON (b"J": its length, then the text).
_FIXED = struct.Struct("<dIIHBB")
_LENGTH = struct.Struct("<I")


def _stop_of(meta: object) -> dict[str, Any] | None:
    """The stop event of the run that a ``job_metadata`` describes; None when there was none
    (null, or not an object).

    A stop event's ``is_error`` is required: a run whose ``job_metadata`` has none failed when
    it has an error text, as the exporter reads a run's status.
    """
    if not isinstance(meta, dict):
        return None
    error = meta.get("error")
    flag = meta.get("is_error")
    is_error = flag if isinstance(flag, bool) else isinstance(error, str) and error != ""
    stop: dict[str, Any] = {"type": "stop", "is_error": is_error}
    if error is not None:
        stop["error"] = error
    stop["usage"] = {key: meta[key] for key in _USAGE_KEYS if key in meta}
    return stop


def _fixed_stop(
    duration: float, tokens_in: int, tokens_out: int, turns: int, code: int, is_error: int
) -> dict[str, Any]:
    stop: dict[str, Any] = {"type": "stop", "is_error": bool(is_error)}
    if code:
        stop["error"] = _ERRORS[code - 1]
    stop["usage"] = {
        "duration_ms": duration,
        "total_input_tokens": tokens_in,
        "total_output_tokens": tokens_out,
        "turns": turns,
    }
    return stop


def _pack_stop(stop: dict[str, Any]) -> bytes:
    """A stop event in a few bytes: 22 for one the simulator drew, its JSON for any other."""
    try:
        usage = stop["usage"]
        values = tuple(usage[key] for key in _USAGE_KEYS)
        code = _ERRORS.index(stop["error"]) + 1 if "error" in stop else 0
        fixed = _FIXED.pack(*values, code, stop["is_error"])
    except (KeyError, TypeError, ValueError, struct.error):
        fixed = b""
    if (
        fixed
        and type(values[0]) is float
        and all(type(value) is int for value in values[1:])
        and type(stop["is_error"]) is bool
        and _fixed_stop(*_FIXED.unpack(fixed)) == stop
    ):
        return b"F" + fixed
    text = _ENCODER.encode(stop).encode()
    return b"J" + _LENGTH.pack(len(text)) + text


def _unpack_stops(blob: bytes) -> list[dict[str, Any]]:
    """The stop events ``_pack_stop`` packed one after the other, in order."""
    stops: list[dict[str, Any]] = []
    at = 0
    while at < len(blob):
        tag = blob[at : at + 1]
        at += 1
        if tag == b"F":
            stops.append(_fixed_stop(*_FIXED.unpack_from(blob, at)))
            at += _FIXED.size
        else:
            (length,) = _LENGTH.unpack_from(blob, at)
            at += _LENGTH.size
            stops.append(json.loads(blob[at : at + length]))
            at += length
    return stops


def _push_run(project: _Project, item: dict[str, Any]) -> None:
    """Keep the stop event of the session's newest run before a newer one replaces it."""
    session_id = item.get("session_id")
    stop = _stop_of(item.get("job_metadata"))
    if stop is not None and isinstance(session_id, str):
        project.prior[session_id] = project.prior.get(session_id, b"") + _pack_stop(stop)


def _session_id(raw: bytes) -> str:
    """The ``session_id`` of an encoded item ("" when it has none)."""
    value = json.loads(raw)
    session_id = value.get("session_id") if isinstance(value, dict) else None
    return session_id if isinstance(session_id, str) else ""


def _new_sessions(
    project: _Project,
    count: int,
    start_us: int,
    end_us: int,
    run_share: float,
    *,
    error_share: float,
    rng: random.Random | None = None,
    first_us: int | None = None,
) -> tuple[list[bytes], list[int]]:
    """Synthetic sessions with timestamps in (start_us, end_us], rendered straight to JSON.

    Returns the items and their timestamps (microseconds). With ``first_us`` the timestamps
    are ``first_us``, ``first_us + 1``, ... instead. ``rng`` defaults to the project's;
    ``error_share`` is the share of runs that fail (``Simulator.error_share``).
    Formatting with a template instead of building dicts keeps 200,000 sessions at about a
    second and avoids a transient copy of every item as Python objects.
    """
    rng = project.rng if rng is None else rng
    rand = rng.random
    bits = rng.getrandbits
    pool = [_ENCODER.encode(index_id) for index_id in project.index_pool]
    span = end_us - start_us
    n_titles = len(_TITLES_JSON)
    shared_json = _SHARED_ACCESS_JSON
    out: list[bytes] = []
    append = out.append
    stamps: list[int] = []
    stamp = stamps.append
    for n in range(count):
        ran = rand() < run_share
        pick = rand()
        if pick < 0.2:
            index_ids = "null"
        elif pick < 0.8:
            index_ids = f"[{pool[int(rand() * len(pool))]}]"
        else:
            index_ids = f"[{pool[0]},{pool[1 + int(rand() * (len(pool) - 1))]}]"
        us = start_us + 1 + int(rand() * span)
        if first_us is not None:
            us = first_us + n
        stamp(us)
        timestamp = _format_ts(us, rand())
        shared = shared_json[1] if rand() < 0.1 else shared_json[0]
        if ran:
            title = _TITLES_JSON[int(rand() * n_titles)]
            run = _render_run(*_run_values(rng, error_share))
        else:
            title = run = "null"
        append(
            f'{{"session_id":"ses-{bits(96):024x}","last_updated_at":"{timestamp}",'
            f'"shared_access":{shared},"generated_title":{title},"index_ids":{index_ids},'
            f'"job_metadata":{run}}}'.encode()
        )
    return out, stamps


def _find(project: _Project, session_id: str) -> tuple[int, dict[str, Any]]:
    """The index and decoded item of the first session with this id; KeyError if none."""
    needle = b'"session_id":' + _ENCODER.encode(session_id).encode()
    for index, raw in enumerate(project.items):
        if needle in raw:
            value = json.loads(raw)
            if isinstance(value, dict) and value.get("session_id") == session_id:
                return index, value
    raise KeyError(f"unknown session {session_id!r} in project {project.project_id!r}")


def _evolve(
    project: _Project,
    start_us: int,
    end_us: int,
    newest_first: bool,
    error_share: float,
    burst: float = 0.0,
) -> None:
    """One tick: some sessions re-run, some are deleted, some appear (a few never run).

    A session that re-runs runs again with probability ``burst``, again and again, up to
    ``MAX_RUNS_PER_STEP`` runs; with ``burst`` 0 nothing more is drawn, so the data for a seed
    stays what it was before bursts existed.

    Newest first, re-run and new sessions go to the front, newest first among themselves;
    their timestamps then also lie after every timestamp the project has (test hooks may
    have handed out ones after ``start_us``), so the listing stays sorted. The caller
    invalidates the project's rendered pages.
    """
    rng = project.rng
    items = project.items
    size = len(items)
    span = end_us - start_us
    if newest_first:
        start_us = max(start_us, project.newest_us)
    moved: list[tuple[int, bytes]] = []  # (timestamp, item) of re-runs, in listing order
    if size:
        # Means: about 2% of sessions deleted and 2% re-run per tick, at least a few.
        deletes = min(size, rng.randint(0, max(1, round(size * 0.04))))
        reruns = min(size - deletes, 1 + rng.randint(0, max(2, round(size * 0.04))))
        chosen = rng.sample(range(size), deletes + reruns)
        gone = set(chosen[:deletes])
        if project.prior:
            for index in gone:
                project.prior.pop(_session_id(items[index]), None)
        rerun_stamps: dict[int, int] = {}
        for index in chosen[deletes:]:
            item = json.loads(items[index])
            if not isinstance(item, dict):
                continue  # malformed golden data stays as it is
            # Keep the session's timestamp style: naive, "+00:00" or "Z".
            style = _ts_style(item.get("last_updated_at"))
            us = start_us + 1 + int(rng.random() * span)
            item["last_updated_at"] = _format_ts(us, style)
            _push_run(project, item)
            item["job_metadata"] = _run_dict(*_run_values(rng, error_share))
            if not item.get("generated_title"):
                item["generated_title"] = _TITLES[int(rng.random() * len(_TITLES))]
            for _ in range(MAX_RUNS_PER_STEP - 1 if burst else 0):
                if rng.random() >= burst:
                    break
                _push_run(project, item)
                item["job_metadata"] = _run_dict(*_run_values(rng, error_share))
            items[index] = _ENCODER.encode(item).encode()
            rerun_stamps[index] = us
        if rerun_stamps:
            project.newest_us = max(project.newest_us, *rerun_stamps.values())
        if newest_first:
            moved = [(rerun_stamps[i], items[i]) for i in sorted(rerun_stamps)]
            gone.update(rerun_stamps)
        items = [item for i, item in enumerate(items) if i not in gone]
    # Creation balances deletion around the initial size, so a long demo neither empties
    # nor explodes.
    created = rng.randint(0, max(1, round(project.target * 0.04)))
    new_items, stamps = _new_sessions(
        project, created, start_us, start_us + span, 0.7, error_share=error_share
    )
    if stamps:
        project.newest_us = max(project.newest_us, *stamps)
    if newest_first:
        moved.extend(zip(stamps, new_items, strict=True))
        moved.sort(key=lambda pair: pair[0], reverse=True)  # stable, so ties keep their order
        items[:0] = [item for _, item in moved]
    else:
        items.extend(new_items)
    project.items = items
