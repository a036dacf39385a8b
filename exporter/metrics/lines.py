"""Sample lines written as prometheus_client writes them, without its Metric and Sample objects.

The collector adds a project's samples to families of one of two kinds (:class:`Kinds`): the
``prometheus_client`` families a registry collects, or the writers here, which write each
sample's line as it is added, in both text formats (they differ only in exemplars). What the
exposition caches when a poll ends is those lines, so a poll pays for strings, not for a
``Sample`` per line and a second walk over them; a test holds both kinds to the same bytes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any, NamedTuple

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.samples import Exemplar
from prometheus_client.utils import floatToGoString


def go_float(value: float) -> str:
    """A sample value as the official clients write it (Go float formatting)."""
    if -math.inf < value < 1_000_000:  # below 1e6 Go writes what repr does (NaN is not here)
        return repr(float(value))
    return str(floatToGoString(value))  # type: ignore[no-untyped-call]


@lru_cache(maxsize=4096)  # the same few values (the project id) on most lines
def escape(value: str) -> str:
    """A label value as the text formats quote it."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def labels_text(labels: dict[str, str]) -> str:
    """Label pairs as the text formats write them: sorted by name."""
    return ",".join(f'{k}="{escape(v)}"' for k, v in sorted(labels.items()))


def exemplar_text(exemplar: Exemplar) -> str:
    """What OpenMetrics writes after a sample's value for its exemplar."""
    text = f" # {{{labels_text(exemplar.labels)}}} {go_float(exemplar.value)}"
    if exemplar.timestamp is not None:
        text += f" {exemplar.timestamp}"
    return text


@lru_cache(maxsize=64)  # a family's label names: the same few, rendered for every project
def _places(labels: tuple[str, ...]) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """The label values' places in the order of their names (how every line sorts them), and
    of those before and after ``le`` (how a bucket's line sorts them)."""
    order = tuple(sorted(range(len(labels)), key=labels.__getitem__))
    before = tuple(i for i in order if labels[i] < "le")
    after = tuple(i for i in order if labels[i] > "le")
    return order, before, after


class _Lines:
    """One family's sample lines, by format: ``lines`` without newlines, the exemplars'
    text by line (OpenMetrics only), and the sample names written."""

    def __init__(self, name: str, labels: Sequence[str]) -> None:
        self.name = name
        self._labelnames = tuple(labels)
        self._order, self._before, self._after = _places(self._labelnames)
        self.lines: list[str] = []
        self.exemplars: dict[int, str] = {}
        self.sample_names: set[str] = set()

    def _pairs(self, values: Sequence[str], order: Sequence[int] | None = None) -> list[str]:
        names = self._labelnames
        places = self._order if order is None else order
        return [f'{names[i]}="{escape(values[i])}"' for i in places]

    def _line(self, sample: str, pairs: str, value: float, exemplar: Exemplar | None) -> None:
        if exemplar is not None:
            self.exemplars[len(self.lines)] = exemplar_text(exemplar)
        if pairs:
            self.lines.append(f"{sample}{{{pairs}}} {go_float(value)}")
        else:
            self.lines.append(f"{sample} {go_float(value)}")

    def text(self, openmetrics: bool) -> bytes:
        if not self.lines:
            return b""
        if not openmetrics or not self.exemplars:
            return ("\n".join(self.lines) + "\n").encode()
        exemplars = self.exemplars
        return "".join(
            f"{line}{exemplars.get(i, '')}\n" for i, line in enumerate(self.lines)
        ).encode()


class GaugeLines(_Lines):
    def __init__(self, name: str, documentation: str, labels: Sequence[str]) -> None:
        super().__init__(name, labels)

    def add_metric(self, labels: Sequence[str], value: float) -> None:
        self.sample_names.add(self.name)
        self._line(self.name, ",".join(self._pairs(labels)), value, None)


class CounterLines(_Lines):
    def __init__(self, name: str, documentation: str, labels: Sequence[str]) -> None:
        super().__init__(name.removesuffix("_total"), labels)
        self._sample = self.name + "_total"

    def add_metric(
        self, labels: Sequence[str], value: float, exemplar: Exemplar | None = None
    ) -> None:
        self.sample_names.add(self._sample)
        self._line(self._sample, ",".join(self._pairs(labels)), value, exemplar)


class HistogramLines(_Lines):
    def __init__(self, name: str, documentation: str, labels: Sequence[str]) -> None:
        super().__init__(name, labels)
        self._samples = tuple(f"{name}_{part}" for part in ("bucket", "count", "sum"))

    def add_metric(
        self, labels: Sequence[str], buckets: Sequence[Any], sum_value: float | None
    ) -> None:
        """As ``HistogramMetricFamily.add_metric``: buckets of (le, count[, exemplar])."""
        bucket, count, total = self._samples
        before = "".join(p + "," for p in self._pairs(labels, self._before))
        after = "".join("," + p for p in self._pairs(labels, self._after))
        lines, exemplars = self.lines, self.exemplars
        for b in buckets:  # an ``le`` is a number as go_float writes it: nothing to escape
            if len(b) == 3:
                exemplars[len(lines)] = exemplar_text(b[2])
            lines.append(f'{bucket}{{{before}le="{b[0]}"{after}}} {go_float(b[1])}')
        self.sample_names.add(bucket)
        if float(buckets[0][0]) >= 0 and sum_value is not None:
            pairs = ",".join(self._pairs(labels))
            self._line(count, pairs, buckets[-1][1], None)
            self._line(total, pairs, sum_value, None)
            self.sample_names.update((count, total))


class Kinds(NamedTuple):
    """The three kinds of family the collector fills, each made from (name, documentation,
    labels=...)."""

    gauge: Callable[..., Any]
    counter: Callable[..., Any]
    histogram: Callable[..., Any]


METRICS = Kinds(GaugeMetricFamily, CounterMetricFamily, HistogramMetricFamily)
LINES = Kinds(GaugeLines, CounterLines, HistogramLines)
