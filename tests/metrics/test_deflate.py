"""metrics.exposition: a gzip scrape, joined from runs of projects compressed when their polls
end, is one gzip member of the very text, about the size of one-shot gzip, as polls, projects
added and removed, and filters change what it joins."""

from __future__ import annotations

import gzip
import random
import time
import uuid
import zlib
from collections.abc import Callable

import pytest
from prometheus_client import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.registry import CollectorRegistry

from exporter.aggregate import SessionTracker, aggregate
from exporter.config import ProjectConfig, Secret
from exporter.metrics import StoreCollector, TextExposition, deflate, exposition
from exporter.store import Store
from tests.helpers import session


def config(n: int) -> ProjectConfig:
    pid = str(uuid.UUID(int=random.Random(n).getrandbits(128), version=4))
    return ProjectConfig(pid, f"project-{n:03d}", "org", "http://x", 100, Secret("k"))


@pytest.fixture(autouse=True, params=["crc32_combine", "joined text"])
def checksum(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test twice: the gzip trailer's CRC-32 combined from the pieces' (zlib's
    crc32_combine64, where it loads), and computed over the joined text (where it does not)."""
    if request.param == "crc32_combine":
        assert deflate.crc32_combine is not None, "zlib's crc32_combine64 did not load"
    else:
        monkeypatch.setattr(deflate, "crc32_combine", None)


class Projects:
    """A store of many projects in every state (polled, failed, never polled), the registry
    prometheus_client would render it from, and the exposition under test."""

    def __init__(self, count: int) -> None:
        self.store = Store([config(n) for n in range(count)])
        self.store.set_error_classes(("timeout", "other"))
        self.exposition = TextExposition(StoreCollector(self.store), self.store)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StoreCollector(self.store))
        self.trackers = {p.project_id: SessionTracker() for p in self.store.projects()}
        self.polls = 0
        for n, state in enumerate(self.store.projects()):
            if n % 7 == 3:
                self.fail(state.project_id)
            elif n % 11 != 5:
                self.poll(state.project_id)

    def poll(self, pid: str) -> None:
        """A poll that finds sessions run again (counters and histograms change)."""
        self.polls += 1
        k = self.polls
        sessions = [
            session(f"s{k}-{i}", duration_ms=100 + 997 * ((k * 31 + i) % 40), turns=1 + i % 5)
            for i in range(1 + k % 4)
        ]
        result = aggregate([sessions], self.trackers[pid])
        self.store.record_success(pid, result, duration=0.1 + k % 9, finished=1e9 + k)

    def fail(self, pid: str) -> None:
        self.polls += 1
        self.store.record_failure(pid, "timeout", duration=30.0, finished=1e9 + self.polls)

    def ids(self) -> list[str]:
        return [state.project_id for state in self.store.projects()]

    def check(self, *filters: list[str]) -> None:
        """Every format, unfiltered and with each filter: the gzip body is one member whose
        text is the plain body's, and that of prometheus_client."""
        for openmetrics, latest in ((False, generate_latest), (True, openmetrics_latest)):
            for names in (None, *filters):
                registry = (
                    self.registry if names is None else self.registry.restricted_registry(names)
                )
                expected = latest(registry)
                assert self.exposition.render(openmetrics=openmetrics, names=names) == expected
                zipped = self.exposition.render_gzip(openmetrics=openmetrics, names=names)
                assert gzip.decompress(zipped) == expected, (openmetrics, names)
                assert zlib.decompressobj(31).decompress(zipped) == expected


FILTERS = [
    ["llamacloud_up", "llamacloud_chat_runs_total"],  # whole families: runs joined as cached
    ["llamacloud_chat_run_duration_seconds_bucket"],  # part of a histogram: lines picked
    [  # both at once, and a family that failed projects have no sample of
        "llamacloud_chat_run_duration_seconds_bucket",
        "llamacloud_chat_run_duration_seconds_count",
        "llamacloud_chat_sessions",
        "llamacloud_up",
    ],
    ["llamacloud_chat_run_errors_by_class_total", "llamacloud_poll_errors_total"],
    ["no_such_metric"],
]


def test_a_gzip_scrape_of_many_projects_is_within_1_5x_of_one_shot_gzip() -> None:
    projects = Projects(240)
    for openmetrics in (False, True):
        text = projects.exposition.render(openmetrics=openmetrics)
        zipped = projects.exposition.render_gzip(openmetrics=openmetrics)
        assert gzip.decompress(zipped) == text
        one_shot = len(gzip.compress(text))
        assert len(zipped) <= 1.5 * one_shot, (len(zipped), one_shot)
        # The runs a scrape compressed itself (none was polled since the exposition began)
        # are as valid as those a poll's end compresses.
        for pid in projects.ids():
            projects.poll(pid)
        again = projects.exposition.render(openmetrics=openmetrics)
        zipped = projects.exposition.render_gzip(openmetrics=openmetrics)
        assert gzip.decompress(zipped) == again != text
        assert len(zipped) <= 1.5 * len(gzip.compress(again))


def test_the_gzip_body_stays_the_text_as_projects_are_polled_added_and_removed() -> None:
    projects = Projects(60)
    projects.check(*FILTERS)
    ids = projects.ids()
    # Polls between scrapes: one project, then a stretch of neighbours (each run's last
    # project primes the next run), then one every few.
    projects.poll(ids[17])
    projects.check()
    for pid in ids[20:33]:
        projects.poll(pid)
    projects.check(*FILTERS)
    for pid in ids[::5]:
        projects.fail(pid)
    projects.check(*FILTERS)
    # Projects leave (the first, one in the middle, the last) and arrive (at the end).
    for pid in (ids[0], ids[29], ids[-1]):
        projects.store.remove_project(pid)
    projects.check(*FILTERS)
    for n in range(60, 64):
        projects.store.add_project(config(n))
        projects.trackers[config(n).id] = SessionTracker()
    projects.check(*FILTERS)
    projects.poll(config(61).id)
    projects.poll(ids[30])
    projects.check(*FILTERS)
    # Every project's state replaced at once, as a reload that changes error classes does.
    projects.store.set_error_classes(("timeout", "rate_limited", "other"))
    projects.check(*FILTERS)
    projects.store.update_info(
        ProjectConfig(ids[12], "renamed", "org", "http://x", 100, Secret("k"))
    )
    projects.check(*FILTERS)


def _stale(exposition: TextExposition) -> int:
    """How many runs a gzip scrape would compress itself now."""
    per_project = exposition._current()
    with exposition._lock:
        return sum(len(runs.found(runs.spans(per_project))[1]) for runs in exposition._layouts)


def test_polls_of_neighbours_compress_each_run_they_change_once(monkeypatch) -> None:
    monkeypatch.setattr(exposition, "COMPRESS_DELAY", 3600.0)  # only when the test says
    projects = Projects(64)
    projects.exposition.render_gzip()  # every run compressed once, by the scrape
    projects.exposition.compress_polled()  # what the setup's polls left pending
    compressed: list[tuple[str, frozenset[int]]] = []  # each run by its first, its families
    real = deflate.compress_run

    def counted(members, after, families, *args):  # type: ignore[no-untyped-def]
        compressed.append((members[0].state.project_id, families))
        return real(members, after, families, *args)

    monkeypatch.setattr(deflate, "compress_run", counted)
    ids = projects.ids()
    for pid in ids[:32]:  # a stretch of neighbours, as a poll cycle takes them
        projects.poll(pid)
    assert not compressed  # nothing yet: a poll's end only renders
    assert _stale(projects.exposition) > 0
    projects.exposition.compress_polled()
    # Each run compressed once, though most hold several of the polled projects.
    assert len(compressed) == len(set(compressed))
    assert len(compressed) < 32
    assert _stale(projects.exposition) == 0
    projects.check(*FILTERS)


def _until(condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + 30
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


def test_the_runs_a_poll_changes_are_compressed_soon_after_without_a_scrape(monkeypatch) -> None:
    monkeypatch.setattr(exposition, "COMPRESSOR_IDLE", 0.5)
    projects = Projects(40)
    projects.exposition.render_gzip()
    for pid in projects.ids()[5:15]:
        projects.poll(pid)
    assert _until(lambda: _stale(projects.exposition) == 0)
    projects.check()
    # With no poll ending, the compressor thread ends; the next poll's end starts another.
    thread = projects.exposition._compressor
    assert thread is not None and thread.name == "exposition-compress"
    assert _until(lambda: not thread.is_alive())
    assert projects.exposition._compressor is None
    projects.poll(projects.ids()[20])
    assert _stale(projects.exposition) > 0
    assert _until(lambda: _stale(projects.exposition) == 0)
    projects.check()
