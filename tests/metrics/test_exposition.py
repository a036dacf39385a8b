"""metrics.exposition: the cached text formats, byte for byte what prometheus_client
renders, filtered by name or not."""

from __future__ import annotations

import gzip
import zlib

from prometheus_client import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.registry import CollectorRegistry

from exporter.aggregate import RunTotals, SessionTracker, aggregate
from exporter.metrics import StoreCollector, TextExposition
from exporter.metrics.exposition import MAX_PICKS
from exporter.store import Store
from tests.helpers import project, session


def test_the_cached_text_format_equals_prometheus_client_byte_for_byte() -> None:
    odd = 'we"ird\\name\nhere'
    store = Store(
        [
            project("p1", odd, organization_id="org-ü"),
            project("p2"),
            project("p3"),
        ]
    )
    collector = StoreCollector(store)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    exposition = TextExposition(collector, store)
    assert exposition.render() == generate_latest(registry)  # nothing polled yet

    tracker = SessionTracker()
    store.record_success(
        "p1",
        aggregate([[session("a"), session("b")]], tracker),
        duration=0.1,
        finished=1e9,
    )
    store.record_failure("p2", "timeout", duration=30.0, finished=1e9 + 1)
    store.count_request("200")
    assert exposition.render() == generate_latest(registry)

    store.record_success(
        "p1",
        aggregate(
            [[session("a", total_input_tokens=10**9, duration_ms=123456), session("c")]], tracker
        ),
        duration=0.2,
        finished=1e9 + 2,
    )
    text = exposition.render()
    assert text == generate_latest(registry)
    assert b'llamacloud_chat_runs_total{project_id="p1"} 2.0' in text
    # The gzip body, joined from pieces compressed apart, is one valid member of the same text.
    zipped = exposition.render_gzip()
    assert zipped.startswith(b"\x1f\x8b")
    assert gzip.decompress(zipped) == text
    assert zlib.decompressobj(31).decompress(zipped) == text  # readers that stop after one member
    # OpenMetrics: the same samples under its own headers, ending in # EOF.
    om = exposition.render(openmetrics=True)
    assert om == openmetrics_latest(registry)
    assert om.endswith(b"# EOF\n")
    assert b"# TYPE llamacloud_chat_runs counter\n" in om
    # ... where counters and duration buckets carry the latest run's session as an exemplar,
    # stamped with its last_updated_at; the text format has none.
    stamp = 1776861281.342245  # SESSION's last_updated_at, read as UTC
    assert (
        f'llamacloud_chat_runs_total{{project_id="p1"}} 2.0 # {{session_id="c"}} 1.0 {stamp}\n'
    ).encode() in om
    assert (
        'llamacloud_chat_run_duration_seconds_bucket{le="+Inf",project_id="p1"} 2.0 '
        f'# {{session_id="a"}} 123.456 {stamp}\n'
    ).encode() in om
    assert b"# {" not in text
    assert gzip.decompress(exposition.render_gzip(openmetrics=True)) == om

    # A project that leaves the store leaves the cached text too.
    store._projects.pop("p3")
    assert b'project_id="p3"' not in exposition.render()
    assert exposition.render() == generate_latest(registry)


def filtered_store(polled: bool = True) -> tuple[CollectorRegistry, TextExposition]:
    """A store showing every family (exemplars, a failed and an unpolled project, discovery,
    a reload), or with ``polled`` False projects with no poll yet (families with no sample);
    the registry gets its collector last, so that it describes every family."""
    store = Store(
        [
            project("p1", 'we"ird\\name\nhere\r', organization_id="org-ü"),
            project("p2", error_ratio_objective=0.01),
            project("p3"),
        ]
    )
    store.set_error_classes(("timeout", "other"))
    exposition = TextExposition(StoreCollector(store), store)
    registry = CollectorRegistry(auto_describe=False)
    if not polled:
        registry.register(StoreCollector(store))
        return registry, exposition
    tracker = SessionTracker()
    store.record_success(
        "p1", aggregate([[session("a"), session("b")]], tracker), duration=0.1, finished=1e9
    )
    store.record_success(
        "p1",
        aggregate(
            [[session("a", total_input_tokens=10**9, duration_ms=123456), session("c")]], tracker
        ),
        duration=0.2,
        finished=1e9 + 2,
        pages=3,
        reads_pending=3,
        read_runs=RunTotals(index_skips=(("idx-1", 2),)),
    )
    store.record_failure("p2", "timeout", duration=30.0, finished=1e9 + 1)
    store.count_request("200")
    store.count_request("429")
    store.discovery = True
    store.discovery_interval = 300.0
    store.record_discovery(3, 1e9)
    store.record_discovery(None, 1e9 + 5)
    store.record_reload(True, 1e9 + 7)
    registry.register(StoreCollector(store))
    return registry, exposition


FILTERS = [
    ["llamacloud_chat_runs"],  # a counter's base name: no sample is named so
    ["llamacloud_chat_runs_total"],
    ["llamacloud_chat_run_duration_seconds_bucket"],
    ["llamacloud_chat_run_duration_seconds_sum", "llamacloud_chat_run_duration_seconds_count"],
    [
        "llamacloud_chat_run_token_usage_bucket",
        "llamacloud_chat_run_token_usage_count",
        "llamacloud_chat_run_token_usage_sum",
    ],
    ["llamacloud_chat_run_duration_seconds"],  # a histogram's base name
    ["llamacloud_chat_sessions", "llamacloud_poll_duration_seconds"],
    ["llamacloud_chat_last_updated_timestamp_seconds", "llamacloud_project_info"],
    ["no_such_metric"],
    ["llamacloud_up", "llamacloud_up"],
    ["llamacloud_up", "llamacloud_exporter_build_info"],
    [
        "llamacloud_api_requests_total",
        "llamacloud_discovery_errors_total",
        "llamacloud_config_last_reload_success_timestamp_seconds",
        "llamacloud_shards",
    ],
    ["llamacloud_chat_run_errors_by_class_total", "llamacloud_poll_errors_total", "target_info"],
]


def test_a_filtered_scrape_equals_prometheus_client_restricted_registry_byte_for_byte() -> None:
    registry, exposition = filtered_store()
    full = generate_latest(registry).decode()
    every = sorted(
        {line.split("{")[0].split(" ")[0] for line in full.split("\n") if line and line[0] != "#"}
    )
    assert len(every) > 30
    histogram = "llamacloud_chat_run_token_usage_count"
    unpolled = filtered_store(polled=False)
    for registry_, exposition_ in ((registry, exposition), unpolled):
        for names in [*FILTERS, every, [n for n in every if n != histogram]]:
            for openmetrics, latest in ((False, generate_latest), (True, openmetrics_latest)):
                expected = latest(registry_.restricted_registry(names))
                got = exposition_.render(openmetrics=openmetrics, names=names)
                assert got == expected, (names, openmetrics)
                zipped = exposition_.render_gzip(openmetrics=openmetrics, names=names)
                assert gzip.decompress(zipped) == expected, (names, openmetrics)
                assert zlib.decompressobj(31).decompress(zipped) == expected
    # Not vacuous: the filters select what they name, exemplars and all, and no more.
    assert exposition.render(names=["llamacloud_chat_runs"]) == b""
    assert exposition.render(openmetrics=True, names=["no_such_metric"]) == b"# EOF\n"
    buckets = exposition.render(
        openmetrics=True, names=["llamacloud_chat_run_duration_seconds_bucket"]
    ).decode()
    assert buckets.startswith("# HELP llamacloud_chat_run_duration_seconds ")
    assert '_bucket{le="+Inf",project_id="p1"} 2.0 # {session_id="a"} 123.456' in buckets
    assert "_sum" not in buckets and "_count" not in buckets and 'project_id="p2"' in buckets
    up = exposition.render(names=["llamacloud_up", "llamacloud_up"]).decode()
    assert [line for line in up.splitlines() if line[0] != "#"] == [
        f'llamacloud_up{{project_id="{p}"}} {v}' for p, v in (("p1", 1.0), ("p2", 0.0), ("p3", 0.0))
    ]
    assert exposition.render(names=every) == generate_latest(registry)
    # A family with no sample yet is left out, its header too, as prometheus_client does.
    assert b"# TYPE llamacloud_chat_sessions gauge" not in unpolled[1].render(names=every)
    assert b"# TYPE llamacloud_chat_sessions gauge" in unpolled[1].render()


def test_a_filter_asked_again_follows_the_polls_in_between() -> None:
    """What a filter picked out of a project's lines is kept for the next scrape, and only
    while the project's state is the same: more filters than are kept, three polls."""
    store = Store([project("p1"), project("p2")])
    exposition = TextExposition(StoreCollector(store), store)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store))
    filters = [
        ["llamacloud_chat_run_duration_seconds_bucket"],
        ["llamacloud_chat_run_duration_seconds_count"],
        ["llamacloud_chat_run_duration_seconds_sum", "llamacloud_chat_run_token_usage_sum"],
        ["llamacloud_chat_run_token_usage_bucket"],
        ["llamacloud_chat_run_token_usage_count"],
        ["llamacloud_chat_run_duration_seconds_bucket", "llamacloud_chat_run_token_usage_count"],
        ["llamacloud_chat_run_token_usage_sum"],
    ]
    # Each keeps at least one piece per histogram it takes part of: more pieces than are kept.
    assert sum(len({n.rsplit("_", 1)[0] for n in f}) for f in filters) > MAX_PICKS
    tracker = SessionTracker()
    polls = [
        [session("a")],
        [session("a"), session("b", duration_ms=5000)],
        [session("a"), session("b", duration_ms=5000), session("c", duration_ms=90000)],
    ]
    buckets = []
    for n, sessions in enumerate(polls):
        store.record_success("p1", aggregate([sessions], tracker), duration=0.1, finished=1e9 + n)
        for _ in range(2):  # the second time from what the first kept
            for names in filters:
                for openmetrics, latest in ((False, generate_latest), (True, openmetrics_latest)):
                    expected = latest(registry.restricted_registry(names))
                    assert exposition.render(openmetrics=openmetrics, names=names) == expected
                    zipped = exposition.render_gzip(openmetrics=openmetrics, names=names)
                    assert gzip.decompress(zipped) == expected, (n, names, openmetrics)
        buckets.append(exposition.render(names=filters[0]))
    assert len(set(buckets)) == len(polls)  # each poll changed what the filter picks
