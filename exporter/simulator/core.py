"""The ``Simulator``: fault state, the request log and the server, with its projects (mixed
in from ``projects``), its sessions' changes and test hooks (from ``sessions``) and its chat
listing and session reads (from ``chat``), behind one lock.
"""

from __future__ import annotations

import logging
import random
import threading
from collections import deque
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from email.message import Message
from types import TracebackType
from urllib.parse import parse_qsl, urlsplit

from .chat import _ChatListing
from .faults import FaultConfig, _Decision, _draw_decision, _Fault
from .model import _EPOCH, _clock_start_us
from .projects import ORGANIZATION_ID, _list_projects, _Projects
from .server import (
    DEFAULT_API_KEY,
    ENDPOINTS,
    RequestRecord,
    _ApiError,
    _detail_body,
    _Handler,
    _route,
    _Server,
    _Server6,
)
from .sessions import _Sessions

# Listing orders: ``Simulator(order=...)`` and ``--order``.
ORDERS = ("newest-first", "created")
REQUEST_LOG_SIZE = 10_000
# The package's name, which callers configure logging by (as before it was split up).
_log = logging.getLogger("exporter.simulator")


class Simulator(_Projects, _Sessions, _ChatListing):
    """A LlamaCloud chat API with synthetic, evolving projects and injectable faults.

    ``GET /api/v1/chat`` lists a project's sessions, ``GET /api/v1/chat/{session_id}`` reads
    one with its history (``history`` says which runs it holds); ``GET /api/v2/projects`` lists the
    projects of an organization (the ``projects`` module says who may list which). Projects
    belong to ``organization_id`` unless added with another one, carry generated names
    (``projects()``) and can be added and removed while serving (``add_project``,
    ``remove_project``).

    Faults come two ways: one-shot calls (``fail_next``, ``hang_next``, ``truncate_next``) for
    tests that need one exact failure, and a recurring :class:`FaultConfig` (``faults=`` or the
    ``faults`` attribute) for soak runs, demos and benchmarks. Every public method is
    thread-safe: one lock guards the data, the faults and the log.

    ``order`` is ``"created"`` (items in creation order; a re-run stays in place) or
    ``"newest-first"`` (by ``last_updated_at`` descending, ties in a stable order; a re-run or a
    new session goes to the front). ``burst`` is the chance that a session which ``step()``
    re-runs runs once more, drawn again after each extra run (at most ``MAX_RUNS_PER_STEP``
    runs a step), so the exporter sees several runs between two listings; 0, the default,
    draws nothing and keeps the data of a seed as it was. ``page_hook``, if set, is called as
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
        organization_id: str = ORGANIZATION_ID,
        burst: float = 0.0,
    ) -> None:
        if projects < 0 or sessions_per_project < 0:
            raise ValueError("projects and sessions_per_project must not be negative")
        if not 0.0 <= error_share <= 1.0:
            raise ValueError("error_share must be between 0 and 1")
        if not 0.0 <= burst <= 1.0:
            raise ValueError("burst must be between 0 and 1")
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
        self.burst = burst
        self.max_page_size = max_page_size
        self.evolve_every = evolve_every
        self.latency = 0.0
        self.api_key = api_key
        self._lock = threading.RLock()
        self._init_projects(organization_id, seed)
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

        self._seed_projects(projects, dict(api_keys or {}), sessions_per_project)

    # ----------------------------------------------------------------- data

    @property
    def order(self) -> str:
        """The listing order: ``"created"`` or ``"newest-first"``."""
        return self._order

    @property
    def stalled(self) -> int:
        """Requests held by a hang or timeout fault right now (not yet answered or logged)."""
        with self._lock:
            return self._stalled

    @property
    def open_connections(self) -> int:
        """Client connections open now."""
        with self._lock:
            server = self._server
        return server.open_connections if server is not None else 0

    @property
    def peak_connections(self) -> int:
        """The most client connections that were open at once since ``start()``: what a
        client's connection pool really held."""
        with self._lock:
            server = self._server
        return server.peak_connections if server is not None else 0

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

    def set_endless(self, project_id: str, endless: bool = True) -> None:
        """Make every page repeat the first page's items with a fresh next_page_token, forever."""
        with self._lock:
            self._project(project_id).endless = endless

    def set_repeat_token(self, project_id: str, repeat: bool = True) -> None:
        """Make every page carry the same next_page_token, so a naive client loops."""
        with self._lock:
            self._project(project_id).repeat_token = repeat

    def on_page(
        self, callback: Callable[[str, int, int], None] | None
    ) -> Callable[[str, int, int], None] | None:
        """Set ``page_hook`` (None clears it); returns ``callback``, so it works as a decorator."""
        self.page_hook = callback
        return callback

    # -------------------------------------------------------------- faults

    # A one-shot fault strikes the requests of its ``endpoint``: ``"chat"`` (the listing, the
    # default), ``"session"`` (``GET /api/v1/chat/{session_id}``; ``project_id`` narrows either
    # to one project's), ``"projects"`` (``GET /api/v2/projects``), or None: any.

    def fail_next(
        self,
        count: int = 1,
        *,
        status: int = 503,
        project_id: str | None = None,
        retry_after: str | None = None,
        detail: str = "Service Unavailable",
        endpoint: str | None = "chat",
    ) -> None:
        """Answer the next ``count`` requests with ``status`` and ``{"detail": detail}``.

        ``fail_next(10**6, endpoint="projects")`` is a project discovery outage;
        ``clear_faults(endpoint="projects")`` ends it.
        """
        self._add_fault(
            _Fault(
                "fail", count, project_id, endpoint, status, retry_after=retry_after, detail=detail
            )
        )

    def hang_next(
        self,
        count: int = 1,
        *,
        seconds: float = 5.0,
        project_id: str | None = None,
        endpoint: str | None = "chat",
    ) -> None:
        """Delay the next ``count`` requests by ``seconds`` (then answer normally)."""
        self._add_fault(_Fault("hang", count, project_id, endpoint, seconds=seconds))

    def truncate_next(
        self, count: int = 1, *, project_id: str | None = None, endpoint: str | None = "chat"
    ) -> None:
        """Cut the body of the next ``count`` 200 answers in half (Content-Length matches)."""
        self._add_fault(_Fault("truncate", count, project_id, endpoint))

    def clear_faults(self, endpoint: str | None = None) -> None:
        """Drop the pending one-shot faults, or those aimed at ``endpoint`` only
        (``faults = FaultConfig()`` ends recurring ones)."""
        with self._lock:
            self._faults[:] = [f for f in self._faults if endpoint not in (None, f.endpoint)]

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
            server = server_cls((host, port), _Handler, self._handle, self._stopping)
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

    def _add_fault(self, fault: _Fault) -> None:
        if fault.remaining < 1:
            raise ValueError("count must be at least 1")
        if fault.endpoint is not None and fault.endpoint not in ENDPOINTS:
            raise ValueError(f"endpoint must be one of {', '.join(ENDPOINTS)} or None")
        if fault.endpoint == "projects" and fault.project_id is not None:
            raise ValueError("project_id narrows chat and session faults only")
        with self._lock:
            self._faults.append(fault)

    def _take_fault(self, kind: str, endpoint: str, project_id: str | None) -> _Fault | None:
        """The first pending fault of ``kind`` for a request (counted down), or None."""
        for i, fault in enumerate(self._faults):
            if (
                fault.kind == kind
                and fault.endpoint in (None, endpoint)
                and fault.project_id in (None, project_id)
            ):
                fault.remaining -= 1
                if fault.remaining <= 0:
                    del self._faults[i]
                return fault
        return None

    def _decide(self, endpoint: str) -> _Decision | None:
        """Draw the recurring faults for one GET request; call with the lock held."""
        config = self._fault_config
        if not config.per_request or endpoint not in config.endpoints:
            return None
        self._fault_requests += 1
        return _draw_decision(config, self._fault_rng, self._fault_requests)

    def _evolve_loop(self, every: float, stopping: threading.Event) -> None:
        # Ticks as long as the wait: simulated time keeps to the real clock it started from.
        while not stopping.wait(every):
            self.step(seconds=every)

    def _handle(
        self, method: str, target: str, sent: Message, stopping: threading.Event
    ) -> tuple[int, bytes, tuple[tuple[str, str], ...]]:
        """Answer one request: (status, body, extra headers). Sleeps happen outside the lock."""
        authorization = sent.get("Authorization")
        split = urlsplit(target)
        path = split.path
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        endpoint, session_id = _route(path)
        # Faults aimed at one project strike its chat listing and its session reads only.
        project_id = query.get("project_id") if endpoint in ("chat", "session") else None
        latency = self.latency
        if latency > 0:
            stopping.wait(latency)
        decision: _Decision | None = None
        if endpoint is not None:
            with self._lock:
                hang = self._take_fault("hang", endpoint, project_id)
                if method == "GET":
                    decision = self._decide(endpoint)
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
                method, endpoint, project_id, query, authorization, decision, session_id
            )
            if (
                endpoint is not None
                and status == 200
                and (
                    self._take_fault("truncate", endpoint, project_id) is not None
                    or (decision is not None and decision.truncate)
                )
            ):
                body = body[: len(body) // 2]
            self._request_count += 1
            self._requests.append(
                RequestRecord(
                    path,
                    query,
                    authorization,
                    status,
                    method,
                    {k.lower(): v for k, v in sent.items()},
                )
            )
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
        endpoint: str | None,
        project_id: str | None,
        query: dict[str, str],
        authorization: str | None,
        decision: _Decision | None = None,
        session_id: str | None = None,
    ) -> tuple[int, bytes, tuple[tuple[str, str], ...], tuple[str, int, int] | None]:
        """(status, body, headers, listed): ``listed`` is (project_id, offset, page_size) of a
        rendered chat page, else None."""
        if endpoint is None:
            return 404, _detail_body("Not Found"), (), None
        if method != "GET":
            return 405, _detail_body("Method Not Allowed"), (("Allow", "GET"),), None
        fault = self._take_fault("fail", endpoint, project_id)
        if fault is not None:
            headers = (("Retry-After", fault.retry_after),) if fault.retry_after else ()
            return fault.status, _detail_body(fault.detail), headers, None
        if decision is not None and decision.error is not None:
            status, detail, extra = decision.error
            return status, _detail_body(detail), extra, None
        listed: tuple[str, int, int] | None = None
        try:
            if endpoint == "chat":
                body, listed = self._list(query, authorization)
            elif endpoint == "session":
                body = self._read_session(query, authorization, session_id or "")
            else:
                body = _list_projects(
                    (p for p in self._projects.values() if p.project_id not in self._hidden),
                    query,
                    authorization,
                    shared_key=self.api_key,
                    organization_id=self._organization_id,
                    organizations=self._organizations,
                    max_page_size=self.max_page_size,
                )
        except _ApiError as err:
            return err.status, _detail_body(err.detail), err.headers, None
        return 200, body, (), listed
