"""The chat endpoints of a ``Simulator`` (which mixes this in): auth, access, pages and their
cache, as ``GET /api/v1/chat`` answers them, and one session with its history, as
``GET /api/v1/chat/{session_id}`` does.

The state is the simulator's and guarded by its lock: every method here is called with it
held.
"""

from __future__ import annotations

import threading

from .faults import FaultConfig, _malform
from .history import _history
from .model import _ENCODER, _find, _Project
from .paging import PAGE_CACHE_BYTES, _decode_token, _encode_token, _page_size, _render_page
from .server import _ApiError, _bearer, _missing


class _ChatListing:
    """Listing a project's sessions, page by page, with a byte-bounded cache of pages, and
    reading one session's history."""

    # The simulator's, used here.
    seed: int
    api_key: str
    max_page_size: int
    _lock: threading.RLock
    _projects: dict[str, _Project]
    _fault_config: FaultConfig
    _cache_total: int

    def _drop_pages(self, project: _Project) -> None:
        self._cache_total -= project.cache_bytes
        project.cache.clear()
        project.cache_bytes = 0

    def _malform(self, project: _Project, items: list[bytes]) -> list[bytes]:
        """Replace ``malformed_share`` of ``items`` by broken ones; call with the lock held."""
        share = self._fault_config.malformed_share
        return _malform(self.seed, project.project_id, share, items)

    def _list(
        self, query: dict[str, str], authorization: str | None
    ) -> tuple[bytes, tuple[str, int, int]]:
        """The chat listing, checked in the order the real service does: auth, input, access.

        Returns the page and (project_id, offset, page_size); an endless page's offset is 0.
        """
        key, project_id = self._caller(query, authorization)
        page_size = _page_size(query.get("page_size"), self.max_page_size)
        project = self._opened(key, project_id, query)
        token = query.get("page_token") or None
        kind, number = ("o", 0) if token is None else _decode_token(token, project.tag)
        if project.endless or project_id in self._fault_config.endless_projects:
            counter = number + 1 if kind == "e" else 1
            return self._endless_page(project, page_size, counter), (project_id, 0, page_size)
        if kind != "o":
            raise _ApiError(400, "Invalid page_token")
        return self._page(project, page_size, number), (project_id, number, page_size)

    def _read_session(
        self, query: dict[str, str], authorization: str | None, session_id: str
    ) -> bytes:
        """A session's listed fields and its ``events``, checked as the listing is, then 404
        for a session the project does not have."""
        key, project_id = self._caller(query, authorization)
        project = self._opened(key, project_id, query)
        try:
            _, item = _find(project, session_id)
        except KeyError:
            raise _ApiError(404, f"Session {session_id} not found") from None
        events = _history(self.seed, project, item, self._fault_config.malformed_history_share)
        return _ENCODER.encode({**item, "events": events}).encode()

    def _caller(self, query: dict[str, str], authorization: str | None) -> tuple[str, str]:
        """The caller's key (401 for an unknown one) and the ``project_id`` asked for (422
        when missing)."""
        key = _bearer(authorization)
        known = key == self.api_key or any(p.api_key == key for p in self._projects.values())
        if not known:
            raise _ApiError(401, "Invalid API key", (("WWW-Authenticate", "Bearer"),))
        project_id = query.get("project_id")
        if project_id is None:
            raise _ApiError(422, _missing("project_id"))
        return key, project_id

    def _opened(self, key: str, project_id: str, query: dict[str, str]) -> _Project:
        """The project, if it exists (404) and ``key`` opens it (403) in the organization the
        query names, if any (404)."""
        project = self._projects.get(project_id)
        if project is None:
            raise _ApiError(404, f"Project {project_id} not found")
        if key != (project.api_key or self.api_key):
            raise _ApiError(403, "API key does not have access to this project")
        organization_id = query.get("organization_id")
        if project.organization_id and organization_id not in (None, project.organization_id):
            raise _ApiError(404, f"Project {project_id} not found in organization")
        return project

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
        if project.repeat_token:
            next_token: str | None = _encode_token(project.tag, "o", page_size)
        elif end < len(project.items):
            next_token = _encode_token(project.tag, "o", end)
        else:
            next_token = None
        page = _render_page(chunk, next_token)
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
