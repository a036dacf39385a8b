"""A simulated LlamaCloud chat API, served over real HTTP on loopback.

It answers ``GET /api/v1/chat`` the way LlamaCloud does (bearer keys scoped to projects, opaque page
tokens, FastAPI-style error bodies), so the exporter can be demonstrated, tested and benchmarked
without an account. Data is synthetic and deterministic for a seed. Faults (rate limits, 5xx bursts,
stalls, truncated bodies, malformed items, endless listings) can be injected once on demand or
recur at configured rates (:class:`FaultConfig`, also on the command line), drawn from a seeded RNG
so that retries, timeouts and hostile pagination can be exercised end to end and reproduced.

Timestamps follow a simulated clock that starts at the wall clock's time (or ``clock_start``)
and moves by ``STEP_SECONDS`` per ``step()``. Items match the models of the official SDK
(``llama-cloud``), strict response validation included, unless malformed items are injected.

Listings come in creation order or newest first by ``last_updated_at`` (``order=``). With offset
page tokens the latter makes sessions move between pages while a client pages through, which
``rerun``, ``touch``, ``create_sessions``, ``delete_session`` and ``page_hook`` can reproduce.

Run ``python -m exporter.simulator --help`` for the command line.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import hashlib
import json
import logging
import math
import random
import signal
import socket
import sys
import threading
import uuid
import zlib
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any, cast
from urllib.parse import parse_qsl, urlsplit

__all__ = [
    "CHAT_PATH",
    "DEFAULT_API_KEY",
    "MALFORMED_KINDS",
    "ORDERS",
    "SHARED_ACCESS",
    "FaultConfig",
    "RequestRecord",
    "Simulator",
    "main",
]

CHAT_PATH = "/api/v1/chat"
# Listing orders: ``Simulator(order=...)`` and ``--order``.
ORDERS = ("newest-first", "created")
DEFAULT_API_KEY = "llx-demo-key"
DEFAULT_PAGE_SIZE = 50
REQUEST_LOG_SIZE = 10_000
# Rendered pages are kept up to this many bytes in total; a 200,000-session listing at
# page_size 100 needs roughly 70 MB, so a full benchmark pass is served from the cache.
PAGE_CACHE_BYTES = 128 * 1024 * 1024
STEP_SECONDS = 60
# Initial sessions are spread over this many days before the clock starts.
HISTORY_DAYS = 30
# The values of a session's ``shared_access`` (what its share link grants), the common one first.
SHARED_ACCESS = ("query", "read_only")

_EPOCH = datetime(1970, 1, 1)
_ENCODER = json.JSONEncoder(separators=(",", ":"))
_log = logging.getLogger(__name__)

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
class RequestRecord:
    """One request as the server saw it, so tests can assert what the client sent."""

    path: str
    query: dict[str, str]
    authorization: str | None
    status: int
    method: str = "GET"


@dataclass(frozen=True)
class FaultConfig:
    """Recurring faults, drawn from a seeded RNG so a given seed and request order repeat exactly.

    Every field defaults to "off". The request-level faults apply to ``GET /api/v1/chat`` only
    and are checked in this order: a burst 503, a 429, a random 5xx; a timeout delays the answer
    without changing it, and truncation applies to 200 answers. One-shot faults queued with
    ``fail_next``, ``hang_next`` and ``truncate_next`` take precedence over these.
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
    endless_projects: tuple[str, ...] = ()
    """Projects whose listing never ends (as ``set_endless``)."""

    def __post_init__(self) -> None:
        for name in (
            "rate_limit_share",
            "server_error_share",
            "timeout_share",
            "truncate_share",
            "malformed_share",
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


@dataclass
class _Project:
    """One project's data; ``items`` holds each session already encoded as compact JSON."""

    project_id: str
    api_key: str | None
    organization_id: str | None
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

    def __post_init__(self) -> None:
        # Binds page tokens to their project, so a token replayed elsewhere is rejected.
        self.tag = f"{zlib.crc32(self.project_id.encode()):08x}"


class _ApiError(Exception):
    """An HTTP error answer with a FastAPI-style ``{"detail": ...}`` body."""

    def __init__(self, status: int, detail: Any, headers: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(status, detail)
        self.status = status
        self.detail = detail
        self.headers = tuple(headers)


def _detail_body(detail: Any) -> bytes:
    return _ENCODER.encode({"detail": detail}).encode()


def _missing(name: str) -> list[dict[str, Any]]:
    """The 422 detail FastAPI gives for a missing required query parameter."""
    return [{"type": "missing", "loc": ["query", name], "msg": "Field required", "input": None}]


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


def _encode_token(tag: str, kind: str, number: int) -> str:
    raw = f"{kind}.{tag}.{number}".encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _decode_token(token: str, tag: str) -> tuple[str, int]:
    """Returns (kind, number) or raises a 400, as the real API does for a token it did not issue."""
    try:
        padded = token.encode("ascii") + b"=" * (-len(token) % 4)
        text = base64.b64decode(padded, altchars=b"-_", validate=True).decode("ascii")
        kind, token_tag, number = text.split(".")
    except (UnicodeError, binascii.Error, ValueError):
        raise _ApiError(400, "Invalid page_token") from None
    if kind not in ("o", "e") or token_tag != tag or not (number.isascii() and number.isdigit()):
        raise _ApiError(400, "Invalid page_token")
    return kind, int(number)


class Simulator:
    """A LlamaCloud chat API with synthetic, evolving projects and injectable faults.

    Faults come two ways: one-shot calls (``fail_next``, ``hang_next``, ``truncate_next``) for
    tests that need one exact failure, and a recurring :class:`FaultConfig` (``faults=`` or the
    ``faults`` attribute) for soak runs, demos and benchmarks. Every public method is
    thread-safe: one lock guards the data, the faults and the log.

    ``order`` is ``"created"`` (items in creation order; a re-run stays in place) or
    ``"newest-first"`` (by ``last_updated_at`` descending, ties in a stable order; a re-run or a
    new session goes to the front). ``page_hook``, if set, is called as
    ``hook(project_id, offset, page_size)`` after each 200 chat page is rendered and before it
    is sent, outside the lock, so a test can change data in the middle of a listing.

    ``clock_start`` is when the simulated clock starts (a naive datetime is UTC); None, the
    default, takes the wall clock at construction, rounded down to the second, so a demo's
    sessions are recent. The initial history lies in the ``HISTORY_DAYS`` before it. The data
    is the same for a seed whatever the start, only shifted in time; pass a fixed start where
    the exact timestamps matter.
    """

    def __init__(
        self,
        *,
        projects: int = 3,
        sessions_per_project: int = 50,
        seed: int = 0,
        api_keys: dict[str, str] | None = None,
        error_share: float = 0.1,
        max_page_size: int = 1000,
        evolve_every: float | None = None,
        api_key: str = DEFAULT_API_KEY,
        faults: FaultConfig | None = None,
        order: str = "created",
        clock_start: datetime | None = None,
    ) -> None:
        if projects < 0 or sessions_per_project < 0:
            raise ValueError("projects and sessions_per_project must not be negative")
        if not 0.0 <= error_share <= 1.0:
            raise ValueError("error_share must be between 0 and 1")
        if max_page_size < 1:
            raise ValueError("max_page_size must be at least 1")
        if evolve_every is not None and evolve_every <= 0:
            raise ValueError("evolve_every must be positive (or None to disable)")
        if not api_key:
            raise ValueError("api_key must not be empty")
        if order not in ORDERS:
            raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
        self.seed = seed
        self._order = order
        self.page_hook: Callable[[str, int, int], None] | None = None
        self.error_share = error_share
        self.max_page_size = max_page_size
        self.evolve_every = evolve_every
        self.latency = 0.0
        self.api_key = api_key
        self._lock = threading.RLock()
        self._projects: dict[str, _Project] = {}
        self._faults: list[_Fault] = []
        self._requests: deque[RequestRecord] = deque(maxlen=REQUEST_LOG_SIZE)
        self._request_count = 0
        self._stalled = 0
        self._cache_total = 0
        self._clock_us = _clock_start_us(clock_start)
        self._fresh_us = 0  # the last timestamp a test hook handed out
        self._server: _Server | None = None
        self._serve_thread: threading.Thread | None = None
        self._evolve_thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._base_url: str | None = None
        self._fault_config = FaultConfig()
        self._fault_rng = random.Random()
        self._fault_requests = 0
        self.faults = FaultConfig() if faults is None else faults

        keys = dict(api_keys or {})
        master = random.Random(seed)
        for _ in range(projects):
            project_id = str(uuid.UUID(int=master.getrandbits(128), version=4))
            self._create(project_id, keys.pop(project_id, None), None, sessions_per_project)
        for project_id, key in keys.items():
            self._create(project_id, key, None, sessions_per_project)

    # ----------------------------------------------------------------- data

    @property
    def order(self) -> str:
        """The listing order: ``"created"`` or ``"newest-first"``."""
        return self._order

    @property
    def project_ids(self) -> list[str]:
        """Project ids in creation order."""
        with self._lock:
            return list(self._projects)

    @property
    def stalled(self) -> int:
        """Requests held by a hang or timeout fault right now (not yet answered or logged)."""
        with self._lock:
            return self._stalled

    @property
    def request_count(self) -> int:
        """Every request answered since construction (the log itself keeps only the latest)."""
        with self._lock:
            return self._request_count

    @property
    def requests(self) -> list[RequestRecord]:
        """A copy of the last ``REQUEST_LOG_SIZE`` requests, oldest first."""
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        """Forget the request log, so a test can look at its own requests only."""
        with self._lock:
            self._requests.clear()

    @property
    def clock(self) -> datetime:
        """The simulated time: ``clock_start`` (the wall clock at construction by default) plus
        ``STEP_SECONDS`` per ``step()``; nothing else moves it (after construction, nothing reads
        the wall clock)."""
        with self._lock:
            return (_EPOCH + timedelta(microseconds=self._clock_us)).replace(tzinfo=timezone.utc)

    def set_sessions(self, project_id: str, items: list[Any]) -> None:
        """Serve exactly these items (any JSON values, malformed ones included) for golden tests.

        They are listed in the order given, in either listing order; later changes follow it.
        """
        encoded = [_ENCODER.encode(item).encode() for item in items]
        stamps = [
            _parse_us(item.get("last_updated_at")) if isinstance(item, dict) else None
            for item in items
        ]
        newest = max((us for us in stamps if us is not None), default=0)
        with self._lock:
            project = self._projects.get(project_id)
            if project is None:
                project = self._create(project_id, None, None, 0)
            project.items = encoded
            project.newest_us = newest
            self._bump(project)

    def sessions(self, project_id: str) -> list[Any]:
        """A deep copy of the project's current items, in listing order."""
        with self._lock:
            items = list(self._project(project_id).items)
        return [json.loads(item) for item in items]

    def add_project(
        self,
        project_id: str,
        *,
        api_key: str | None = None,
        organization_id: str | None = None,
        sessions: int = 0,
    ) -> None:
        """Add a project (``api_key=None``: the shared key works); ValueError if it exists."""
        if sessions < 0:
            raise ValueError("sessions must not be negative")
        with self._lock:
            if project_id in self._projects:
                raise ValueError(f"project {project_id!r} already exists")
            self._create(project_id, api_key, organization_id, sessions)

    def set_endless(self, project_id: str, endless: bool = True) -> None:
        """Make every page repeat the first page's items with a fresh next_page_token, forever."""
        with self._lock:
            self._project(project_id).endless = endless

    def set_repeat_token(self, project_id: str, repeat: bool = True) -> None:
        """Make every page carry the same next_page_token, so a naive client loops."""
        with self._lock:
            self._project(project_id).repeat_token = repeat

    def step(self, n: int = 1, seconds: float = STEP_SECONDS) -> None:
        """Advance the simulated clock ``n`` ticks of ``seconds``, evolving every project once
        per tick."""
        with self._lock:
            for _ in range(n):
                start = self._clock_us
                self._clock_us += round(seconds * 10**6)
                for project in self._projects.values():
                    self._evolve(project, start, self._clock_us)

    # ---------------------------------------------------------- test hooks

    def rerun(self, project_id: str, session_id: str) -> None:
        """Give a session a new run and the project's newest ``last_updated_at``.

        KeyError for an unknown project or session. Newest first, the session moves to the front.
        """
        with self._lock:
            project = self._project(project_id)
            index, item = self._find(project, session_id)
            rng = self._hook_rng(project)
            item["job_metadata"] = _run_dict(*_run_values(rng, self.error_share))
            if not item.get("generated_title"):
                item["generated_title"] = _TITLES[int(rng.random() * len(_TITLES))]
            self._refresh(project, index, item)

    def touch(self, project_id: str, session_id: str) -> None:
        """Give a session the project's newest ``last_updated_at`` and change nothing else.

        KeyError for an unknown project or session. Newest first, the session moves to the front.
        """
        with self._lock:
            project = self._project(project_id)
            index, item = self._find(project, session_id)
            self._refresh(project, index, item)

    def delete_session(self, project_id: str, session_id: str) -> None:
        """Remove a session; KeyError for an unknown project or session."""
        with self._lock:
            project = self._project(project_id)
            index, _ = self._find(project, session_id)
            del project.items[index]
            self._bump(project)

    def create_sessions(self, project_id: str, count: int = 1) -> list[str]:
        """Add ``count`` sessions with the project's newest timestamps; returns their ids.

        Newest first they go to the front (the last created first), otherwise to the end.
        KeyError for an unknown project, ValueError for a negative count.
        """
        if count < 0:
            raise ValueError("count must not be negative")
        with self._lock:
            project = self._project(project_id)
            if not count:
                return []
            first = self._next_us(project, count)
            rng = self._hook_rng(project)
            items, _ = self._new_sessions(project, count, 0, 0, 0.7, rng=rng, first_us=first)
            if self._order == "newest-first":
                project.items[:0] = reversed(items)
            else:
                project.items.extend(items)
            self._bump(project)
        return [json.loads(item)["session_id"] for item in items]

    def on_page(
        self, callback: Callable[[str, int, int], None] | None
    ) -> Callable[[str, int, int], None] | None:
        """Set ``page_hook`` (None clears it); returns ``callback``, so it works as a decorator."""
        self.page_hook = callback
        return callback

    # -------------------------------------------------------------- faults

    def fail_next(
        self,
        count: int = 1,
        *,
        status: int = 503,
        project_id: str | None = None,
        retry_after: str | None = None,
        detail: str = "Service Unavailable",
    ) -> None:
        """Answer the next ``count`` chat requests with ``status`` and ``{"detail": detail}``."""
        self._add_fault(
            _Fault("fail", count, project_id, status=status, retry_after=retry_after, detail=detail)
        )

    def hang_next(
        self, count: int = 1, *, seconds: float = 5.0, project_id: str | None = None
    ) -> None:
        """Delay the next ``count`` chat requests by ``seconds`` (then answer normally)."""
        self._add_fault(_Fault("hang", count, project_id, seconds=seconds))

    def truncate_next(self, count: int = 1, *, project_id: str | None = None) -> None:
        """Cut the body of the next ``count`` chat answers in half (Content-Length matches)."""
        self._add_fault(_Fault("truncate", count, project_id))

    def clear_faults(self) -> None:
        """Drop every pending one-shot fault (``faults = FaultConfig()`` ends recurring ones)."""
        with self._lock:
            self._faults.clear()

    @property
    def faults(self) -> FaultConfig:
        """The recurring faults in force; ``FaultConfig()`` (the default) injects none."""
        with self._lock:
            return self._fault_config

    @faults.setter
    def faults(self, config: FaultConfig) -> None:
        """Replace the recurring faults and restart their draws.

        The fault RNG and the request count that bursts are measured from start afresh, so what
        follows depends only on the seed, the config and the requests from here on.
        """
        if not isinstance(config, FaultConfig):
            raise TypeError("faults must be a FaultConfig")
        with self._lock:
            self._fault_config = config
            self._fault_rng = random.Random(f"faults:{self.seed}")
            self._fault_requests = 0
            for project in self._projects.values():
                self._drop_pages(project)  # malformed items are decided when a page is rendered

    # -------------------------------------------------------------- server

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Bind and serve in a daemon thread; returns the base URL (port 0 picks a free one)."""
        with self._lock:
            if self._server is not None:
                raise RuntimeError("simulator already started")
            self._stopping = threading.Event()
            server_cls = _Server6 if ":" in host else _Server
            server = server_cls((host, port), _Handler, self, self._stopping)
            self._server = server
            bound_host = host
            if host in ("", "0.0.0.0"):
                bound_host = "127.0.0.1"
            elif host == "::":
                bound_host = "::1"
            if ":" in bound_host:
                bound_host = f"[{bound_host}]"
            self._base_url = f"http://{bound_host}:{server.server_address[1]}"
            self._serve_thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.1},
                name="simulator-http",
                daemon=True,
            )
            self._serve_thread.start()
            if self.evolve_every is not None:
                self._evolve_thread = threading.Thread(
                    target=self._evolve_loop,
                    args=(self.evolve_every, self._stopping),
                    name="simulator-evolve",
                    daemon=True,
                )
                self._evolve_thread.start()
            return self._base_url

    def stop(self) -> None:
        """Stop serving, close open keep-alive connections and join the threads; idempotent."""
        with self._lock:
            server, self._server = self._server, None
            serve_thread, self._serve_thread = self._serve_thread, None
            evolve_thread, self._evolve_thread = self._evolve_thread, None
            self._stopping.set()
        if server is not None:
            server.shutdown()
            server.close_connections()
            server.server_close()
        for thread in (serve_thread, evolve_thread):
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout=10)

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the running server."""
        if self._base_url is None:
            raise RuntimeError("simulator not started")
        return self._base_url

    def __enter__(self) -> Simulator:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------ internals

    def _project(self, project_id: str) -> _Project:
        try:
            return self._projects[project_id]
        except KeyError:
            raise KeyError(f"unknown project {project_id!r}") from None

    def _create(
        self, project_id: str, api_key: str | None, organization_id: str | None, sessions: int
    ) -> _Project:
        rng = random.Random(f"{self.seed}:{project_id}")
        pool = tuple(f"idx-{rng.getrandbits(48):012x}" for _ in range(4))
        project = _Project(project_id, api_key, organization_id, rng, pool, target=sessions)
        self._projects[project_id] = project
        if sessions:
            start = self._clock_us - HISTORY_DAYS * 86_400 * 10**6
            items, stamps = self._new_sessions(project, sessions, start, self._clock_us, 0.85)
            if self._order == "newest-first":
                ranks = sorted(range(len(items)), key=stamps.__getitem__, reverse=True)
                items = [items[i] for i in ranks]
            project.items = items
            project.newest_us = max(stamps)
        return project

    def _new_sessions(
        self,
        project: _Project,
        count: int,
        start_us: int,
        end_us: int,
        run_share: float,
        *,
        rng: random.Random | None = None,
        first_us: int | None = None,
    ) -> tuple[list[bytes], list[int]]:
        """Synthetic sessions with timestamps in (start_us, end_us], rendered straight to JSON.

        Returns the items and their timestamps (microseconds). With ``first_us`` the timestamps
        are ``first_us``, ``first_us + 1``, ... instead. ``rng`` defaults to the project's.
        Formatting with a template instead of building dicts keeps 200,000 sessions at about a
        second and avoids a transient copy of every item as Python objects.
        """
        rng = project.rng if rng is None else rng
        rand = rng.random
        bits = rng.getrandbits
        pool = [_ENCODER.encode(index_id) for index_id in project.index_pool]
        span = end_us - start_us
        error_share = self.error_share
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

    def _evolve(self, project: _Project, start_us: int, end_us: int) -> None:
        """One tick: some sessions re-run, some are deleted, some appear (a few never run).

        Newest first, re-run and new sessions go to the front, newest first among themselves;
        their timestamps then also lie after every timestamp the project has (test hooks may
        have handed out ones after ``start_us``), so the listing stays sorted.
        """
        rng = project.rng
        items = project.items
        size = len(items)
        span = end_us - start_us
        newest_first = self._order == "newest-first"
        if newest_first:
            start_us = max(start_us, project.newest_us)
        moved: list[tuple[int, bytes]] = []  # (timestamp, item) of re-runs, in listing order
        if size:
            # Means: about 2% of sessions deleted and 2% re-run per tick, at least a few.
            deletes = min(size, rng.randint(0, max(1, round(size * 0.04))))
            reruns = min(size - deletes, 1 + rng.randint(0, max(2, round(size * 0.04))))
            chosen = rng.sample(range(size), deletes + reruns)
            gone = set(chosen[:deletes])
            rerun_stamps: dict[int, int] = {}
            for index in chosen[deletes:]:
                item = json.loads(items[index])
                if not isinstance(item, dict):
                    continue  # malformed golden data stays as it is
                # Keep the session's timestamp style: naive, "+00:00" or "Z".
                style = _ts_style(item.get("last_updated_at"))
                us = start_us + 1 + int(rng.random() * span)
                item["last_updated_at"] = _format_ts(us, style)
                item["job_metadata"] = _run_dict(*_run_values(rng, self.error_share))
                if not item.get("generated_title"):
                    item["generated_title"] = _TITLES[int(rng.random() * len(_TITLES))]
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
        new_items, stamps = self._new_sessions(project, created, start_us, start_us + span, 0.7)
        if stamps:
            project.newest_us = max(project.newest_us, *stamps)
        if newest_first:
            moved.extend(zip(stamps, new_items, strict=True))
            moved.sort(key=lambda pair: pair[0], reverse=True)  # stable, so ties keep their order
            items[:0] = [item for _, item in moved]
        else:
            items.extend(new_items)
        project.items = items
        self._bump(project)

    def _hook_rng(self, project: _Project) -> random.Random:
        if project.hook_rng is None:
            project.hook_rng = random.Random(f"{self.seed}:{project.project_id}:hooks")
        return project.hook_rng

    def _next_us(self, project: _Project, count: int = 1) -> int:
        """The first of ``count`` fresh timestamps (microseconds) for a test hook.

        They follow the clock, every stamp handed out before and the project's newest, so they
        increase strictly from call to call without reading the wall clock.
        """
        first = max(self._clock_us, self._fresh_us, project.newest_us) + 1
        self._fresh_us = first + count - 1
        project.newest_us = max(project.newest_us, self._fresh_us)
        return first

    def _find(self, project: _Project, session_id: str) -> tuple[int, dict[str, Any]]:
        """The index and decoded item of the first session with this id; KeyError if none."""
        needle = b'"session_id":' + _ENCODER.encode(session_id).encode()
        for index, raw in enumerate(project.items):
            if needle in raw:
                value = json.loads(raw)
                if isinstance(value, dict) and value.get("session_id") == session_id:
                    return index, value
        raise KeyError(f"unknown session {session_id!r} in project {project.project_id!r}")

    def _refresh(self, project: _Project, index: int, item: dict[str, Any]) -> None:
        """Store ``item`` with a fresh newest ``last_updated_at`` (to the front, newest first)."""
        style = _ts_style(item.get("last_updated_at"))
        item["last_updated_at"] = _format_ts(self._next_us(project), style)
        encoded = _ENCODER.encode(item).encode()
        if self._order == "newest-first":
            del project.items[index]
            project.items.insert(0, encoded)
        else:
            project.items[index] = encoded
        self._bump(project)

    def _bump(self, project: _Project) -> None:
        """Invalidate the project's rendered pages after its data changed."""
        project.version += 1
        self._drop_pages(project)

    def _drop_pages(self, project: _Project) -> None:
        self._cache_total -= project.cache_bytes
        project.cache.clear()
        project.cache_bytes = 0

    def _add_fault(self, fault: _Fault) -> None:
        if fault.remaining < 1:
            raise ValueError("count must be at least 1")
        with self._lock:
            self._faults.append(fault)

    def _take_fault(self, kind: str, project_id: str | None) -> _Fault | None:
        for i, fault in enumerate(self._faults):
            if fault.kind == kind and fault.project_id in (None, project_id):
                fault.remaining -= 1
                if fault.remaining <= 0:
                    del self._faults[i]
                return fault
        return None

    def _decide(self) -> _Decision | None:
        """Draw the recurring faults for one chat request; call with the lock held.

        Every request draws the same five numbers whichever faults are on, so changing one
        share does not reshuffle when the others strike.
        """
        config = self._fault_config
        if not config.per_request:
            return None
        self._fault_requests += 1
        number = self._fault_requests
        rand = self._fault_rng.random
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

    def _malform(self, project: _Project, items: list[bytes]) -> list[bytes]:
        """Replace ``malformed_share`` of ``items`` by broken ones; call with the lock held.

        The choice hashes the seed, the project and the item's bytes, so it does not depend on
        request order or page size, and a page rendered again comes out the same.
        """
        share = self._fault_config.malformed_share
        key = hashlib.blake2b(f"{self.seed}:{project.project_id}".encode(), digest_size=32).digest()
        out: list[bytes] = []
        for item in items:
            digest = hashlib.blake2b(item, digest_size=8, key=key).digest()
            bits = int.from_bytes(digest, "big")
            if (bits >> 11) / 2**53 < share:
                item = _malformed_item(item, bits & 0x7FF)
            out.append(item)
        return out

    def _evolve_loop(self, every: float, stopping: threading.Event) -> None:
        # Ticks as long as the wait: simulated time keeps to the real clock it started from.
        while not stopping.wait(every):
            self.step(seconds=every)

    def _handle(
        self, method: str, target: str, authorization: str | None, stopping: threading.Event
    ) -> tuple[int, bytes, tuple[tuple[str, str], ...]]:
        """Answer one request: (status, body, extra headers). Sleeps happen outside the lock."""
        split = urlsplit(target)
        path = split.path
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        project_id = query.get("project_id")
        latency = self.latency
        if latency > 0:
            stopping.wait(latency)
        is_chat = path == CHAT_PATH
        decision: _Decision | None = None
        if is_chat:
            with self._lock:
                hang = self._take_fault("hang", project_id)
                if method == "GET":
                    decision = self._decide()
            stall = hang.seconds if hang is not None else decision.stall if decision else 0.0
            if stall > 0:
                with self._lock:
                    self._stalled += 1
                try:
                    stopping.wait(stall)
                finally:
                    with self._lock:
                        self._stalled -= 1
        with self._lock:
            status, body, headers, listed = self._answer(
                method, path, is_chat, query, authorization, decision
            )
            if (
                is_chat
                and status == 200
                and (
                    self._take_fault("truncate", project_id) is not None
                    or (decision is not None and decision.truncate)
                )
            ):
                body = body[: len(body) // 2]
            self._request_count += 1
            self._requests.append(RequestRecord(path, query, authorization, status, method))
        hook = self.page_hook
        if hook is not None and listed is not None:
            try:
                hook(*listed)
            except Exception:
                _log.exception("page_hook failed for %s", target)
        return status, body, headers

    def _answer(
        self,
        method: str,
        path: str,
        is_chat: bool,
        query: dict[str, str],
        authorization: str | None,
        decision: _Decision | None = None,
    ) -> tuple[int, bytes, tuple[tuple[str, str], ...], tuple[str, int, int] | None]:
        """(status, body, headers, listed): ``listed`` is (project_id, offset, page_size) of a
        rendered chat page, else None."""
        if not is_chat:
            return 404, _detail_body("Not Found"), (), None
        if method != "GET":
            return 405, _detail_body("Method Not Allowed"), (("Allow", "GET"),), None
        fault = self._take_fault("fail", query.get("project_id"))
        if fault is not None:
            headers = (("Retry-After", fault.retry_after),) if fault.retry_after else ()
            return fault.status, _detail_body(fault.detail), headers, None
        if decision is not None and decision.error is not None:
            status, detail, extra = decision.error
            return status, _detail_body(detail), extra, None
        try:
            body, listed = self._list(query, authorization)
        except _ApiError as err:
            return err.status, _detail_body(err.detail), err.headers, None
        return 200, body, (), listed

    def _list(
        self, query: dict[str, str], authorization: str | None
    ) -> tuple[bytes, tuple[str, int, int]]:
        """The chat listing, checked in the order the real service does: auth, input, access.

        Returns the page and (project_id, offset, page_size); an endless page's offset is 0.
        """
        key = _bearer(authorization)
        known = key == self.api_key or any(p.api_key == key for p in self._projects.values())
        if not known:
            raise _ApiError(401, "Invalid API key", (("WWW-Authenticate", "Bearer"),))
        project_id = query.get("project_id")
        if project_id is None:
            raise _ApiError(422, _missing("project_id"))
        page_size = _page_size(query.get("page_size"), self.max_page_size)
        project = self._projects.get(project_id)
        if project is None:
            raise _ApiError(404, f"Project {project_id} not found")
        if key != (project.api_key or self.api_key):
            raise _ApiError(403, "API key does not have access to this project")
        organization_id = query.get("organization_id")
        if project.organization_id and organization_id not in (None, project.organization_id):
            raise _ApiError(404, f"Project {project_id} not found in organization")
        token = query.get("page_token") or None
        kind, number = ("o", 0) if token is None else _decode_token(token, project.tag)
        if project.endless or project_id in self._fault_config.endless_projects:
            counter = number + 1 if kind == "e" else 1
            return self._endless_page(project, page_size, counter), (project_id, 0, page_size)
        if kind != "o":
            raise _ApiError(400, "Invalid page_token")
        return self._page(project, page_size, number), (project_id, number, page_size)

    def _page(self, project: _Project, page_size: int, offset: int) -> bytes:
        mode = "repeat" if project.repeat_token else "normal"
        cache_key = (mode, page_size, offset)
        page = project.cache.get(cache_key)
        if page is not None:
            project.cache.move_to_end(cache_key)
            return page
        end = offset + page_size
        chunk = project.items[offset:end]
        if self._fault_config.malformed_share:
            chunk = self._malform(project, chunk)
        parts = [b'{"items":[', b",".join(chunk), b"]"]
        if project.repeat_token:
            next_token: str | None = _encode_token(project.tag, "o", page_size)
        elif end < len(project.items):
            next_token = _encode_token(project.tag, "o", end)
        else:
            next_token = None
        if next_token is not None:
            parts.append(b',"next_page_token":"' + next_token.encode() + b'"')
        parts.append(b"}")
        page = b"".join(parts)
        self._remember(project, cache_key, page)
        return page

    def _endless_page(self, project: _Project, page_size: int, counter: int) -> bytes:
        cache_key = ("endless", page_size, 0)
        prefix = project.cache.get(cache_key)
        if prefix is None:
            chunk = project.items[:page_size]
            if self._fault_config.malformed_share:
                chunk = self._malform(project, chunk)
            prefix = b'{"items":[' + b",".join(chunk) + b"]"
            self._remember(project, cache_key, prefix)
        token = _encode_token(project.tag, "e", counter).encode()
        return prefix + b',"next_page_token":"' + token + b'"}'

    def _remember(self, project: _Project, key: tuple[str, int, int], page: bytes) -> None:
        """Cache a rendered page, evicting least recently used pages beyond the byte budget."""
        if len(page) > PAGE_CACHE_BYTES:
            return
        project.cache[key] = page
        project.cache_bytes += len(page)
        self._cache_total += len(page)
        if self._cache_total <= PAGE_CACHE_BYTES:
            return
        victims = [project, *(p for p in self._projects.values() if p is not project)]
        for victim in victims:
            while self._cache_total > PAGE_CACHE_BYTES and victim.cache:
                _, dropped = victim.cache.popitem(last=False)
                victim.cache_bytes -= len(dropped)
                self._cache_total -= len(dropped)


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


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise _ApiError(401, "Not authenticated", (("WWW-Authenticate", "Bearer"),))
    scheme, _, key = authorization.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise _ApiError(401, "Invalid authentication scheme", (("WWW-Authenticate", "Bearer"),))
    return key


def _page_size(raw: str | None, maximum: int) -> int:
    """Parses page_size like FastAPI would (422 on junk or < 1); values above the maximum clamp."""
    if raw is None:
        return min(DEFAULT_PAGE_SIZE, maximum)
    try:
        value = int(raw)
    except ValueError:
        raise _ApiError(
            422,
            [
                {
                    "type": "int_parsing",
                    "loc": ["query", "page_size"],
                    "msg": "Input should be a valid integer, unable to parse string as an integer",
                    "input": raw,
                }
            ],
        ) from None
    if value < 1:
        raise _ApiError(
            422,
            [
                {
                    "type": "greater_than_equal",
                    "loc": ["query", "page_size"],
                    "msg": "Input should be greater than or equal to 1",
                    "input": raw,
                    "ctx": {"ge": 1},
                }
            ],
        )
    return min(value, maximum)


class _Handler(BaseHTTPRequestHandler):
    """Thin HTTP layer: all decisions are made by ``Simulator._handle``."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "llamacloud-simulator"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        cast("_Server", self.server).track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            cast("_Server", self.server).track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: a benchmark would otherwise spend its time writing to stderr."""

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        server = cast("_Server", self.server)
        length = self.headers.get("Content-Length")
        if length and length.isdigit():
            self.rfile.read(int(length))  # drain, so the connection can be reused
        status, body, headers = server.simulator._handle(
            method, self.path, self.headers.get("Authorization"), server.stopping
        )
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            self.close_connection = True  # the client gave up (e.g. after its timeout)


class _Server(ThreadingHTTPServer):
    """Threaded server that remembers open connections so ``stop()`` can close keep-alives."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        simulator: Simulator,
        stopping: threading.Event,
    ) -> None:
        self.simulator = simulator
        self.stopping = stopping
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def track(self, connection: socket.socket, *, add: bool) -> None:
        with self._connections_lock:
            if add:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients dropping connections is normal here; anything else is still reported."""
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class _Server6(_Server):
    address_family = socket.AF_INET6


def _parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--listen must be HOST:PORT, got {value!r}")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def _share(text: str) -> float:
    """An argparse type for a share: a number from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 1, got {text!r}")
    return value


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {text!r}")
        return value

    return parse


def _seconds(text: str) -> float:
    """An argparse type for a duration: a finite number of seconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not 0.0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def _add_fault_options(parser: argparse.ArgumentParser) -> None:
    defaults = FaultConfig()
    group = parser.add_argument_group(
        "recurring faults",
        "Injected into GET /api/v1/chat, drawn from an RNG seeded by --seed, so the same seed "
        "and request order give the same faults. All are off by default. Per request they are "
        "checked in this order: a burst 503, a 429, a random 5xx.",
    )
    group.add_argument(
        "--rate-limit-share",
        type=_share,
        default=defaults.rate_limit_share,
        metavar="F",
        help="share of chat requests answered 429 with Retry-After, 0..1 (default: 0)",
    )
    group.add_argument(
        "--rate-limit-retry-after",
        type=_int_at_least(0),
        default=defaults.rate_limit_retry_after,
        metavar="SECONDS",
        help="Retry-After value sent with those 429s (default: %(default)s)",
    )
    group.add_argument(
        "--server-error-share",
        type=_share,
        default=defaults.server_error_share,
        metavar="F",
        help="share of chat requests answered 500, 502 or 503 (drawn at random), 0..1 (default: 0)",
    )
    group.add_argument(
        "--server-error-burst-every",
        type=_int_at_least(0),
        default=defaults.server_error_burst_every,
        metavar="N",
        help="every N-th chat request starts a burst of 503s; 0 disables bursts (default: 0)",
    )
    group.add_argument(
        "--server-error-burst-length",
        type=_int_at_least(1),
        default=defaults.server_error_burst_length,
        metavar="L",
        help="consecutive 503s per burst, the starting request included (default: %(default)s)",
    )
    group.add_argument(
        "--timeout-share",
        type=_share,
        default=defaults.timeout_share,
        metavar="F",
        help="share of chat requests that stall --timeout-seconds, then answer normally, 0..1 "
        "(default: 0)",
    )
    group.add_argument(
        "--timeout-seconds",
        type=_seconds,
        default=defaults.timeout_seconds,
        metavar="SECONDS",
        help="how long a stalled request stalls; make it longer than the client's timeout "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--truncate-share",
        type=_share,
        default=defaults.truncate_share,
        metavar="F",
        help="share of 200 answers cut in half, leaving invalid JSON, 0..1 (default: 0)",
    )
    group.add_argument(
        "--malformed-share",
        type=_share,
        default=defaults.malformed_share,
        metavar="F",
        help="share of listed items replaced by a malformed one (not an object, no session_id, "
        "a token count that is a string or negative, job_metadata not an object), 0..1 "
        "(default: 0)",
    )
    group.add_argument(
        "--endless-project",
        action="append",
        default=[],
        metavar="ID",
        help="make this project's listing never end; repeatable. Project ids are fixed by "
        "--seed and --projects and printed at start",
    )


def _fault_config(args: argparse.Namespace) -> FaultConfig:
    return FaultConfig(
        rate_limit_share=args.rate_limit_share,
        rate_limit_retry_after=args.rate_limit_retry_after,
        server_error_share=args.server_error_share,
        server_error_burst_every=args.server_error_burst_every,
        server_error_burst_length=args.server_error_burst_length,
        timeout_share=args.timeout_share,
        timeout_seconds=args.timeout_seconds,
        truncate_share=args.truncate_share,
        malformed_share=args.malformed_share,
        endless_projects=tuple(args.endless_project),
    )


def main(argv: list[str] | None = None) -> int:
    """Run the simulator until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m exporter.simulator",
        description=(
            "Serve a simulated LlamaCloud chat API (GET /api/v1/chat) with synthetic, evolving "
            "projects. Prints 'simulator listening on URL' and one 'project ID' line per project, "
            "then serves until interrupted."
        ),
    )
    parser.add_argument(
        "--listen",
        default="127.0.0.1:0",
        metavar="HOST:PORT",
        help="address to bind; port 0 picks a free port (default: %(default)s)",
    )
    parser.add_argument("--projects", type=int, default=3, help="number of projects (default: 3)")
    parser.add_argument(
        "--sessions", type=int, default=50, help="initial sessions per project (default: 50)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the data and of the faults (default: 0)"
    )
    parser.add_argument(
        "--evolve-every",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="evolve the data this often; 0 freezes it (default: 5)",
    )
    parser.add_argument(
        "--error-share",
        type=float,
        default=0.1,
        metavar="F",
        help="share of runs that fail, 0..1 (default: 0.1)",
    )
    parser.add_argument(
        "--latency",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="delay added to every request (default: 0)",
    )
    parser.add_argument(
        "--api-key",
        default=DEFAULT_API_KEY,
        metavar="KEY",
        help="bearer key accepted for every project (default: %(default)s)",
    )
    parser.add_argument(
        "--order",
        choices=ORDERS,
        default="newest-first",
        help="listing order: newest-first by last_updated_at (sessions that run again or appear "
        "during a paged listing shift it, as offset tokens allow) or created, in creation order "
        "(default: %(default)s)",
    )
    _add_fault_options(parser)
    args = parser.parse_args(argv)
    try:
        host, port = _parse_listen(args.listen)
        if args.latency < 0:
            raise ValueError("--latency must not be negative")
        simulator = Simulator(
            projects=args.projects,
            sessions_per_project=args.sessions,
            seed=args.seed,
            error_share=args.error_share,
            evolve_every=args.evolve_every if args.evolve_every > 0 else None,
            api_key=args.api_key,
            faults=_fault_config(args),
            order=args.order,
        )
        unknown = [p for p in args.endless_project if p not in simulator.project_ids]
        if unknown:
            raise ValueError(f"--endless-project: no such project: {', '.join(unknown)}")
    except ValueError as err:
        parser.error(str(err))
    simulator.latency = args.latency

    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    previous: dict[signal.Signals, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Outside the main thread signal() raises ValueError: the caller handles signals then.
        with contextlib.suppress(ValueError):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        try:
            url = simulator.start(host, port)
        except OSError as err:
            print(f"simulator: cannot listen on {args.listen}: {err}", file=sys.stderr)
            return 1
        print(f"simulator listening on {url}")
        for project_id in simulator.project_ids:
            print(f"project {project_id}")
        sys.stdout.flush()
        while not done.wait(1.0):
            pass
        return 0
    finally:
        simulator.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    raise SystemExit(main())
