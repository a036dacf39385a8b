"""The latest complete state of every project, swapped whole so a scrape never sees half a poll."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from ..aggregate import PollResult, ProjectSnapshot, RunTotals
from ..aggregate.indexes import DEFAULT_MAX_INDEX_SERIES, OTHER, RESERVED, fold_skips
from ..config import ProjectConfig


@dataclass(frozen=True)
class ProjectState:
    """Everything the collector and the landing page show for one project."""

    project_id: str
    name: str
    organization_id: str
    snapshot: ProjectSnapshot | None = None
    totals: RunTotals = field(default_factory=RunTotals)
    up: bool = False
    polled: bool = False  # a first poll attempt has finished, successful or not
    last_poll_duration: float | None = None
    last_poll_pages: int | None = None  # pages read by the last poll, successful or not
    last_poll_incremental: bool = False  # the last poll stopped at its cutoff
    last_poll_finished: float | None = None
    last_success: float | None = None
    last_error: str | None = None  # a fixed reason word, never free text
    poll_errors: tuple[tuple[str, int], ...] = ()
    invalid_items_total: int = 0
    # Changed sessions whose history is still to be read (``runs: exact``); None until a
    # poll succeeded.
    reads_pending: int | None = None
    # The error_class label values to show, each from 0: the configured classes and "other".
    error_classes: tuple[str, ...] = (OTHER,)
    error_ratio_objective: float | None = None  # objectives.error_ratio, from the config


class Store:
    """Owned by the poller (writes) and read by the collector and the web pages.

    Each write replaces a frozen :class:`ProjectState`; readers take a tuple of the
    current ones, so they never block a poll for longer than a dict copy.
    """

    def __init__(self, projects: Iterable[ProjectConfig] = ()) -> None:
        self._lock = threading.Lock()
        self._projects: dict[str, ProjectState] = {}
        self._api_requests: dict[str, int] = {}
        self.state_save_failures = 0
        # Log lines that could not be written; the CLI points this at the logging set-up's count.
        self.dropped_log_lines: Callable[[], int] = lambda: 0
        self._listeners: list[Callable[[ProjectState], None]] = []
        self.reload_ok = True
        self.reload_success: float | None = None  # set when the daemon starts
        self._error_classes: tuple[str, ...] = (OTHER,)
        # The cap on index series (detail.max_index_series), for index skips as for sessions.
        self.max_index_series = DEFAULT_MAX_INDEX_SERIES
        self.shard = (0, 1)  # (index, total) of this replica
        self.discovery = False  # discovery is configured
        self.discovery_interval = 0.0
        self.discovery_projects: int | None = None  # listed by the last good discovery
        self.discovery_errors = 0
        self.discovery_success: float | None = None
        for project in projects:
            self.add_project(project)

    def add_project(self, project: ProjectConfig, totals: RunTotals | None = None) -> None:
        state = ProjectState(
            project.id,
            project.name,
            project.organization_id,
            error_classes=self._error_classes,
            error_ratio_objective=project.error_ratio_objective,
        )
        if totals is not None:
            state = replace(state, totals=totals)
        with self._lock:
            self._projects[project.id] = state

    def remove_project(self, project_id: str) -> None:
        """A project left the config: its series go with it."""
        with self._lock:
            self._projects.pop(project_id, None)

    def update_info(self, project: ProjectConfig) -> None:
        with self._lock:
            old = self._projects[project.id]
            new = replace(
                old,
                name=project.name,
                organization_id=project.organization_id,
                error_ratio_objective=project.error_ratio_objective,
            )
            self._projects[project.id] = new
        self._publish(new)

    def set_error_classes(self, names: tuple[str, ...]) -> None:
        """The error classes of a (re)loaded config; every project shows them from now on."""
        with self._lock:
            if names == self._error_classes:
                return
            self._error_classes = names
            states = [replace(s, error_classes=names) for s in self._projects.values()]
            self._projects.update((s.project_id, s) for s in states)
        for state in states:
            self._publish(state)

    def record_discovery(self, projects: int | None, when: float) -> None:
        """A discovery ended: ``projects`` it listed (after include/exclude), None if it failed."""
        with self._lock:
            if projects is None:
                self.discovery_errors += 1
            else:
                self.discovery_projects = projects
                self.discovery_success = when

    def record_reload(self, ok: bool, when: float) -> None:
        with self._lock:
            self.reload_ok = ok
            if ok:
                self.reload_success = when

    def subscribe(self, listener: Callable[[ProjectState], None]) -> None:
        """Call ``listener`` with every new project state, on the writer's thread."""
        self._listeners.append(listener)

    def _publish(self, state: ProjectState) -> ProjectState:
        for listener in self._listeners:
            listener(state)
        return state

    def projects(self) -> tuple[ProjectState, ...]:
        with self._lock:
            return tuple(self._projects.values())

    def get(self, project_id: str) -> ProjectState:
        with self._lock:
            return self._projects[project_id]

    def api_requests(self) -> dict[str, int]:
        with self._lock:
            return dict(self._api_requests)

    def count_state_save_failure(self) -> None:
        with self._lock:
            self.state_save_failures += 1

    def count_request(self, code: str) -> None:
        with self._lock:
            self._api_requests[code] = self._api_requests.get(code, 0) + 1

    def record_success(
        self,
        project_id: str,
        result: PollResult,
        *,
        duration: float,
        finished: float,
        pages: int = 0,
        reads_pending: int = 0,
        read_runs: RunTotals | None = None,
        read_invalid: int = 0,
    ) -> ProjectState:
        """A complete listing: its snapshot, and its new runs added to the counters;
        ``reads_pending``: changed sessions still to be read after it. ``read_runs`` and
        ``read_invalid``: what the history reads after it counted (runs, and stop events of
        the wrong shape, skipped and counted as invalid items), in the same new state."""
        with self._lock:
            old = self._projects[project_id]
            totals = self._added(old.totals, result.new_runs, result.snapshot)
            if read_runs is not None:
                totals = self._added(totals, read_runs, result.snapshot)
            new = replace(
                old,
                snapshot=result.snapshot,
                last_poll_pages=pages,
                last_poll_incremental=result.incremental,
                totals=totals,
                reads_pending=reads_pending,
                up=True,
                polled=True,
                last_poll_duration=duration,
                last_poll_finished=finished,
                last_success=finished,
                last_error=None,
                invalid_items_total=old.invalid_items_total
                + result.snapshot.invalid_items
                + read_invalid,
            )
            self._projects[project_id] = new
        return self._publish(new)

    def _added(
        self, totals: RunTotals, new_runs: RunTotals, snapshot: ProjectSnapshot | None
    ) -> RunTotals:
        """``new_runs`` added to ``totals``, index skips under the cap of shown indexes."""
        if not new_runs.index_skips:
            return totals + new_runs
        shown = () if snapshot is None else (i for i, _ in snapshot.by_index if i not in RESERVED)
        skips = fold_skips(totals.index_skips, new_runs.index_skips, shown, self.max_index_series)
        return replace(totals + replace(new_runs, index_skips=()), index_skips=skips)

    def record_failure(
        self,
        project_id: str,
        reason: str,
        *,
        duration: float,
        finished: float,
        pages: int = 0,
        incremental: bool = False,
    ) -> ProjectState:
        """A failed poll keeps the last snapshot and counters; only health changes."""
        with self._lock:
            old = self._projects[project_id]
            errors = dict(old.poll_errors)
            errors[reason] = errors.get(reason, 0) + 1
            new = replace(
                old,
                last_poll_pages=pages,
                last_poll_incremental=incremental,
                up=False,
                polled=True,
                last_poll_duration=duration,
                last_poll_finished=finished,
                last_error=reason,
                poll_errors=tuple(sorted(errors.items())),
            )
            self._projects[project_id] = new
        return self._publish(new)

    def ready(self) -> bool:
        with self._lock:
            return all(state.polled for state in self._projects.values())
