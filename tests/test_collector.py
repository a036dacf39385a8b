"""The collector renders the store and never reaches the API."""

from __future__ import annotations

import ast
import gzip
import zlib
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.registry import CollectorRegistry

from exporter.aggregate import SessionTracker, aggregate
from exporter.collector import StoreCollector, TextExposition
from exporter.config import ProjectConfig
from exporter.secret import Secret
from exporter.store import Store
from tests.conftest import parse_metrics, session, value

EXPORTER = Path(__file__).resolve().parent.parent / "exporter"


def imports(module: str) -> set[str]:
    """What a module imports; a package's modules, with their imports as seen from its
    parent (``..client`` from inside the package is ``.client``)."""
    package = EXPORTER / module
    files = sorted(package.glob("*.py")) if package.is_dir() else [EXPORTER / f"{module}.py"]
    names: set[str] = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                level = node.level - 1 if package.is_dir() and node.level > 1 else node.level
                names.add(("." * level) + (node.module or ""))
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
    return names


def test_imports_run_downstream_only() -> None:
    io_modules = {
        ".client",
        ".poller",
        ".server",
        ".cli",
        ".state",
        ".simulator",
        "httpx",
        "asyncio",
    }
    assert not imports("aggregate") & (io_modules | {"time", "os", "socket"})
    assert not imports("collector") & io_modules
    assert not imports("store") & io_modules


def test_a_project_removed_from_the_store_leaves_no_series() -> None:
    def render(pids: list[str]) -> str:
        store = Store([ProjectConfig(p, p, "", "http://x", 100, Secret("k")) for p in pids])
        for p in pids:
            store.record_success(p, aggregate([[session("a")]]), duration=1, finished=1)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(StoreCollector(store))
        return generate_latest(registry).decode()

    assert 'project_id="gone"' in render(["kept", "gone"])
    text = render(["kept"])
    assert 'project_id="gone"' not in text
    assert value(parse_metrics(text), "llamacloud_up", project_id="kept") == 1


def test_help_texts_say_values_come_from_the_last_poll() -> None:
    store = Store([ProjectConfig("p", "p", "", "http://x", 100, Secret("k"))])
    store.record_success("p", aggregate([[session("a")]]), duration=1, finished=1)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store))
    helps = {
        line.split()[2]: line
        for line in generate_latest(registry).decode().splitlines()
        if line.startswith("# HELP llamacloud_chat")
    }
    assert helps
    assert all("last" in line and "poll" in line for line in helps.values()), helps


def test_the_cached_text_format_equals_prometheus_client_byte_for_byte() -> None:
    odd = 'we"ird\\name\nhere'
    store = Store(
        [
            ProjectConfig("p1", odd, "org-ü", "http://x", 100, Secret("k")),
            ProjectConfig("p2", "p2", "", "http://x", 100, Secret("k")),
            ProjectConfig("p3", "p3", "", "http://x", 100, Secret("k")),
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
