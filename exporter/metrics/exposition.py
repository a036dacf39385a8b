"""The text formats of the collector, byte for byte, from pieces rendered when a poll ends."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from functools import lru_cache
from typing import Any, Protocol

from prometheus_client import generate_latest
from prometheus_client.core import (
    Metric,
)
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.registry import Collector

from ..store import ProjectState, Store
from .deflate import (
    CACHED_LEVEL,
    HISTOGRAM_RUN,
    RUN,
    SCRAPE_LEVEL,
    Body,
    Rendered,
    Run,
    Runs,
    deflate_piece,
)
from .lines import LINES, METRICS, Kinds

# A poll's runs are compressed this long after it ends, with those of the polls that end
# meanwhile: consecutive projects share a run (16 of them for most families) and polls take
# the projects in order, so a run was compressed once for each of its projects' polls, where
# once is enough. A scrape in between compresses what it finds stale itself, as it does a run
# no poll made ready; the delay bounds how much that can be.
COMPRESS_DELAY = 0.1
COMPRESSOR_IDLE = 30.0  # seconds without a poll's end before the compressor thread ends


class Families(Protocol):
    """What the exposition renders: the per-project families, then the exporter-wide ones
    (:class:`exporter.metrics.collector.StoreCollector`)."""

    def project_families(
        self, projects: tuple[ProjectState, ...], kinds: Kinds = ...
    ) -> Iterator[Any]: ...

    def project_groups(
        self,
    ) -> tuple[
        tuple[
            Callable[[tuple[ProjectState, ...], Kinds], Iterator[Any]],
            Callable[[ProjectState], object] | None,
        ],
        ...,
    ]: ...

    def global_families(self) -> Iterator[Metric]: ...


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


# Pieces picked out that a project state keeps (a filter picks one per family it takes part
# of, and per format where the family has exemplars): past this, it starts again, so memory
# stays within about that many pieces (scrapes at once may each add one before it does).
MAX_PICKS = 8


def _picked(rendered: Rendered, openmetrics: bool, family: int, names: frozenset[str]) -> bytes:
    """:func:`_only` of a project's piece, kept with its state for the next scrape that asks."""
    own = openmetrics and family in rendered.exemplars  # else both formats share the piece
    key = (own, family, names)
    picks = rendered.picks
    lines = picks.get(key)
    if lines is None:
        if len(picks) >= MAX_PICKS:
            picks.clear()  # odd filters, each asked once, hold no memory for long
        lines = picks[key] = _only(rendered.lines[own][family], names)
    return lines


class TextExposition:
    """The text formats of :class:`StoreCollector`, byte for byte, without their cost per scrape.

    A project's samples change only when its state is replaced, so each project's lines
    are rendered once per state, when its poll ends, and compressed a moment later with those
    of the few projects beside it (:class:`Run`); a scrape joins them: the work of a scrape is a
    join, not a walk over 80 samples times the number of projects, nor a compression of
    megabytes. The Prometheus text format and OpenMetrics write the same sample lines and
    differ only in their family headers and the ``# EOF``. A scrape restricted to some sample
    names (``?name[]=``) joins the pieces of the families it selects, and filters lines only
    in a family it selects part of (a histogram's ``_bucket`` alone): its work follows what it
    selects.
    """

    def __init__(self, collector: Families, store: Store) -> None:
        self._collector = collector
        self._store = store
        self._lock = threading.Lock()
        families = list(collector.project_families(()))
        # Each group of families, what it is made of, and the places of its families.
        self._groups: list[tuple[Any, Any, int, int]] = []
        start = 0
        for group, of in collector.project_groups():
            end = start + len(list(group((), METRICS)))
            self._groups.append((group, of, start, end))
            start = end
        self._headers = {
            False: [_render([m]) for m in families],
            True: [_render([m], openmetrics=True).removesuffix(_EOF) for m in families],
        }
        self._deflated_headers = {
            fmt: [deflate_piece(h) for h in headers] for fmt, headers in self._headers.items()
        }
        self._cache: dict[str, Rendered] = {}
        # Few shapes (which families a project has samples in), so few distinct tuples.
        self._shapes: dict[tuple[frozenset[str], ...], tuple[frozenset[str], ...]] = {}
        histograms = frozenset(i for i, m in enumerate(families) if m.type == "histogram")
        self._layouts = (
            Runs(HISTOGRAM_RUN, histograms),
            Runs(RUN, frozenset(range(len(families))) - histograms),
        )
        # Each family's runs, by its place.
        self._runs_of = [0 if i in histograms else 1 for i in range(len(families))]
        # Projects polled since the runs were last compressed, and the thread that will.
        self._dirty: dict[str, None] = {}
        self._due = 0.0  # when they are to be compressed (time.monotonic)
        self._wake = threading.Condition(self._lock)
        self._compressor: threading.Thread | None = None
        store.subscribe(self._warm)

    def _warm(self, state: ProjectState) -> None:
        """A project's new state: its lines now, and the runs they change compressed again
        a moment later (:data:`COMPRESS_DELAY`), so that a scrape finds them ready."""
        pid = state.project_id
        with self._lock:
            self._rendered(state)
            if not all(runs.knows(pid) for runs in self._layouts):  # new here: lay out again
                per_project = [self._rendered(s) for s in self._store.projects()]
                for runs in self._layouts:
                    runs.lay_out(runs.spans(per_project))
            if not self._dirty:
                self._due = time.monotonic() + COMPRESS_DELAY
                self._wake.notify()
            self._dirty[pid] = None
            if self._compressor is None:
                self._compressor = threading.Thread(
                    target=self._compress_when_due, name="exposition-compress", daemon=True
                )
                self._compressor.start()

    def _compress_when_due(self) -> None:
        """The compressor thread: :meth:`compress_polled` whenever it is due; it ends once
        no poll has ended for :data:`COMPRESSOR_IDLE` seconds (the next one starts another)."""
        while True:
            with self._lock:
                idle_until = time.monotonic() + COMPRESSOR_IDLE
                while True:
                    now = time.monotonic()
                    if self._dirty and now >= self._due:
                        break
                    if not self._dirty and now >= idle_until:
                        self._compressor = None
                        return
                    self._wake.wait((self._due if self._dirty else idle_until) - now)
            self.compress_polled()

    def compress_polled(self) -> None:
        """Compress the runs that the polls ended since the last call made stale, each once
        however many of its projects were polled: the work :meth:`_warm` leaves for later."""
        with self._lock:
            dirty, self._dirty = self._dirty, {}
            jobs = []
            for runs in self._layouts:
                # A run two of its polls made stale is compressed once, with both.
                by_first = {
                    job[0][0].state.project_id: job
                    for pid in dirty
                    for job in runs.polled(pid, self._cache)
                }
                jobs.append(by_first.values())
        made = [
            runs.compress(job, CACHED_LEVEL) for runs, job in zip(self._layouts, jobs, strict=True)
        ]
        with self._lock:
            for runs, new in zip(self._layouts, made, strict=True):
                runs.install(new)

    def _rendered(self, state: ProjectState) -> Rendered:
        cached = self._cache.get(state.project_id)
        if cached is not None and cached.state is state:
            return cached
        # Group by group: one whose inputs did not change keeps its pieces (a poll that found
        # nothing new renders its health alone).
        text: list[bytes] = []
        om: list[bytes] = []
        shape: list[frozenset[str]] = []
        exemplars: set[int] = set()
        inputs: list[object] = []
        for g, (group, of, lo, hi) in enumerate(self._groups):
            key = None if of is None else of(state)
            inputs.append(key)
            if cached is not None and key is not None and cached.inputs[g] == key:
                text += cached.lines[False][lo:hi]
                om += cached.lines[True][lo:hi]
                shape += cached.sample_names[lo:hi]
                exemplars.update(i for i in cached.exemplars if lo <= i < hi)
                continue
            for i, family in enumerate(group((state,), LINES), lo):
                piece = family.text(False)
                text.append(piece)
                if family.exemplars:
                    exemplars.add(i)
                    om.append(family.text(True))
                else:
                    om.append(piece)
                shape.append(frozenset(family.sample_names))
        shape_key = tuple(shape)
        rendered = Rendered(
            state,
            {False: text, True: om},
            frozenset(exemplars),
            self._shapes.setdefault(shape_key, shape_key),
            cached.mark if cached is not None else Rendered.mark_of(state.project_id),
            tuple(inputs),
        )
        self._cache[state.project_id] = rendered
        return rendered

    def _current(self) -> list[Rendered]:
        projects = self._store.projects()
        with self._lock:
            per_project = [self._rendered(state) for state in projects]
            if len(self._cache) > len(projects):
                current = {state.project_id for state in projects}
                for gone in [pid for pid in self._cache if pid not in current]:
                    del self._cache[gone]
        return per_project

    def _compressed(self, per_project: list[Rendered]) -> list[list[Run]]:
        """By layout, the runs of ``per_project`` with their deflate pieces; a run that no poll
        left ready (a project just added, a poll that ended meanwhile) is compressed here."""
        spans = [runs.spans(per_project) for runs in self._layouts]
        with self._lock:
            found = [runs.found(s) for runs, s in zip(self._layouts, spans, strict=True)]
        out = []
        for runs, (ready, stale) in zip(self._layouts, found, strict=True):
            made = runs.compress(stale.values(), SCRAPE_LEVEL)
            with self._lock:
                runs.install(made)
            for j, run in zip(stale, made, strict=True):
                ready[j] = run
            out.append([run for run in ready if run is not None])
        return out

    def render(self, *, openmetrics: bool = False, names: Iterable[str] | None = None) -> bytes:
        """The whole text, or with ``names`` only the samples so named, as
        ``generate_latest(registry.restricted_registry(names))`` writes them."""
        return self._render(openmetrics, False, names)

    def render_gzip(
        self, *, openmetrics: bool = False, names: Iterable[str] | None = None
    ) -> bytes:
        """The same text as one gzip member, joined from the runs compressed in advance."""
        return self._render(openmetrics, True, names)

    def _render(self, openmetrics: bool, compressed: bool, names: Iterable[str] | None) -> bytes:
        per_project = self._current()
        body = Body(compressed)
        headers = self._headers[openmetrics]
        deflated_headers = self._deflated_headers[openmetrics]
        pieces = [p.lines[openmetrics] for p in per_project]
        layouts = self._compressed(per_project) if compressed else [[], []]
        if names is None:
            # By family: every project's piece; every run's of the family's layout, each
            # primed with the piece just before it, so that joined in this order all hold.
            none = [()] * len(headers)
            columns = list(zip(*pieces, strict=True)) if pieces else none
            deflated = [
                list(zip(*(r.deflated[openmetrics] for r in runs), strict=True)) if runs else none
                for runs in layouts
            ]
            checks = [
                list(zip(*(r.checks[openmetrics] for r in runs), strict=True)) if runs else none
                for runs in layouts
            ]
            for i, header in enumerate(headers):
                body.extend((header,), (deflated_headers[i],))
                layout = self._runs_of[i]
                body.extend(columns[i], deflated[layout][i], checks=checks[layout][i])
            # The exporter-wide families come last; in OpenMetrics they carry the # EOF.
            body.add(_render(self._collector.global_families(), openmetrics))
            return body.finish()
        wanted = frozenset(names)
        shapes = list({id(p.sample_names): p.sample_names for p in per_project}.values())
        everyone = [tuple(per_project)]  # without gzip, one span of every project
        for i, header in enumerate(headers):
            if not any(shape[i] & wanted for shape in shapes):
                continue  # a family with no sample left is left out, its header too
            body.extend((header,), (deflated_headers[i],))
            runs = layouts[self._runs_of[i]]
            for j, members in enumerate([run.members for run in runs] if compressed else everyone):
                if compressed and all(m.sample_names[i] <= wanted for m in members):
                    body.extend(  # the whole run
                        [m.lines[openmetrics][i] for m in members],
                        (runs[j].deflated[openmetrics][i],),
                        runs[j].primer(openmetrics, i),
                        (runs[j].checks[openmetrics][i],),
                    )
                    continue
                for m in members:
                    present = m.sample_names[i]
                    picked = present & wanted
                    if picked:
                        whole = picked == present
                        body.add(
                            m.lines[openmetrics][i] if whole else _picked(m, openmetrics, i, picked)
                        )
        kept = (_restricted(m, wanted) for m in self._collector.global_families())
        body.add(_render([m for m in kept if m is not None], openmetrics))
        return body.finish()
