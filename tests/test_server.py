from __future__ import annotations

import gzip
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.registry import CollectorRegistry

from exporter.aggregate import aggregate
from exporter.collector import StoreCollector
from exporter.config import ProjectConfig, Secret
from exporter.server import MetricsServer
from exporter.store import Store
from tests.conftest import parse_metrics, session, value


def project(pid: str, name: str = "") -> ProjectConfig:
    return ProjectConfig(pid, name or pid, "", "http://127.0.0.1:1", 100, Secret("k"))


@pytest.fixture
def served() -> Iterator[tuple[Store, str]]:
    store = Store([project("p1", "<b>prod</b>"), project("p2")])
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store))
    server = MetricsServer("127.0.0.1", 0, store, registry)
    server.start()
    try:
        yield store, f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()


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
