"""The text formats of the collector, byte for byte, from pieces rendered when a poll ends."""

from __future__ import annotations

import struct
import threading
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

from prometheus_client import generate_latest
from prometheus_client.core import (
    Metric,
)
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from ..store import ProjectState, Store


def go_float(value: float) -> str:
    """A sample value as the official clients write it (Go float formatting)."""
    return str(floatToGoString(value))  # type: ignore[no-untyped-call]


class Families(Protocol):
    """What the exposition renders: the per-project families, then the exporter-wide ones
    (:class:`exporter.metrics.collector.StoreCollector`)."""

    def project_families(self, projects: tuple[ProjectState, ...]) -> Iterator[Metric]: ...

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


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, str]) -> str:
    return ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))


def _samples(metric: Metric, openmetrics: bool = False) -> bytes:
    """A family's sample lines as ``generate_latest`` writes them, or in OpenMetrics (which
    adds the exemplars) as its ``generate_latest`` does: a test holds them to that."""
    lines = []
    for sample in metric.samples:
        value = go_float(sample.value)
        exemplar = ""
        if openmetrics and sample.exemplar is not None:
            ex = sample.exemplar
            exemplar = f" # {{{_labels(ex.labels)}}} {go_float(ex.value)}"
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

    def __init__(self, collector: Families, store: Store) -> None:
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
