"""A custom prometheus_client Collector that renders the store and nothing else.

Metric families are built at scrape time from the frozen project states, so a project that
leaves the config leaves no stale series, and a scrape never waits on the API.
"""

from __future__ import annotations

import struct
import threading
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar as PromExemplar
from prometheus_client.utils import floatToGoString

from . import __version__
from .aggregate import STATUSES, Exemplar, Histogram
from .store import ProjectState, Store

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


def _go_float(value: float) -> str:
    return str(floatToGoString(value))  # type: ignore[no-untyped-call]


def _le(bound: float) -> str:
    """The ``le`` label as the official clients write it (Go float formatting)."""
    return _go_float(bound)


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

    def project_families(self, projects: tuple[ProjectState, ...]) -> Iterator[Metric]:
        """The per-project families, always the same ones in the same order."""
        yield from self._session_gauges(projects)
        yield from self._run_counters(projects)
        yield from self._health(projects)

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
            "llamacloud_shard_total",
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

    def _session_gauges(self, projects: tuple[ProjectState, ...]) -> Iterator[Metric]:
        sessions = GaugeMetricFamily(
            "llamacloud_chat_sessions",
            f"Chat sessions listed, by the status of their most recent run, {_LAST}.",
            labels=["project_id", "status"],
        )
        tokens = GaugeMetricFamily(
            "llamacloud_chat_session_tokens",
            f"Sum over listed sessions of their most recent run's tokens, {_LAST}.",
            labels=["project_id", "token_type"],
        )
        turns = GaugeMetricFamily(
            "llamacloud_chat_session_turns",
            f"Sum over listed sessions of their most recent run's turns, {_LAST}.",
            labels=["project_id"],
        )
        duration = GaugeMetricFamily(
            "llamacloud_chat_session_duration_seconds",
            f"Sum over listed sessions of their most recent run's duration, {_LAST}.",
            labels=["project_id"],
        )
        updated = GaugeMetricFamily(
            "llamacloud_chat_last_updated_timestamp_seconds",
            f"Newest last_updated_at of the listed sessions, in Unix seconds, {_LAST}.",
            labels=["project_id"],
        )
        by_index = GaugeMetricFamily(
            "llamacloud_chat_sessions_by_index",
            "Listed chat sessions bound to each index (a session bound to two counts in "
            "both): the detail.max_index_series indexes with most sessions, the rest summed "
            f'as index_id="other", sessions bound to none as index_id="none", {_LAST}.',
            labels=["project_id", "index_id"],
        )
        info = GaugeMetricFamily(
            "llamacloud_project_info",
            "Always 1; the configured name and organization of each project.",
            labels=["project_id", "name", "organization_id"],
        )
        for p in projects:
            info.add_metric([p.project_id, p.name, p.organization_id], 1)
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
        yield from (sessions, tokens, turns, duration, updated, by_index, info)

    def _run_counters(self, projects: tuple[ProjectState, ...]) -> Iterator[Metric]:
        runs = CounterMetricFamily(
            "llamacloud_chat_runs",
            f"Chat session runs (failed or not) {_SINCE}.",
            labels=["project_id"],
        )
        errors = CounterMetricFamily(
            "llamacloud_chat_run_errors",
            f"Chat session runs whose status is error, {_SINCE}.",
            labels=["project_id"],
        )
        by_class = CounterMetricFamily(
            "llamacloud_chat_run_errors_by_class",
            "Failed chat session runs by the first detail.error_classes expression their "
            f"error text matches (other: none), {_SINCE}.",
            labels=["project_id", "error_class"],
        )
        tokens = CounterMetricFamily(
            "llamacloud_chat_tokens",
            f"Tokens used by chat session runs {_SINCE}.",
            labels=["project_id", "token_type"],
        )
        turns = CounterMetricFamily(
            "llamacloud_chat_turns",
            f"Turns of chat session runs {_SINCE}.",
            labels=["project_id"],
        )
        created = CounterMetricFamily(
            "llamacloud_chat_sessions_created",
            f"Chat sessions seen for the first time in a listing, {_SINCE}.",
            labels=["project_id"],
        )
        duration = HistogramMetricFamily(
            "llamacloud_chat_run_duration_seconds",
            f"Duration of chat session runs {_SINCE}.",
            labels=["project_id"],
        )
        usage = HistogramMetricFamily(
            "llamacloud_chat_run_token_usage",
            f"Tokens used per chat session run {_SINCE}.",
            labels=["project_id", "token_type"],
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
        yield from (runs, errors, by_class, tokens, turns, created, duration, usage)

    def _health(self, projects: tuple[ProjectState, ...]) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "llamacloud_up",
            "1 if the last poll of the project succeeded, else 0.",
            labels=["project_id"],
        )
        poll_duration = GaugeMetricFamily(
            "llamacloud_poll_duration_seconds",
            "Duration of the project's last poll, successful or not.",
            labels=["project_id"],
        )
        last_success = GaugeMetricFamily(
            "llamacloud_last_successful_poll_timestamp_seconds",
            "When the project's last successful poll finished, in Unix seconds.",
            labels=["project_id"],
        )
        poll_errors = CounterMetricFamily(
            "llamacloud_poll_errors",
            "Failed polls of the project, by reason.",
            labels=["project_id", "reason"],
        )
        pages = GaugeMetricFamily(
            "llamacloud_poll_pages",
            "Pages of the chat listing read by the project's last poll, successful or not.",
            labels=["project_id"],
        )
        incremental = GaugeMetricFamily(
            "llamacloud_poll_incremental",
            "1 if the project's last poll was an incremental listing (it stopped at sessions "
            "older than the previous poll's newest, less the overlap), 0 if it read every page.",
            labels=["project_id"],
        )
        invalid = CounterMetricFamily(
            "llamacloud_invalid_items",
            "Listed items skipped for a bad shape, summed over complete polls.",
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
        yield from (up, poll_duration, pages, incremental, last_success, poll_errors, invalid)


class _Families(Collector):
    def __init__(self, metrics: Iterable[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return iter(self._metrics)


def _render(metrics: Iterable[Metric], openmetrics: bool = False) -> bytes:
    if openmetrics:
        return bytes(openmetrics_latest(_Families(metrics)))  # type: ignore[no-untyped-call]
    return generate_latest(_Families(metrics))


_EOF = b"# EOF\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, str]) -> str:
    return ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))


def _samples(metric: Metric, openmetrics: bool = False) -> bytes:
    """A family's sample lines as ``generate_latest`` writes them, or in OpenMetrics (which
    adds the exemplars) as its ``generate_latest`` does: a test holds them to that."""
    lines = []
    for sample in metric.samples:
        value = _go_float(sample.value)
        exemplar = ""
        if openmetrics and sample.exemplar is not None:
            ex = sample.exemplar
            exemplar = f" # {{{_labels(ex.labels)}}} {_go_float(ex.value)}"
            if ex.timestamp is not None:
                exemplar += f" {ex.timestamp}"
        if sample.labels:
            lines.append(f"{sample.name}{{{_labels(sample.labels)}}} {value}{exemplar}\n")
        else:
            lines.append(f"{sample.name} {value}{exemplar}\n")
    return "".join(lines).encode()


# Pieces cached once per poll are compressed well; what a scrape compresses itself (lines
# picked out of pieces, the exporter-wide families) fast: level 1 takes a quarter of the
# time of level 6 for about a tenth more bytes.
_CACHED_LEVEL = 6
_SCRAPE_LEVEL = 1


def _deflate_piece(data: bytes, level: int = _CACHED_LEVEL) -> bytes:
    """Raw deflate ending on a full flush: byte-aligned and independent of what surrounds it,
    so pieces compressed apart can be concatenated into one valid stream."""
    if not data:
        return b""
    compressor = zlib.compressobj(level, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush(zlib.Z_FULL_FLUSH)


# A gzip member header: deflate, no name, no mtime, unknown OS.
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


def _restricted(metric: Metric, names: frozenset[str]) -> Metric | None:
    """The family with only the samples named in ``names``, None when none is left: what
    prometheus_client's ``restricted_registry`` keeps of it."""
    samples = [sample for sample in metric.samples if sample.name in names]
    if not samples:
        return None
    kept = Metric(metric.name, metric.documentation, metric.type)
    kept.samples = samples
    return kept


@lru_cache(maxsize=256)
def _line_starts(names: frozenset[str]) -> tuple[bytes, ...]:
    """How a sample line of one of ``names`` begins: its name, then its labels or its value."""
    return tuple(name.encode() + end for name in sorted(names) for end in (b"{", b" "))


def _only(lines: bytes, names: frozenset[str]) -> bytes:
    """The lines of a rendered piece whose sample is one of ``names``, in their order (split at
    newlines alone: a label value may hold a carriage return)."""
    starts = _line_starts(names)
    kept = [line for line in lines.split(b"\n") if line.startswith(starts)]
    return b"\n".join(kept) + b"\n" if kept else b""


class _Body:
    """A scrape's text joined from pieces and, for gzip, their deflate pieces: those compressed
    in advance are joined as they are, the rest compressed together where they fall."""

    def __init__(self, compressed: bool) -> None:
        self._compressed = compressed
        self._raw: list[bytes] = []
        self._deflated: list[bytes] = []
        self._pending: list[bytes] = []

    def add(self, raw: bytes, deflated: bytes | None = None) -> None:
        self.extend((raw,), None if deflated is None else (deflated,))

    def extend(self, raw: Iterable[bytes], deflated: Iterable[bytes] | None = None) -> None:
        """Pieces, with the same pieces compressed apart (read only for gzip) or None."""
        if not self._compressed:
            self._raw.extend(raw)
        elif deflated is None:
            pieces = list(raw)
            self._raw.extend(pieces)
            self._pending.extend(pieces)
        else:
            self._raw.extend(raw)
            if self._pending:
                self._deflated.append(_deflate_piece(b"".join(self._pending), _SCRAPE_LEVEL))
                self._pending.clear()
            self._deflated.extend(deflated)

    def finish(self) -> bytes:
        """The text, or one gzip member of it ending with what was added uncompressed."""
        text = b"".join(self._raw)
        if not self._compressed:
            return text
        compressor = zlib.compressobj(_SCRAPE_LEVEL, zlib.DEFLATED, -15)
        rest = compressor.compress(b"".join(self._pending)) + compressor.flush(zlib.Z_FINISH)
        # One checksum over the joined text: far cheaper than one call per piece.
        trailer = struct.pack("<II", zlib.crc32(text) & 0xFFFFFFFF, len(text) & 0xFFFFFFFF)
        return b"".join((_GZIP_HEADER, *self._deflated, rest, trailer))


@dataclass(frozen=True)
class _Rendered:
    state: ProjectState
    # By format (OpenMetrics or not), one piece per family in project_families order, and
    # the same pieces each compressed on its own. The formats share every piece but those
    # with exemplars.
    lines: dict[bool, list[bytes]]
    deflated: dict[bool, list[bytes]]
    # The sample names in each piece, what ?name[]= picks by; one tuple shared by every
    # project of the same shape.
    sample_names: tuple[frozenset[str], ...]


class TextExposition:
    """The text formats of :class:`StoreCollector`, byte for byte, without their cost per scrape.

    A project's samples change only when its state is replaced, so each project's lines
    are rendered (and compressed) once per state, when its poll ends, and a scrape joins
    them: the work of a scrape is a join, not a walk over 80 samples times the number of
    projects, nor a compression of megabytes. The Prometheus text format and OpenMetrics
    write the same sample lines and differ only in their family headers and the ``# EOF``.
    A scrape restricted to some sample names (``?name[]=``) joins the pieces of the families
    it selects, and filters lines only in a family it selects part of (a histogram's
    ``_bucket`` alone): its work follows what it selects.
    """

    def __init__(self, collector: StoreCollector, store: Store) -> None:
        self._collector = collector
        self._store = store
        self._lock = threading.Lock()
        families = list(collector.project_families(()))
        self._headers = {
            False: [_render([m]) for m in families],
            True: [_render([m], openmetrics=True).removesuffix(_EOF) for m in families],
        }
        self._deflated_headers = {
            fmt: [_deflate_piece(h) for h in headers] for fmt, headers in self._headers.items()
        }
        self._cache: dict[str, _Rendered] = {}
        # Few shapes (which families a project has samples in), so few distinct tuples.
        self._shapes: dict[tuple[frozenset[str], ...], tuple[frozenset[str], ...]] = {}
        store.subscribe(self._warm)

    def _warm(self, state: ProjectState) -> None:
        with self._lock:
            self._rendered(state)

    def _rendered(self, state: ProjectState) -> _Rendered:
        cached = self._cache.get(state.project_id)
        if cached is not None and cached.state is state:
            return cached
        families = list(self._collector.project_families((state,)))
        text = [_samples(m) for m in families]
        deflated = [_deflate_piece(piece) for piece in text]
        om, om_deflated = list(text), list(deflated)
        for i, family in enumerate(families):
            if any(sample.exemplar is not None for sample in family.samples):
                om[i] = _samples(family, openmetrics=True)
                om_deflated[i] = _deflate_piece(om[i])
        shape = tuple(frozenset(sample.name for sample in m.samples) for m in families)
        rendered = _Rendered(
            state,
            {False: text, True: om},
            {False: deflated, True: om_deflated},
            self._shapes.setdefault(shape, shape),
        )
        self._cache[state.project_id] = rendered
        return rendered

    def _current(self) -> list[_Rendered]:
        projects = self._store.projects()
        with self._lock:
            per_project = [self._rendered(state) for state in projects]
            if len(self._cache) > len(projects):
                current = {state.project_id for state in projects}
                for gone in [pid for pid in self._cache if pid not in current]:
                    del self._cache[gone]
        return per_project

    def render(self, *, openmetrics: bool = False, names: Iterable[str] | None = None) -> bytes:
        """The whole text, or with ``names`` only the samples so named, as
        ``generate_latest(registry.restricted_registry(names))`` writes them."""
        return self._render(openmetrics, False, names)

    def render_gzip(
        self, *, openmetrics: bool = False, names: Iterable[str] | None = None
    ) -> bytes:
        """The same text as one gzip member, joined from the pieces compressed in advance."""
        return self._render(openmetrics, True, names)

    def _render(self, openmetrics: bool, compressed: bool, names: Iterable[str] | None) -> bytes:
        per_project = self._current()
        body = _Body(compressed)
        headers = self._headers[openmetrics]
        deflated_headers = self._deflated_headers[openmetrics]
        pieces = [p.lines[openmetrics] for p in per_project]
        deflated_pieces = [p.deflated[openmetrics] for p in per_project]
        if names is None:
            for i, header in enumerate(headers):
                body.add(header, deflated_headers[i])
                body.extend((lines[i] for lines in pieces), (piece[i] for piece in deflated_pieces))
            # The exporter-wide families come last; in OpenMetrics they carry the # EOF.
            body.add(_render(self._collector.global_families(), openmetrics))
            return body.finish()
        wanted = frozenset(names)
        shapes = list({id(p.sample_names): p.sample_names for p in per_project}.values())
        for i, header in enumerate(headers):
            if not any(shape[i] & wanted for shape in shapes):
                continue  # a family with no sample left is left out, its header too
            body.add(header, deflated_headers[i])
            for p, lines, deflated in zip(per_project, pieces, deflated_pieces, strict=True):
                present = p.sample_names[i]
                picked = present & wanted
                if not picked:
                    continue
                if picked == present:
                    body.add(lines[i], deflated[i])
                else:
                    body.add(_only(lines[i], picked))
        kept = (_restricted(m, wanted) for m in self._collector.global_families())
        body.add(_render([m for m in kept if m is not None], openmetrics))
        return body.finish()
