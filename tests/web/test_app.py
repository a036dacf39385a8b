"""web.app: /metrics (text, OpenMetrics, gzip, filtered by name), /healthz, /readyz,
POST /-/reload and the landing page."""

from __future__ import annotations

import concurrent.futures
import gzip
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from prometheus_client import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.registry import CollectorRegistry

from exporter.aggregate import aggregate
from exporter.metrics import StoreCollector
from exporter.metrics.lines import _Lines
from exporter.store import ProjectState, Store
from exporter.web import MetricsServer
from exporter.web.server import HttpServer
from tests.helpers import parse_metrics, project, session, value
from tests.web.helpers import scrape


def test_health_readiness_and_landing_page(served: tuple[Store, str]) -> None:
    store, url = served
    assert httpx.get(url + "/healthz").status_code == 200
    assert httpx.get(url + "/readyz").status_code == 503
    store.record_success("p1", aggregate([[session("a")]]), duration=0.5, finished=1e9)
    assert httpx.get(url + "/readyz").status_code == 503  # p2 has not been polled yet
    store.record_failure("p2", "auth", duration=0.1, finished=1e9)
    assert httpx.get(url + "/readyz").status_code == 200
    page = httpx.get(url + "/")
    assert page.headers["content-type"].startswith("text/html")
    assert "&lt;b&gt;prod&lt;/b&gt;" in page.text  # names are escaped
    assert "failed: auth" in page.text
    assert httpx.get(url + "/nope").status_code == 404


def test_metrics_text_gzip_and_openmetrics(served: tuple[Store, str]) -> None:
    store, url = served
    store.record_success("p1", aggregate([[session("a")]]), duration=0.5, finished=1e9)
    plain = httpx.get(url + "/metrics", headers={"Accept-Encoding": "identity"})
    assert plain.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert (
        value(parse_metrics(plain.text), "llamacloud_chat_sessions", project_id="p1", status="ok")
        == 1
    )
    assert value(parse_metrics(plain.text), "llamacloud_up", project_id="p2") == 0

    zipped = httpx.get(url + "/metrics", headers={"Accept-Encoding": "gzip"})
    assert zipped.headers["content-encoding"] == "gzip"
    assert "llamacloud_up" in zipped.text  # httpx decompresses
    with httpx.stream("GET", url + "/metrics", headers={"Accept-Encoding": "gzip"}) as r:
        raw = b"".join(r.iter_raw())
    assert b"llamacloud_up" in gzip.decompress(raw)

    om = httpx.get(
        url + "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    assert om.text.endswith("# EOF\n")
    assert 'llamacloud_chat_runs_total{project_id="p1"} 0.0' in om.text
    filtered = httpx.get(url + "/metrics?name[]=llamacloud_up")
    assert filtered.text.startswith("# HELP llamacloud_up ")
    assert "llamacloud_chat_sessions" not in filtered.text


def test_gzip_is_sent_only_when_the_first_gzip_in_accept_encoding_wants_it(
    served: tuple[Store, str],
) -> None:
    _, url = served
    for accept_encoding, encoding in (
        ("gzip;q=0", "identity"),  # prometheus_client's gzip_accepted would send gzip
        ("gzip; q=0.000, identity", "identity"),
        ("identity, GZIP;q=0.5", "gzip"),
        ("br", "identity"),
    ):
        got = httpx.get(url + "/metrics", headers={"Accept-Encoding": accept_encoding})
        assert got.headers.get("content-encoding", "identity") == encoding, accept_encoding
        assert "llamacloud_up" in got.text


FILTERED = (
    "llamacloud_up",
    "llamacloud_chat_runs_total",
    "llamacloud_chat_run_duration_seconds_bucket",  # part of a histogram
    "llamacloud_exporter_build_info",
)


def test_filtered_scrapes_are_joined_from_the_cache_without_collecting(
    servers: list[HttpServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """?name[]= once collected every project anew per request (half a second at 1,000 projects)."""
    store = Store([project(f"p{i}") for i in range(4)])
    server = MetricsServer("127.0.0.1", 0, store)
    servers.append(server)
    server.start()
    for i in range(4):
        store.record_success(f"p{i}", aggregate([[session("a")]]), duration=0.5, finished=1e9)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store))
    # From now on: projects in each collection of the per-project families, and each family
    # whose lines are written for the cache (what a poll's end does, never a scrape).
    rendered: list[int] = []
    project_families = StoreCollector.project_families
    lines_init = _Lines.__init__

    def counted(
        self: StoreCollector, projects: tuple[ProjectState, ...], *kinds: Any
    ) -> Iterator[Any]:
        rendered.append(len(projects))
        return project_families(self, projects, *kinds)

    def counted_lines(self: _Lines, *args: Any) -> None:
        rendered.append(1)
        lines_init(self, *args)

    monkeypatch.setattr(StoreCollector, "project_families", counted)
    monkeypatch.setattr(_Lines, "__init__", counted_lines)
    store.record_success("p0", aggregate([[session("b")]]), duration=0.5, finished=1e9)
    assert rendered, "a poll's end writes the project's lines"  # the counting counts
    rendered.clear()
    expected = {
        False: generate_latest(registry.restricted_registry(FILTERED)),
        True: openmetrics_latest(registry.restricted_registry(FILTERED)),
    }
    assert b'llamacloud_up{project_id="p3"} 1.0' in expected[False]
    rendered.clear()  # prometheus_client's own collection, just above
    query = "/metrics?" + "&".join(f"name[]={name}" for name in FILTERED)
    url = f"http://127.0.0.1:{server.port}{query}"
    with httpx.Client(timeout=10) as client:
        for openmetrics, accept in ((False, ""), (True, "application/openmetrics-text")):
            for encoding in ("identity", "gzip"):
                headers = {"Accept": accept, "Accept-Encoding": encoding}
                got = client.get(url, headers=headers)
                assert got.headers.get("content-encoding", "identity") == encoding
                assert got.content == expected[openmetrics]  # httpx decodes the gzip
                head = client.head(url, headers=headers)
                assert head.headers["content-length"] == got.headers["content-length"]
    assert rendered == []


def test_a_family_that_appears_after_start_is_found_by_its_name_alone(
    served: tuple[Store, str],
) -> None:
    store, url = served
    store.record_reload(True, 1.5e9)  # the daemon does it once its server is up
    name = "llamacloud_config_last_reload_success_timestamp_seconds"
    got = httpx.get(f"{url}/metrics?name[]={name}").text
    assert got.splitlines()[-1] == f"{name} 1.5e+09"


def test_series_of_a_project_without_a_poll_are_not_invented(served: tuple[Store, str]) -> None:
    _, url = served
    samples = parse_metrics(httpx.get(url + "/metrics").text)
    assert value(samples, "llamacloud_chat_sessions", project_id="p2", status="ok") is None
    assert (
        value(samples, "llamacloud_last_successful_poll_timestamp_seconds", project_id="p2") is None
    )
    assert (
        value(samples, "llamacloud_project_info", project_id="p2", name="p2", organization_id="")
        == 1
    )
    assert (
        value(samples, "llamacloud_exporter_build_info", version=__import__("exporter").__version__)
        == 1
    )


def test_one_reload_at_a_time_so_reloads_never_take_every_worker(
    start_server: Callable[..., MetricsServer],
) -> None:
    server = start_server()
    gate = threading.Event()
    entered = threading.Event()

    def slow_reload() -> tuple[bool, str]:
        entered.set()
        gate.wait(10)
        return True, "reloaded"

    server.reload = slow_reload
    url = f"http://127.0.0.1:{server.port}/-/reload"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(httpx.post, url, timeout=30)
        assert entered.wait(5)
        try:
            second = httpx.post(url, timeout=30)
            assert second.status_code == 503
            assert second.headers["retry-after"] == "5"
            assert scrape(server).status_code == 200
        finally:
            gate.set()
        assert first.result().text == "reloaded\n"


@pytest.mark.parametrize("method", ["DELETE", "PUT", "PATCH", "OPTIONS", "POST", "TRACE"])
@pytest.mark.parametrize("path", ["/metrics", "/metrics?name[]=llamacloud_up", "/", "/healthz"])
def test_other_methods_get_405_with_allow(
    start_server: Callable[..., MetricsServer], method: str, path: str
) -> None:
    server = start_server()
    response = httpx.request(method, f"http://127.0.0.1:{server.port}{path}", timeout=5)
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"


def test_reload_takes_post_only(start_server: Callable[..., MetricsServer]) -> None:
    server = start_server()
    url = f"http://127.0.0.1:{server.port}/-/reload"
    for method in ("GET", "HEAD", "PUT"):
        response = httpx.request(method, url, timeout=5)
        assert response.status_code == 405
        assert response.headers["allow"] == "POST"
    assert httpx.post(url, timeout=5).status_code == 403  # lifecycle off


def test_an_accept_header_prometheus_client_cannot_read_gets_the_text_format(
    start_server: Callable[..., MetricsServer],
) -> None:
    server = start_server()
    for path in ("/metrics", "/metrics?name[]=llamacloud_up"):
        answer = httpx.get(
            f"http://127.0.0.1:{server.port}{path}",
            headers={"Accept": "application/openmetrics-text; version=abc"},
        )
        assert answer.status_code == 200, path
        assert answer.headers["content-type"].startswith("text/plain")
        assert "llamacloud_up" in answer.text
