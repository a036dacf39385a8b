"""Injected faults: the recurring ``FaultConfig``, one-shot faults and malformed items."""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass
from typing import Any

from .model import _ENCODER, _run_dict
from .server import ENDPOINTS

# The statuses a random server error is drawn from, with their FastAPI-style details.
_SERVER_ERRORS = (
    (500, "Internal Server Error"),
    (502, "Bad Gateway"),
    (503, "Service Unavailable"),
)
# The ways a listed item is broken by ``FaultConfig.malformed_share``.
MALFORMED_KINDS = (
    "not_object",
    "missing_session_id",
    "string_count",
    "negative_count",
    "job_metadata_not_object",
)


@dataclass(frozen=True)
class FaultConfig:
    """Recurring faults, drawn from a seeded RNG so a given seed and request order repeat exactly.

    Every field defaults to "off". The request-level faults apply to the GET requests of the
    ``endpoints`` (``GET /api/v1/chat`` only by default) and are checked in this order: a burst
    503, a 429, a random 5xx; a timeout delays the answer without changing it, and truncation
    applies to 200 answers. Malformed items and endless listings concern chat listings only,
    malformed histories session reads only.
    One-shot faults queued with ``fail_next``, ``hang_next`` and ``truncate_next`` take
    precedence over these.
    """

    rate_limit_share: float = 0.0
    """Share of chat requests answered 429 with ``Retry-After``."""
    rate_limit_retry_after: int = 1
    """Seconds sent in the 429's ``Retry-After`` header."""
    server_error_share: float = 0.0
    """Share of chat requests answered 500, 502 or 503 (the status is drawn too)."""
    server_error_burst_every: int = 0
    """Every N-th chat request starts a burst of 503s; 0 disables bursts."""
    server_error_burst_length: int = 3
    """Consecutive 503s in a burst, the starting request included."""
    timeout_share: float = 0.0
    """Share of chat requests that stall ``timeout_seconds`` before answering normally."""
    timeout_seconds: float = 60.0
    """How long a stalled request stalls; longer than a client's timeout makes it time out."""
    truncate_share: float = 0.0
    """Share of 200 answers whose body is cut in half (invalid JSON, Content-Length matches)."""
    malformed_share: float = 0.0
    """Share of listed items replaced by a malformed one when a page is rendered."""
    malformed_history_share: float = 0.0
    """Share of session histories served with events of types the SDK does not know
    (``citation``, ``progress``), half of them also with one stop event of the wrong shape
    (``MALFORMED_STOP_KINDS``); the choice is the same each time a history is read."""
    endless_projects: tuple[str, ...] = ()
    """Projects whose listing never ends (as ``set_endless``)."""
    endpoints: tuple[str, ...] = ("chat",)
    """The endpoints whose GET requests the request-level faults strike, by name: ``"chat"``
    (``GET /api/v1/chat``), ``"session"`` (``GET /api/v1/chat/{session_id}``) and
    ``"projects"`` (``GET /api/v2/projects``). Requests to an endpoint not named draw nothing,
    so they do not shift the faults of the others."""

    def __post_init__(self) -> None:
        for name in (
            "rate_limit_share",
            "server_error_share",
            "timeout_share",
            "truncate_share",
            "malformed_share",
            "malformed_history_share",
        ):
            value = getattr(self, name)
            if not _is_number(value) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value!r}")
        for name, minimum in (
            ("rate_limit_retry_after", 0),
            ("server_error_burst_every", 0),
            ("server_error_burst_length", 1),
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ValueError(f"{name} must be an integer of at least {minimum}, got {value!r}")
        seconds = self.timeout_seconds
        if not _is_number(seconds) or not 0.0 <= seconds < math.inf:
            raise ValueError(f"timeout_seconds must be a finite number >= 0, got {seconds!r}")
        if isinstance(self.endless_projects, str):
            raise ValueError("endless_projects must be a sequence of project ids, not one string")
        endless = tuple(self.endless_projects)
        if not all(isinstance(project_id, str) for project_id in endless):
            raise ValueError("endless_projects must hold project ids (strings)")
        object.__setattr__(self, "endless_projects", endless)
        if isinstance(self.endpoints, str):
            raise ValueError("endpoints must be a sequence of endpoint names, not one string")
        endpoints = tuple(self.endpoints)
        unknown = [name for name in endpoints if name not in ENDPOINTS]
        if unknown:
            raise ValueError(f"endpoints must be among {', '.join(ENDPOINTS)}, got {unknown!r}")
        object.__setattr__(self, "endpoints", endpoints)

    @property
    def per_request(self) -> bool:
        """Whether any fault is decided per request (the others act on rendering or listing)."""
        return bool(
            self.rate_limit_share
            or self.server_error_share
            or self.server_error_burst_every
            or self.timeout_share
            or self.truncate_share
        )


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class _Fault:
    """A pending injected fault; it disappears once ``remaining`` reaches zero."""

    kind: str
    remaining: int
    project_id: str | None
    endpoint: str | None = "chat"
    """The endpoint's name (``ENDPOINTS``) whose requests it strikes; None strikes any."""
    status: int = 503
    retry_after: str | None = None
    detail: str = "Service Unavailable"
    seconds: float = 0.0


@dataclass(frozen=True)
class _Decision:
    """What the recurring faults do to one chat request, drawn when it arrives."""

    stall: float
    error: tuple[int, str, tuple[tuple[str, str], ...]] | None
    truncate: bool


def _draw_decision(config: FaultConfig, rng: random.Random, number: int) -> _Decision:
    """Draw the recurring faults for the ``number``-th request they apply to (counted from 1).

    Every request draws the same five numbers whichever faults are on, so changing one
    share does not reshuffle when the others strike.
    """
    rand = rng.random
    stall_draw = rand()
    limit_draw = rand()
    error_draw = rand()
    kind_draw = rand()
    cut_draw = rand()
    every = config.server_error_burst_every
    error: tuple[int, str, tuple[tuple[str, str], ...]] | None = None
    if every and number >= every and number % every < config.server_error_burst_length:
        error = (503, "Service Unavailable", ())
    elif limit_draw < config.rate_limit_share:
        retry_after = (("Retry-After", str(config.rate_limit_retry_after)),)
        error = (429, "Too Many Requests", retry_after)
    elif error_draw < config.server_error_share:
        status, detail = _SERVER_ERRORS[int(kind_draw * len(_SERVER_ERRORS))]
        error = (status, detail, ())
    stall = config.timeout_seconds if stall_draw < config.timeout_share else 0.0
    return _Decision(stall, error, cut_draw < config.truncate_share)


def _malform(seed: int, project_id: str, share: float, items: list[bytes]) -> list[bytes]:
    """Replace ``share`` of ``items`` by broken ones.

    The choice hashes the seed, the project and the item's bytes, so it does not depend on
    request order or page size, and a page rendered again comes out the same.
    """
    key = hashlib.blake2b(f"{seed}:{project_id}".encode(), digest_size=32).digest()
    out: list[bytes] = []
    for item in items:
        digest = hashlib.blake2b(item, digest_size=8, key=key).digest()
        bits = int.from_bytes(digest, "big")
        if (bits >> 11) / 2**53 < share:
            item = _malformed_item(item, bits & 0x7FF)
        out.append(item)
    return out


def _malformed_item(item: bytes, bits: int) -> bytes:
    """A broken variant of ``item``: the kind and the details come from ``bits``.

    An item that is not an object already is malformed and stays as it is.
    """
    value = json.loads(item)
    if not isinstance(value, dict):
        return item
    kind = MALFORMED_KINDS[bits % len(MALFORMED_KINDS)]
    variant = bits // len(MALFORMED_KINDS)
    bad: Any
    if kind == "not_object":
        session_id = value.get("session_id")
        bad = (None, 42, session_id if isinstance(session_id, str) else "ses", [value])[variant % 4]
    elif kind == "missing_session_id":
        bad = {key: field_value for key, field_value in value.items() if key != "session_id"}
    elif kind == "job_metadata_not_object":
        bad = value | {"job_metadata": ("completed", [], 7, True)[variant % 4]}
    else:
        meta = value.get("job_metadata")
        # A session that never ran gets a run, so that it has a count to break.
        meta = dict(meta) if isinstance(meta, dict) else _run_dict(1000.0, None, False, 100, 50, 1)
        if kind == "string_count":
            name = ("total_input_tokens", "total_output_tokens")[variant % 2]
            meta[name] = str(meta.get(name) or 0)
        else:
            name = ("total_input_tokens", "total_output_tokens", "turns")[variant % 3]
            count = meta.get(name)
            meta[name] = -(abs(count) + 1) if type(count) is int else -1
        bad = value | {"job_metadata": meta}
    return _ENCODER.encode(bad).encode()
