"""A custom prometheus_client Collector that renders the store and nothing else.

Metric families are built at scrape time from the frozen project states, so a project that
leaves the config leaves no stale series, and a scrape never waits on the API.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar as PromExemplar

from .. import __version__
from ..aggregate import STATUSES, Exemplar, Histogram
from ..aggregate.indexes import OTHER
from ..store import ProjectState, Store
from .lines import METRICS, Kinds, go_float

# Fixed reason words of llamacloud_poll_errors_total; each starts at 0 for every project.
POLL_ERROR_REASONS = (
    "auth",
    "not_found",
    "rate_limited",
    "server_error",
    "client_error",
    "timeout",
    "connection",
    "invalid_response",
    "pagination_loop",
    "too_many_pages",
    "too_large",
    "internal",
)

_LAST = "as of the project's last complete poll, not the moment of the scrape"
_SINCE = "observed since the exporter or its state file started, as of the last complete poll"


@lru_cache(maxsize=1024)  # a few bounds, the same at every poll
def _le(bound: float) -> str:
    """The ``le`` label as the official clients write it (Go float formatting)."""
    return go_float(bound)


# OpenMetrics caps an exemplar's label names and values at 128 characters together.
_EXEMPLAR_LABEL_CHARS = 128 - len("session_id")


def _exemplar(exemplar: Exemplar | None) -> PromExemplar | None:
    """An exemplar as prometheus_client writes it; None when it has none, or its session id is
    too long for one."""
    if exemplar is None or len(exemplar[0]) > _EXEMPLAR_LABEL_CHARS:
        return None
    sid, value, ts = exemplar
    return PromExemplar({"session_id": sid}, value, ts)


def _hist_buckets(hist: Histogram) -> list[Any]:
    """(le, cumulative count) per bucket, with the bucket's exemplar where it has one."""
    buckets: list[Any] = []
    exemplars = hist.exemplars or (None,) * len(hist.counts)
    for (bound, count), exemplar in zip(hist.cumulative(), exemplars, strict=True):
        shown = _exemplar(exemplar)
        if shown is None:
            buckets.append((_le(bound), float(count)))
        else:
            buckets.append((_le(bound), float(count), shown))
    return buckets


# A group of per-project families, made of some projects' states; and what, of one state,
# its samples are made of.
Group = Callable[[tuple[ProjectState, ...], Kinds], Iterator[Any]]
Inputs = Callable[[ProjectState], object]


def _gauge_inputs(p: ProjectState) -> object:
    """All that :meth:`StoreCollector._session_gauges` reads of a state."""
    return (p.project_id, p.name, p.organization_id, p.error_ratio_objective, p.snapshot)


def _counter_inputs(p: ProjectState) -> object:
    """All that :meth:`StoreCollector._run_counters` reads of a state."""
    return (p.project_id, p.totals, p.error_classes, p.snapshot is None)


class StoreCollector(Collector):
    def __init__(self, store: Store) -> None:
        self._store = store

    def describe(self) -> Iterator[Metric]:
        """The families with no samples: the names a registry checks for clashes, at no cost."""
        yield from self.project_families(())
        yield from self.global_families()

    def collect(self) -> Iterator[Metric]:
        yield from self.project_families(self._store.projects())
        yield from self.global_families()

    def project_families(
        self, projects: tuple[ProjectState, ...], kinds: Kinds = METRICS
    ) -> Iterator[Any]:
        """The per-project families, always the same ones in the same order: of
        ``prometheus_client``, or with ``kinds`` :data:`~exporter.metrics.lines.LINES` the
        writers of their lines."""
        for group, _ in self.project_groups():
            yield from group(projects, kinds)

    def project_groups(self) -> tuple[tuple[Group, Inputs | None], ...]:
        """The per-project families in groups, in order, each with what its samples are made
        of: two states whose inputs to a group compare equal have the same samples in it
        (None: a group whose samples change at every poll)."""
        return (
            (self._session_gauges, _gauge_inputs),
            (self._run_counters, _counter_inputs),
            (self._health, None),
        )

    def global_families(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "llamacloud_api_requests",
            "HTTP requests made to the LlamaCloud API, by response status code "
            "(error when no response arrived).",
            labels=["code"],
        )
        for code, count in sorted(self._store.api_requests().items()):
            requests.add_metric([code], count)
        yield requests
        yield CounterMetricFamily(
            "llamacloud_state_save_failures",
            "Saves of the state file that failed; the next successful save writes the "
            "project's whole state.",
            value=self._store.state_save_failures,
        )
        yield CounterMetricFamily(
            "llamacloud_log_lines_dropped",
            "Log lines that could not be written (stderr closed, the log disk full) and were "
            "dropped; the exporter goes on working.",
            value=self._store.dropped_log_lines(),
        )
        build = GaugeMetricFamily(
            "llamacloud_exporter_build_info",
            "Always 1; the exporter's version.",
            labels=["version"],
        )
        build.add_metric([__version__], 1)
        yield build
        yield GaugeMetricFamily(
            "llamacloud_shard_index",
            "This replica's shard, from 0 (--shard, --shard.from-hostname or sharding.index).",
            value=self._store.shard[0],
        )
        yield GaugeMetricFamily(
            "llamacloud_shards",
            "How many shards split the projects; 1 when not sharded.",
            value=self._store.shard[1],
        )
        yield from self._discovery()
        reload_ok = GaugeMetricFamily(
            "llamacloud_config_last_reload_successful",
            "1 if the last configuration reload (SIGHUP or POST /-/reload) succeeded, else 0.",
        )
        reload_ok.add_metric([], 1 if self._store.reload_ok else 0)
        yield reload_ok
        if self._store.reload_success is not None:
            yield GaugeMetricFamily(
                "llamacloud_config_last_reload_success_timestamp_seconds",
                "When the configuration was last loaded successfully, in Unix seconds.",
                value=self._store.reload_success,
            )

    def _discovery(self) -> Iterator[Metric]:
        store = self._store
        if not store.discovery:
            return
        if store.discovery_projects is not None:
            yield GaugeMetricFamily(
                "llamacloud_discovery_projects",
                "Projects the last successful discovery listed (GET /api/v2/projects), after "
                "discovery.include and exclude, before sharding.",
                value=store.discovery_projects,
            )
        yield GaugeMetricFamily(
            "llamacloud_discovery_interval_seconds",
            "How often discovery lists the projects (discovery.interval_seconds).",
            value=store.discovery_interval,
        )
        yield CounterMetricFamily(
            "llamacloud_discovery_errors",
            "Discoveries that failed; the last good project list stays in use.",
            value=store.discovery_errors,
        )
        if store.discovery_success is not None:
            yield GaugeMetricFamily(
                "llamacloud_discovery_last_success_timestamp_seconds",
                "When the last successful discovery finished, in Unix seconds.",
                value=store.discovery_success,
            )

    def _session_gauges(self, projects: tuple[ProjectState, ...], kinds: Kinds) -> Iterator[Any]:
        sessions = kinds.gauge(
            "llamacloud_chat_sessions",
            f"Chat sessions listed, by the status of their most recent run, {_LAST}.",
            labels=["project_id", "status"],
        )
        tokens = kinds.gauge(
            "llamacloud_chat_session_tokens",
            f"Sum over listed sessions of their most recent run's tokens, {_LAST}.",
            labels=["project_id", "token_type"],
        )
        turns = kinds.gauge(
            "llamacloud_chat_session_turns",
            f"Sum over listed sessions of their most recent run's turns, {_LAST}.",
            labels=["project_id"],
        )
        duration = kinds.gauge(
            "llamacloud_chat_session_duration_seconds",
            f"Sum over listed sessions of their most recent run's duration, {_LAST}.",
            labels=["project_id"],
        )
        updated = kinds.gauge(
            "llamacloud_chat_last_updated_timestamp_seconds",
            f"Newest last_updated_at of the listed sessions, in Unix seconds, {_LAST}.",
            labels=["project_id"],
        )
        by_index = kinds.gauge(
            "llamacloud_chat_sessions_by_index",
            "Listed chat sessions bound to each index (a session bound to two counts in "
            "both): the detail.max_index_series indexes with most sessions, the rest summed "
            f'as index_id="other", sessions bound to none as index_id="none", {_LAST}.',
            labels=["project_id", "index_id"],
        )
        info = kinds.gauge(
            "llamacloud_project_info",
            "Always 1; the configured name (the id when it has none) and organization of each "
            "project.",
            labels=["project_id", "name", "organization_id"],
        )
        objective = kinds.gauge(
            "llamacloud_chat_run_error_ratio_objective",
            "The share of chat session runs allowed to fail (objectives.error_ratio), from the "
            "configuration as last loaded, not from a poll: the error budget burn rate is the "
            "error ratio divided by it. Absent for a project without one.",
            labels=["project_id"],
        )
        for p in projects:
            info.add_metric([p.project_id, p.name or p.project_id, p.organization_id], 1)
            if p.error_ratio_objective is not None:
                objective.add_metric([p.project_id], p.error_ratio_objective)
            snap = p.snapshot
            if snap is None:
                continue
            pid = p.project_id
            counts = snap.by_status()
            for status in STATUSES:
                sessions.add_metric([pid, status], counts[status])
            tokens.add_metric([pid, "input"], snap.input_tokens)
            tokens.add_metric([pid, "output"], snap.output_tokens)
            turns.add_metric([pid], snap.turns)
            duration.add_metric([pid], snap.duration_seconds)
            if snap.last_updated is not None:
                updated.add_metric([pid], snap.last_updated)
            for index_id, count in snap.by_index:
                by_index.add_metric([pid, index_id], count)
        yield from (sessions, tokens, turns, duration, updated, by_index, info, objective)

    def _run_counters(self, projects: tuple[ProjectState, ...], kinds: Kinds) -> Iterator[Any]:
        runs = kinds.counter(
            "llamacloud_chat_runs",
            f"Chat session runs (failed or not) {_SINCE}.",
            labels=["project_id"],
        )
        errors = kinds.counter(
            "llamacloud_chat_run_errors",
            f"Chat session runs whose status is error, {_SINCE}.",
            labels=["project_id"],
        )
        by_class = kinds.counter(
            "llamacloud_chat_run_errors_by_class",
            "Failed chat session runs by the first detail.error_classes expression their "
            f"error text matches (other: none), {_SINCE}.",
            labels=["project_id", "error_class"],
        )
        tokens = kinds.counter(
            "llamacloud_chat_tokens",
            f"Tokens used by chat session runs {_SINCE}.",
            labels=["project_id", "token_type"],
        )
        turns = kinds.counter(
            "llamacloud_chat_turns",
            f"Turns of chat session runs {_SINCE}.",
            labels=["project_id"],
        )
        created = kinds.counter(
            "llamacloud_chat_sessions_created",
            f"Chat sessions seen for the first time in a listing, {_SINCE}.",
            labels=["project_id"],
        )
        duration = kinds.histogram(
            "llamacloud_chat_run_duration_seconds",
            f"Duration of chat session runs {_SINCE}.",
            labels=["project_id"],
        )
        usage = kinds.histogram(
            "llamacloud_chat_run_token_usage",
            f"Tokens used per chat session run {_SINCE}.",
            labels=["project_id", "token_type"],
        )
        skips = kinds.counter(
            "llamacloud_chat_index_skips",
            "Chat session runs that asked for an index and could not query it "
            "(skipped_index_ids), by index; indexes past detail.max_index_series are summed as "
            f"other, {_SINCE}.",
            labels=["project_id", "index_id"],
        )
        for p in projects:
            pid = p.project_id
            t = p.totals
            runs.add_metric([pid], t.runs, exemplar=_exemplar(t.runs_exemplar))
            errors.add_metric([pid], t.errors, exemplar=_exemplar(t.errors_exemplar))
            counted = dict(t.errors_by_class)
            for name in p.error_classes:
                by_class.add_metric([pid, name], counted.get(name, 0))
            tokens.add_metric([pid, "input"], t.input_tokens)
            tokens.add_metric([pid, "output"], t.output_tokens)
            turns.add_metric([pid], t.turns)
            created.add_metric([pid], t.sessions_created)
            duration.add_metric([pid], _hist_buckets(t.duration), t.duration.total)
            usage.add_metric([pid, "input"], _hist_buckets(t.input_usage), t.input_usage.total)
            usage.add_metric([pid, "output"], _hist_buckets(t.output_usage), t.output_usage.total)
            skipped = dict(t.index_skips)
            if p.snapshot is not None:
                skipped.setdefault(OTHER, 0)  # from 0, so that increase() sees the first
            for index_id, n in sorted(skipped.items()):
                skips.add_metric([pid, index_id], n)
        yield from (runs, errors, by_class, tokens, turns, created, duration, usage, skips)

    def _health(self, projects: tuple[ProjectState, ...], kinds: Kinds) -> Iterator[Any]:
        up = kinds.gauge(
            "llamacloud_up",
            "1 if the last poll of the project succeeded, else 0.",
            labels=["project_id"],
        )
        poll_duration = kinds.gauge(
            "llamacloud_poll_duration_seconds",
            "Duration of the project's last poll, successful or not.",
            labels=["project_id"],
        )
        last_success = kinds.gauge(
            "llamacloud_last_successful_poll_timestamp_seconds",
            "When the project's last successful poll finished, in Unix seconds.",
            labels=["project_id"],
        )
        poll_errors = kinds.counter(
            "llamacloud_poll_errors",
            "Failed polls of the project, by reason.",
            labels=["project_id", "reason"],
        )
        pages = kinds.gauge(
            "llamacloud_poll_pages",
            "Pages of the chat listing read by the project's last poll, successful or not.",
            labels=["project_id"],
        )
        incremental = kinds.gauge(
            "llamacloud_poll_incremental",
            "1 if the project's last poll was an incremental listing (it stopped at sessions "
            "older than the previous poll's newest, less the overlap), 0 if it read every page.",
            labels=["project_id"],
        )
        invalid = kinds.counter(
            "llamacloud_invalid_items",
            "Listed items (and stop events of session histories) skipped for a bad shape, "
            "summed over complete polls.",
            labels=["project_id"],
        )
        pending = kinds.gauge(
            "llamacloud_chat_session_reads_pending",
            "Changed chat sessions whose history is still to be read (runs: exact), as of the "
            "project's last poll; beyond llamacloud.max_session_reads_per_poll they wait.",
            labels=["project_id"],
        )
        for p in projects:
            pid = p.project_id
            up.add_metric([pid], 1 if p.up else 0)
            if p.last_poll_duration is not None:
                poll_duration.add_metric([pid], p.last_poll_duration)
            if p.last_poll_pages is not None:
                pages.add_metric([pid], p.last_poll_pages)
                incremental.add_metric([pid], 1 if p.last_poll_incremental else 0)
            if p.last_success is not None:
                last_success.add_metric([pid], p.last_success)
            failed = dict(p.poll_errors)
            for reason in POLL_ERROR_REASONS:
                poll_errors.add_metric([pid, reason], failed.get(reason, 0))
            invalid.add_metric([pid], p.invalid_items_total)
            if p.reads_pending is not None:
                pending.add_metric([pid], p.reads_pending)
        yield from (
            up,
            poll_duration,
            pages,
            incremental,
            last_success,
            poll_errors,
            invalid,
            pending,
        )
