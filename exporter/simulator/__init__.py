"""A simulated LlamaCloud chat API, served over real HTTP on loopback.

It answers ``GET /api/v1/chat`` the way LlamaCloud does (bearer keys scoped to projects, opaque page
tokens, FastAPI-style error bodies), ``GET /api/v1/chat/{session_id}`` with a session and its
history (every run's events, each run ending in a stop event), and ``GET /api/v2/projects`` for
the projects of its organization (``ORGANIZATION_ID``), which tests add and remove while it
serves, so the exporter can be demonstrated, tested and benchmarked without an account. Data is
synthetic and deterministic for a seed. Faults (rate limits, 5xx bursts, stalls, truncated
bodies, malformed items and histories, endless listings) can be injected once on demand or recur
at configured rates (:class:`FaultConfig`, also on the command line), aimed at any endpoint and
drawn from a seeded RNG, so that retries, timeouts and hostile pagination can be exercised end to
end and reproduced.

Timestamps follow a simulated clock that starts at the wall clock's time (or ``clock_start``)
and moves by ``STEP_SECONDS`` per ``step()``. Items match the models of the official SDK
(``llama-cloud``), strict response validation included, unless malformed items are injected.

Listings come in creation order or newest first by ``last_updated_at`` (``order=``). With offset
page tokens the latter makes sessions move between pages while a client pages through, which
``rerun``, ``touch``, ``create_sessions``, ``delete_session`` and ``page_hook`` can reproduce.
A session may run several times between two listings (``rerun(times=...)``, and ``burst``
during evolution); ``Simulator.history`` gives the stop events its history holds, one per run.

Run ``python -m exporter.simulator --help`` for the command line.

The package, by job:

- ``core``: ``Simulator``, one lock over its data, fault state, the request log and the server.
- ``projects``: ``GET /api/v2/projects``, project names, and the project registry ``Simulator``
  mixes in (``add_project``, ``remove_project``, ``projects()``).
- ``sessions``: how sessions change: ``step()``'s evolution and the test hooks (``rerun``,
  ``create_sessions``, ``set_sessions``, ...), and what tests read back (``sessions``, ``history``).
- ``model``: the synthetic data: ``_Project``, session and run generation and evolution, timestamps,
  earlier runs' stop events packed.
- ``history``: a session's events, rendered when it is read, from seeds and its runs' stop events.
- ``chat``: ``GET /api/v1/chat`` (auth, access, pages and their cache) and
  ``GET /api/v1/chat/{session_id}``.
- ``faults``: ``FaultConfig``, one-shot ``_Fault``, a request's ``_Decision``, malformed items.
- ``paging``: page tokens, ``page_size`` parsing, rendering pages, the page size default and page
  cache budget.
- ``server``: the HTTP face: paths, bearer auth, FastAPI-style errors, handler and server.
- ``cli``: ``main``, the command line; ``__main__`` runs it.

Everything other code uses is imported from here, ``exporter.simulator``.
"""

from __future__ import annotations

from .cli import main
from .core import ORDERS, Simulator
from .core import REQUEST_LOG_SIZE as REQUEST_LOG_SIZE
from .faults import MALFORMED_KINDS, FaultConfig
from .history import MALFORMED_STOP_KINDS
from .model import HISTORY_DAYS as HISTORY_DAYS
from .model import MAX_RUNS_PER_STEP, SHARED_ACCESS
from .model import STEP_SECONDS as STEP_SECONDS
from .paging import DEFAULT_PAGE_SIZE as DEFAULT_PAGE_SIZE
from .paging import PAGE_CACHE_BYTES as PAGE_CACHE_BYTES
from .projects import ORGANIZATION_ID
from .server import (
    CHAT_PATH,
    DEFAULT_API_KEY,
    ENDPOINTS,
    PROJECTS_PATH,
    SESSION_PATH,
    RequestRecord,
)

__all__ = [
    "CHAT_PATH",
    "DEFAULT_API_KEY",
    "ENDPOINTS",
    "MALFORMED_KINDS",
    "MALFORMED_STOP_KINDS",
    "MAX_RUNS_PER_STEP",
    "ORDERS",
    "ORGANIZATION_ID",
    "PROJECTS_PATH",
    "SESSION_PATH",
    "SHARED_ACCESS",
    "FaultConfig",
    "RequestRecord",
    "Simulator",
    "main",
]
