"""How a ``Simulator``'s sessions change (which it mixes in): the clock's evolution, the test
hooks that re-run, touch, create, delete and set sessions, and what tests read back (the
items, the stop events of a session's history).

The state is the simulator's and guarded by its lock, like the rest of its data.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .history import _served_stops
from .model import (
    _ENCODER,
    _TITLES,
    STEP_SECONDS,
    _evolve,
    _find,
    _format_ts,
    _new_sessions,
    _parse_us,
    _Project,
    _push_run,
    _run_dict,
    _run_values,
    _ts_style,
)


class _Sessions:
    """The public methods that change sessions and read them back, and their internals."""

    # The simulator's, used here.
    seed: int
    error_share: float
    burst: float
    _lock: threading.RLock
    _order: str
    _clock_us: int
    _fresh_us: int
    _projects: dict[str, _Project]

    if TYPE_CHECKING:

        def _drop_pages(self, project: _Project) -> None: ...

        def _project(self, project_id: str) -> _Project: ...

        def _project_or_new(self, project_id: str) -> _Project: ...

    def set_sessions(self, project_id: str, items: list[Any]) -> None:
        """Serve exactly these items (any JSON values, malformed ones included) for golden tests.

        They are listed in the order given, in either listing order; later changes follow it.
        Each session's history starts afresh: one run, its stop event made from the item's
        ``job_metadata`` (none when that is null).
        """
        encoded = [_ENCODER.encode(item).encode() for item in items]
        stamps = [
            _parse_us(item.get("last_updated_at")) if isinstance(item, dict) else None
            for item in items
        ]
        newest = max((us for us in stamps if us is not None), default=0)
        with self._lock:
            project = self._project_or_new(project_id)
            project.items = encoded
            project.prior = {}
            project.newest_us = newest
            self._bump(project)

    def sessions(self, project_id: str) -> list[Any]:
        """A deep copy of the project's current items, in listing order."""
        with self._lock:
            items = list(self._project(project_id).items)
        return [json.loads(item) for item in items]

    def history(self, project_id: str, session_id: str) -> list[dict[str, Any]]:
        """The stop events of the session's history, oldest first, as
        ``GET /api/v1/chat/{session_id}`` serves them (``malformed_history_share`` aside): one
        per run, the last one what ``job_metadata`` shows. KeyError for an unknown project or
        session."""
        with self._lock:
            project = self._project(project_id)
            _, item = _find(project, session_id)
            return _served_stops(self.seed, project, item)

    def step(self, n: int = 1, seconds: float = STEP_SECONDS) -> None:
        """Advance the simulated clock ``n`` ticks of ``seconds``, evolving every project once
        per tick."""
        newest_first = self._order == "newest-first"
        with self._lock:
            for _ in range(n):
                start = self._clock_us
                self._clock_us += round(seconds * 10**6)
                for project in self._projects.values():
                    _evolve(
                        project, start, self._clock_us, newest_first, self.error_share, self.burst
                    )
                    self._bump(project)

    # ---------------------------------------------------------- test hooks

    def rerun(self, project_id: str, session_id: str, times: int = 1) -> None:
        """Run a session ``times`` more times and give it the project's newest
        ``last_updated_at``: each run is appended to its history, and ``job_metadata`` shows
        the last one.

        KeyError for an unknown project or session, ValueError for ``times`` below 1. Newest
        first, the session moves to the front.
        """
        if times < 1:
            raise ValueError("times must be at least 1")
        with self._lock:
            project = self._project(project_id)
            index, item = _find(project, session_id)
            rng = self._hook_rng(project)
            for _ in range(times):
                _push_run(project, item)
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
            index, item = _find(project, session_id)
            self._refresh(project, index, item)

    def delete_session(self, project_id: str, session_id: str) -> None:
        """Remove a session and its history; KeyError for an unknown project or session."""
        with self._lock:
            project = self._project(project_id)
            index, _ = _find(project, session_id)
            del project.items[index]
            project.prior.pop(session_id, None)
            self._bump(project)

    def create_sessions(
        self, project_id: str, count: int = 1, *, ids: Sequence[str] | None = None
    ) -> list[str]:
        """Add ``count`` sessions with the project's newest timestamps; returns their ids.

        ``ids`` names them (``count`` is then its length): a deleted session's id comes back as
        a new session, with a history of its own. Newest first they go to the front (the last
        created first), otherwise to the end. KeyError for an unknown project; ValueError for
        a negative count, a count that is not the number of ids, or an id that is listed.
        """
        if ids is not None:
            ids = list(ids)
            if count not in (1, len(ids)):
                raise ValueError("count must be the number of ids")
            if not all(isinstance(sid, str) and sid for sid in ids) or len(set(ids)) < len(ids):
                raise ValueError("ids must be distinct, non-empty strings")
            count = len(ids)
        if count < 0:
            raise ValueError("count must not be negative")
        with self._lock:
            project = self._project(project_id)
            for sid in ids or ():
                try:
                    _find(project, sid)
                except KeyError:
                    continue
                raise ValueError(f"session {sid!r} exists in project {project_id!r}")
            if not count:
                return []
            first = self._next_us(project, count)
            rng = self._hook_rng(project)
            items, _ = _new_sessions(
                project, count, 0, 0, 0.7, error_share=self.error_share, rng=rng, first_us=first
            )
            if ids is not None:
                items = [_renamed(item, sid) for item, sid in zip(items, ids, strict=True)]
                for sid in ids:
                    project.prior.pop(sid, None)
            if self._order == "newest-first":
                project.items[:0] = reversed(items)
            else:
                project.items.extend(items)
            self._bump(project)
        return [json.loads(item)["session_id"] for item in items]

    # ------------------------------------------------------------ internals

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


def _renamed(item: bytes, session_id: str) -> bytes:
    """A generated session (``{"session_id":"ses-...",...}``) with another id."""
    end = item.index(b'",', len(b'{"session_id":"')) + 1
    return b'{"session_id":' + _ENCODER.encode(session_id).encode() + item[end:]
