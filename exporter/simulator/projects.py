"""``GET /api/v2/projects``: who may list which projects, their names, and how they render.

The SDK documents the endpoint as "Requires ``organization_id`` or a project-scoped API key". The
simulator answers it the way the real service most plausibly does, in the order the chat listing
checks things (auth, input, access):

- 401 for a missing or unknown key, as for the chat listing;
- 422 for a bad ``page_size``, 400 for a ``page_token`` this listing did not issue;
- the shared key (``Simulator.api_key``) acts for the whole simulated account, which is not
  scoped to a project:

  - without ``organization_id`` (or with an empty one): **400**
    ``{"detail": "organization_id is required unless the API key is scoped to a project"}``;
  - with the simulator's ``organization_id``, or one a project was added with: that
    organization's projects, in creation order, all of them, also those whose chat listing
    needs their own key (an organization whose projects were all removed lists none);
  - with any other ``organization_id``: **403**
    ``{"detail": "API key does not have access to organization ..."}``. An API key cannot tell
    an organization that does not exist from one it is not a member of, and the real service does
    not say which (a 404 would reveal which organization ids exist); an empty list would let a
    typo in a config pass silently;

- a project-scoped key (``api_keys=``, ``add_project(api_key=...)``) lists the projects it opens
  (normally one), with or without ``organization_id``; an ``organization_id`` none of them belongs
  to is 403 as above;
- ``name`` filters on the exact name (an empty one filters nothing).

Pages, page sizes and tokens are those of the chat listing (``paging``): offset tokens bound to the
organization listed, ``DEFAULT_PAGE_SIZE`` by default, ``max_page_size`` at most.
"""

from __future__ import annotations

import random
import threading
import uuid
import zlib
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .model import _ENCODER, HISTORY_DAYS, _format_ts, _new_sessions, _Project
from .paging import _offset_page, _page_size
from .server import _ApiError, _bearer

# The simulated organization every project belongs to unless added with another one.
ORGANIZATION_ID = "8d3f6c2a-5b1e-4f7d-9a0c-1e2b3c4d5e6f"

# Names of generated projects, in order; every fifth project is a scratch one, the kind of name a
# discovery config excludes (``exclude: "^scratch-"``).
_NAMES = (
    "production",
    "staging",
    "research",
    "support-bot",
    "sales-assistant",
    "legal-search",
    "hr-handbook",
    "finance-reports",
)
_SCRATCH_EVERY = 5
_DAY_US = 86_400 * 10**6


def _generated_name(index: int) -> str:
    """The ``index``-th generated name: production, staging, research, support-bot, scratch-1,
    sales-assistant, ..., finance-reports, scratch-2, production-2, ..."""
    if index % _SCRATCH_EVERY == _SCRATCH_EVERY - 1:
        return f"scratch-{index // _SCRATCH_EVERY + 1}"
    plain = index - (index + 1) // _SCRATCH_EVERY  # plain names before this one
    base = _NAMES[plain % len(_NAMES)]
    return base if plain < len(_NAMES) else f"{base}-{plain // len(_NAMES) + 1}"


def _project_dict(project: _Project, default_organization: str) -> dict[str, Any]:
    """The project as ``GET /api/v2/projects`` lists it (the SDK's ``V2ProjectListResponse``)."""
    stamp = _format_ts(project.created_us, 0.95)  # ISO 8601 in UTC, with a "Z"
    return {
        "id": project.project_id,
        "name": project.name,
        "organization_id": project.organization_id or default_organization,
        "is_default": project.is_default,
        "created_at": stamp,
        "updated_at": stamp,
    }


def _listing_tag(organization_id: str) -> str:
    """Binds page tokens to the organization listed (a chat token is rejected here, and back)."""
    return f"{zlib.crc32(f'projects:{organization_id}'.encode()):08x}"


def _list_projects(
    projects: Iterable[_Project],
    query: Mapping[str, str],
    authorization: str | None,
    *,
    shared_key: str,
    organization_id: str,
    organizations: Iterable[str],
    max_page_size: int,
) -> bytes:
    """One page of ``GET /api/v2/projects`` (see the module's docstring), or an ``_ApiError``.

    ``projects`` in creation order; ``organization_id`` is the simulator's own, and
    ``organizations`` every other one that has had a project.
    """
    key = _bearer(authorization)
    projects = list(projects)
    scoped = [] if key == shared_key else [p for p in projects if p.api_key == key]
    if key != shared_key and not scoped:
        raise _ApiError(401, "Invalid API key", (("WWW-Authenticate", "Bearer"),))
    page_size = _page_size(query.get("page_size"), max_page_size)
    wanted = query.get("organization_id") or None
    if key == shared_key:
        if wanted is None:
            raise _ApiError(
                400, "organization_id is required unless the API key is scoped to a project"
            )
        if wanted != organization_id and wanted not in organizations:
            raise _ApiError(403, f"API key does not have access to organization {wanted}")
        listed = [p for p in projects if (p.organization_id or organization_id) == wanted]
    else:
        listed = [p for p in scoped if wanted in (None, p.organization_id or organization_id)]
        if not listed:
            raise _ApiError(403, f"API key does not have access to organization {wanted}")
    name = query.get("name")
    if name:
        listed = [p for p in listed if p.name == name]
    items = [_ENCODER.encode(_project_dict(p, organization_id)).encode() for p in listed]
    tag = _listing_tag(wanted or "")
    return _offset_page(items, tag, query.get("page_token") or None, page_size)


class _Projects:
    """The projects of a ``Simulator`` (which mixes this in): their registry, names and
    organizations, and the public methods that add, remove and list them.

    The state is guarded by the simulator's lock, like the rest of its data.
    """

    # The simulator's, used here.
    seed: int
    error_share: float
    _lock: threading.RLock
    _order: str
    _clock_us: int

    if TYPE_CHECKING:

        def _drop_pages(self, project: _Project) -> None: ...

    def _init_projects(self, organization_id: str, seed: int) -> None:
        if not organization_id:
            raise ValueError("organization_id must not be empty")
        self._organization_id = organization_id
        self._projects: dict[str, _Project] = {}
        self._names: dict[tuple[str, str], str] = {}  # (organization, name) -> project id
        self._names_made = 0  # generated names handed out
        self._organizations: set[str] = set()  # those that had a project: it was their default
        # Draws the seeded projects' ids, then those of projects added without one.
        self._id_rng = random.Random(seed)
        self._hidden: set[str] = set()  # left out of the project listing, served otherwise

    def _seed_projects(self, count: int, keys: dict[str, str], sessions: int) -> None:
        """The projects made at construction: ``count`` with ids from the seed, then those only
        ``keys`` names; created a day apart, in that order, before the history begins."""
        ids = [self._new_id() for _ in range(count)]
        ids += [project_id for project_id in keys if project_id not in ids]
        history_start = self._clock_us - HISTORY_DAYS * _DAY_US
        for index, project_id in enumerate(ids):
            created = history_start - (len(ids) - index) * _DAY_US
            self._create(project_id, keys.get(project_id), None, sessions, created)

    @property
    def project_ids(self) -> list[str]:
        """Project ids in creation order (every organization's; removed ones are gone)."""
        with self._lock:
            return list(self._projects)

    @property
    def organization_id(self) -> str:
        """The simulated organization (``ORGANIZATION_ID`` unless given): every project belongs
        to it unless added with another one."""
        return self._organization_id

    def projects(self, organization_id: str | None = None) -> list[dict[str, Any]]:
        """The projects as ``GET /api/v2/projects`` lists them (``id``, ``name``,
        ``organization_id``, ``is_default``, ``created_at``, ``updated_at``), in creation order:
        those of ``organization_id``, or of every organization when None."""
        with self._lock:
            items = [_project_dict(p, self._organization_id) for p in self._projects.values()]
        return [p for p in items if organization_id in (None, p["organization_id"])]

    def add_project(
        self,
        project_id: str | None = None,
        *,
        name: str | None = None,
        api_key: str | None = None,
        organization_id: str | None = None,
        sessions: int = 0,
    ) -> str:
        """Add a project and return its id; it is listed from the next request on.

        ``project_id=None`` draws a UUID4 (the same ones for a seed and call order); ``name=None``
        takes the next generated name. ``api_key=None``: the shared key works.
        ``organization_id=None``: the simulator's organization, and chat requests may name any
        organization. ``created_at`` is the simulated clock. ValueError if the id exists, or the
        name does in the organization (names are unique within one, as in LlamaCloud).
        """
        if sessions < 0:
            raise ValueError("sessions must not be negative")
        if name is not None and not name:
            raise ValueError("name must not be empty")
        with self._lock:
            if project_id is not None and project_id in self._projects:
                raise ValueError(f"project {project_id!r} already exists")
            organization = organization_id or self._organization_id
            if name is not None and (organization, name) in self._names:
                raise ValueError(f"organization {organization} has a project named {name!r}")
            if project_id is None:
                project_id = self._new_id()
            self._create(project_id, api_key, organization_id, sessions, self._clock_us, name)
            return project_id

    def remove_project(self, project_id: str) -> None:
        """Delete a project; KeyError for an unknown one.

        From the next request on, ``GET /api/v2/projects`` no longer lists it and its chat
        listing answers as for any unknown project: 404 ``Project ... not found`` (its page tokens
        included). Its own API key, if it had one, is revoked with it: 401 from then on.
        """
        with self._lock:
            project = self._project(project_id)
            self._drop_pages(project)
            del self._projects[project_id]
            self._hidden.discard(project_id)
            del self._names[(project.organization_id or self._organization_id, project.name)]

    def hide_project(self, project_id: str, hidden: bool = True) -> None:
        """Leave a project out of ``GET /api/v2/projects`` (or list it again) while its chat
        listing goes on answering: a listing's gap, not a deletion. KeyError for an unknown one."""
        with self._lock:
            self._project(project_id)
            if hidden:
                self._hidden.add(project_id)
            else:
                self._hidden.discard(project_id)

    def _project(self, project_id: str) -> _Project:
        try:
            return self._projects[project_id]
        except KeyError:
            raise KeyError(f"unknown project {project_id!r}") from None

    def _project_or_new(self, project_id: str) -> _Project:
        """The project, made on the spot (no key of its own, no sessions) if there is none."""
        project = self._projects.get(project_id)
        if project is None:
            project = self._create(project_id, None, None, 0, self._clock_us)
        return project

    def _new_id(self) -> str:
        """A fresh project id: a UUID4 drawn from the seed's id sequence."""
        while True:
            project_id = str(uuid.UUID(int=self._id_rng.getrandbits(128), version=4))
            if project_id not in self._projects:
                return project_id

    def _create(
        self,
        project_id: str,
        api_key: str | None,
        organization_id: str | None,
        sessions: int,
        created_us: int,
        name: str | None = None,
    ) -> _Project:
        """Make a project (``name=None``: the next generated name free in its organization)."""
        rng = random.Random(f"{self.seed}:{project_id}")
        pool = tuple(f"idx-{rng.getrandbits(48):012x}" for _ in range(4))
        project = _Project(project_id, api_key, organization_id, rng, pool, target=sessions)
        organization = organization_id or self._organization_id
        while name is None or (organization, name) in self._names:
            name = _generated_name(self._names_made)
            self._names_made += 1
        project.name = name
        project.created_us = created_us
        project.is_default = organization not in self._organizations
        self._organizations.add(organization)
        self._names[(organization, name)] = project_id
        self._projects[project_id] = project
        if sessions:
            start = self._clock_us - HISTORY_DAYS * 86_400 * 10**6
            items, stamps = _new_sessions(
                project, sessions, start, self._clock_us, 0.85, error_share=self.error_share
            )
            if self._order == "newest-first":
                ranks = sorted(range(len(items)), key=stamps.__getitem__, reverse=True)
                items = [items[i] for i in ranks]
            project.items = items
            project.newest_us = max(stamps)
        return project
