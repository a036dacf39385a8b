"""The web endpoints, and the server under clients that misbehave, over real sockets."""

from __future__ import annotations

import concurrent.futures
import gzip
import os
import resource
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import generate_latest
from prometheus_client.core import Metric
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.registry import CollectorRegistry

from exporter.aggregate import aggregate
from exporter.config import ProjectConfig, Secret
from exporter.metrics import StoreCollector
from exporter.store import ProjectState, Store
from exporter.web import Limits, MetricsServer, protocol
from exporter.web.server import MAX_HEAD_BYTES, WORKERS, HttpServer
from tests.helpers import REPO, parse_metrics, session, value, wait_for


def project(pid: str, name: str = "") -> ProjectConfig:
    return ProjectConfig(pid, name or pid, "", "http://127.0.0.1:1", 100, Secret("k"))


@pytest.fixture
def servers() -> Iterator[list[HttpServer]]:
    """Every server a test starts, stopped when it ends."""
    started: list[HttpServer] = []
    try:
        yield started
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def start_server(servers: list[HttpServer]) -> Callable[..., MetricsServer]:
    """A MetricsServer on a free port with two projects; keywords are its Limits."""

    def start(**limits: Any) -> MetricsServer:
        store = Store([project("p1", "<b>prod</b>"), project("p2")])
        server = MetricsServer("127.0.0.1", 0, store, Limits(**limits))
        servers.append(server)
        server.start()
        return server

    return start


@pytest.fixture
def served(servers: list[HttpServer]) -> tuple[Store, str]:
    store = Store([project("p1", "<b>prod</b>"), project("p2")])
    server = MetricsServer("127.0.0.1", 0, store)
    servers.append(server)
    server.start()
    return store, f"http://127.0.0.1:{server.port}"


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
    expected = {
        False: generate_latest(registry.restricted_registry(FILTERED)),
        True: openmetrics_latest(registry.restricted_registry(FILTERED)),
    }
    assert b'llamacloud_up{project_id="p3"} 1.0' in expected[False]
    rendered: list[int] = []  # projects in each family rendering, from now on
    project_families = StoreCollector.project_families

    def counted(self: StoreCollector, projects: tuple[ProjectState, ...]) -> Iterator[Metric]:
        rendered.append(len(projects))
        return project_families(self, projects)

    monkeypatch.setattr(StoreCollector, "project_families", counted)
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


# ------------------------------------------------------------------ raw HTTP over a socket


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes


class Raw:
    """One client socket: exact bytes out, responses framed by Content-Length."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def get(self, path: str = "/healthz", *headers: str, method: str = "GET") -> None:
        lines = [f"{method} {path} HTTP/1.1", "Host: x", *headers]
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode())

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError(f"the server closed; unread: {self.buffer!r}")
        self.buffer += data

    def response(self, head_only: bool = False) -> Response:
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *fields = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in fields:
            name, _, field_value = line.partition(":")
            headers[name.lower()] = field_value.strip()
        length = 0 if head_only else int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            self._fill()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return Response(int(status_line.split(" ")[1]), headers, body)

    def closed_within(self, timeout: float) -> bool:
        """Whether the server closes the connection (EOF or reset) within ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            readable, _, _ = select.select(
                [self.sock], [], [], max(0.0, deadline - time.monotonic())
            )
            if not readable:
                return False
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                return True
            if not data:
                return True
            self.buffer += data

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw() -> Iterator[Callable[[int], Raw]]:
    opened: list[Raw] = []

    def connect(port: int) -> Raw:
        conn = Raw(port)
        opened.append(conn)
        return conn

    try:
        yield connect
    finally:
        for conn in opened:
            conn.close()


def scrape(server: HttpServer) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=5)


HALF_SENT = b"GET /metrics HTTP/1.1\r\nHost: x\r\n"  # no blank line: the head never ends


# ------------------------------------------------------------------ connections and threads


def test_a_scrape_is_answered_while_a_thousand_connections_are_held(
    start_server: Callable[..., MetricsServer], raw: Callable[[int], Raw]
) -> None:
    # The old server made a thread per connection: 1,000 held sockets were 1,000 threads.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 3000  # the clients' sockets, the server's (at most 512) and some to spare
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is below {needed}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    threads = threading.active_count()
    server = start_server()
    assert server.max_connections == 512
    clients = [raw(server.port) for _ in range(1000)]
    for conn in clients[::10]:
        conn.send(HALF_SENT)
    wait_for(lambda: server.connections == 512, 10, "the connection cap to fill")

    started = time.monotonic()
    response = scrape(server)
    assert response.status_code == 200
    assert "llamacloud_up" in response.text
    assert time.monotonic() - started < 5
    assert server.connections <= 512
    assert threading.active_count() <= threads + 1 + WORKERS  # the loop and the app workers


def test_at_the_cap_the_connection_idle_longest_makes_room(
    start_server: Callable[..., MetricsServer], raw: Callable[[int], Raw]
) -> None:
    server = start_server(max_connections=50)
    clients = [raw(server.port) for _ in range(200)]
    for conn in clients[::2]:
        conn.send(HALF_SENT)  # a head still arriving is no request in progress either
    for conn in clients[:150]:
        assert conn.closed_within(5)
    wait_for(lambda: server.connections == 50, 5, "the newest 50 connections")
    assert not any(conn.closed_within(0) for conn in clients[150:])

    assert scrape(server).status_code == 200  # its connection evicted the oldest one left
    assert clients[150].closed_within(5)
    assert not any(conn.closed_within(0) for conn in clients[151:])
    assert server.connections <= 50


def test_with_every_connection_mid_request_a_new_one_is_closed_at_once(
    start_server: Callable[..., MetricsServer], raw: Callable[[int], Raw]
) -> None:
    server = start_server(max_connections=2)
    gate = threading.Event()
    entered: list[str] = []
    app = server.app

    def slow_app(request: protocol.Request) -> protocol.Response:
        entered.append(threading.current_thread().name)
        gate.wait(10)
        return app(request)

    server.app = slow_app
    busy = [raw(server.port), raw(server.port)]
    for conn in busy:
        conn.get("/healthz?wait=1")  # with a query, the app runs on a worker thread
    wait_for(lambda: len(entered) == 2, 5, "two requests in the app")
    try:
        assert raw(server.port).closed_within(5)  # nothing to evict: refused, not queued
    finally:
        gate.set()
    for conn in busy:
        assert conn.response().body == b"ok\n"


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


def test_half_sent_silent_and_trickling_requests_are_closed_after_the_request_timeout(
    start_server: Callable[..., MetricsServer], raw: Callable[[int], Raw]
) -> None:
    server = start_server(request_timeout=0.5)
    half, silent, trickle = raw(server.port), raw(server.port), raw(server.port)
    half.send(HALF_SENT)
    started = time.monotonic()
    # One byte every 0.1 s is progress, but the deadline runs from the request's first byte.
    for byte in HALF_SENT * 10:
        if trickle.closed_within(0.1):
            break
        trickle.send(bytes([byte]))
    else:
        pytest.fail("a request trickling in was never cut off")
    assert time.monotonic() - started < 3
    assert half.response().status == 408
    assert half.closed_within(3)
    assert silent.closed_within(3)
    assert silent.buffer == b""  # it asked nothing, so it is told nothing
    assert scrape(server).status_code == 200


def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(
    start_server: Callable[..., MetricsServer], raw: Callable[[int], Raw]
) -> None:
    server = start_server(idle_timeout=0.5)
    conn = raw(server.port)
    for _ in range(2):
        conn.get()
        assert conn.response().status == 200
    idle_since = time.monotonic()
    assert conn.closed_within(5)
    assert time.monotonic() - idle_since >= 0.25  # not at once, as an HTTP/1.0 server does

    # Between requests the idle timeout applies, not the (here shorter) request timeout.
    patient = start_server(idle_timeout=30, request_timeout=0.3)
    conn = raw(patient.port)
    conn.get()
    assert conn.response().status == 200
    assert not conn.closed_within(1)
    conn.get()
    assert conn.response().status == 200


def test_stop_closes_every_connection_and_ends_every_thread(
    start_server: Callable[..., MetricsServer], raw: Callable[[int], Raw]
) -> None:
    server = start_server()
    idle, half, used = raw(server.port), raw(server.port), raw(server.port)
    half.send(HALF_SENT)
    used.get()
    assert used.response().status == 200
    wait_for(lambda: server.connections == 3, 5, "three connections")

    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 3
    assert all(conn.closed_within(3) for conn in (idle, half, used))
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=5).close()
    wait_for(
        lambda: not [t for t in threading.enumerate() if t.name.startswith("http-")],
        5,
        "the server's threads to end",
    )


def test_an_ipv6_host_listens_on_ipv6_and_the_any_address_on_both(
    servers: list[HttpServer],
) -> None:
    for host, urls in (("::1", ["http://[::1]"]), ("::", ["http://[::1]", "http://127.0.0.1"])):
        try:
            server = MetricsServer(host, 0, Store())
        except OSError as exc:
            pytest.skip(f"cannot listen on {host}: {exc}")
        servers.append(server)
        server.start()
        for url in urls:
            assert httpx.get(f"{url}:{server.port}/healthz", timeout=5).status_code == 200


# ------------------------------------------------------------------ HTTP semantics


def test_head_sends_the_get_headers_and_no_body(
    start_server: Callable[..., MetricsServer], raw: Callable[[int], Raw]
) -> None:
    server = start_server()
    conn = raw(server.port)
    for path in ("/metrics", "/metrics?name[]=llamacloud_up", "/healthz", "/"):
        # HEAD then GET on one connection: had HEAD sent a body, the GET's status line would
        # not come next.
        conn.get(path, "Accept-Encoding: identity", method="HEAD")
        conn.get(path, "Accept-Encoding: identity")
        head, got = conn.response(head_only=True), conn.response()
        assert (head.status, got.status) == (200, 200), path
        assert head.headers["content-length"] == str(len(got.body)) != "0", path
        assert head.headers["content-type"] == got.headers["content-type"], path
    assert conn.buffer == b""
    assert not conn.closed_within(0)


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


def test_keep_alive_serves_many_requests_and_connection_close_closes(
    start_server: Callable[..., MetricsServer], raw: Callable[[int], Raw]
) -> None:
    server = start_server()
    conn = raw(server.port)
    for path in ("/healthz", "/metrics", "/readyz"):
        conn.get(path)
        assert conn.response().status in (200, 503)
    conn.get("/healthz")
    conn.get("/healthz")  # pipelined: answered in order
    assert [conn.response().body, conn.response().body] == [b"ok\n", b"ok\n"]
    conn.get("/healthz", "Connection: close")
    last = conn.response()
    assert last.headers["connection"] == "close"
    assert conn.closed_within(5)

    old = raw(server.port)
    old.send(b"GET /healthz HTTP/1.0\r\n\r\n")
    assert old.response().status == 200
    assert old.closed_within(5)
    old_kept = raw(server.port)
    for _ in range(2):
        old_kept.send(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        assert old_kept.response().headers["connection"] == "keep-alive"

    before = server.connections  # lingering closed ones may still go, none may come
    with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=5) as client:
        for _ in range(5):
            assert client.get("/healthz").status_code == 200
        assert server.connections <= before + 1  # five requests over one connection


def test_the_request_target_is_read_as_wsgiref_reads_it(
    start_server: Callable[..., MetricsServer], raw: Callable[[int], Raw]
) -> None:
    server = start_server()
    conn = raw(server.port)
    for target in ("/%6Detrics", "http://x/healthz", "/healthz?a=b"):
        conn.get(target)
        assert conn.response().status == 200, target
    conn.send(b"\r\nGET /healthz HTTP/1.1\nHost: x\n\n")  # a stray blank line; bare LFs
    assert conn.response().status == 200


def test_an_oversized_head_gets_431_and_the_connection_closes(
    start_server: Callable[..., MetricsServer], raw: Callable[[int], Raw]
) -> None:
    server = start_server()
    one_long = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"
    many = (
        b"GET /metrics HTTP/1.1\r\n" + b"X-Some: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n" * 500 + b"\r\n"
    )
    for head in (one_long, many):
        conn = raw(server.port)
        conn.send(head)
        assert conn.response().status == 431
        assert conn.closed_within(5)


def test_the_head_limit_holds_to_the_byte(
    start_server: Callable[..., MetricsServer], raw: Callable[[int], Raw]
) -> None:
    server = start_server()

    def head(size: int, blank: bytes = b"") -> bytes:
        start = blank + b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: "
        return start + b"a" * (size - len(start) - 4) + b"\r\n\r\n"

    # Blank lines before the request line count too; the head may come whole or in pieces.
    for blank in (b"", b"\r\n\n"):
        for pieces in (1, 3):
            for size, status in ((MAX_HEAD_BYTES, 200), (MAX_HEAD_BYTES + 1, 431)):
                data = head(size, blank)
                assert len(data) == size
                conn = raw(server.port)
                step = -(-size // pieces)
                for start in range(0, size, step):
                    conn.send(data[start : start + step])
                assert conn.response().status == status, (blank, pieces, size)


@pytest.mark.parametrize(
    "request_line",
    [
        b"GARBAGE",
        b"GET /metrics",  # HTTP/0.9
        b"GET metrics HTTP/1.1",
        b"GET /metrics HTTP/1.1 extra",
        b"GET  /metrics HTTP/1.1",
        b"G(T /metrics HTTP/1.1",
        b"GET /m\x00etrics HTTP/1.1",
        b"GET /metrics FTP/1.1",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello
        b"GET http://[::1/ HTTP/1.1",  # a host urlsplit cannot read
    ],
)
def test_a_malformed_request_line_gets_400_and_the_connection_closes(
    start_server: Callable[..., MetricsServer], raw: Callable[[int], Raw], request_line: bytes
) -> None:
    server = start_server()
    conn = raw(server.port)
    conn.send(request_line + b"\r\nHost: x\r\n\r\n")
    assert conn.response().status == 400
    assert conn.closed_within(5)


@pytest.mark.parametrize(
    "header", [b"Host : x", b" folded", b"Content-Length: 5, 6", b"Content-Length: -1"]
)
def test_a_malformed_header_gets_400(
    start_server: Callable[..., MetricsServer], raw: Callable[[int], Raw], header: bytes
) -> None:
    server = start_server()
    conn = raw(server.port)
    conn.send(b"GET /healthz HTTP/1.1\r\nX-A: b\r\n" + header + b"\r\n\r\n")
    assert conn.response().status == 400
    assert conn.closed_within(5)


def test_http_2_gets_505(
    start_server: Callable[..., MetricsServer], raw: Callable[[int], Raw]
) -> None:
    conn = raw(start_server().port)
    conn.send(b"GET /healthz HTTP/2.0\r\n\r\n")
    assert conn.response().status == 505


SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize(
    ("attempt", "status"),
    [
        pytest.param(
            b"POST /-/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            411,  # refused before a chunk is read, as every chunked body is
            id="content-length and transfer-encoding",
        ),
        pytest.param(
            b"POST /-/reload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Length: 5\r\n\r\n0\r\n\r\n",
            411,
            id="transfer-encoding and content-length",
        ),
        pytest.param(
            b"POST /-/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
            b"Content-Length: 38\r\n\r\n",
            400,
            id="two content-lengths",
        ),
        pytest.param(
            b"POST /-/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 0, 38\r\n\r\n",
            400,
            id="a content-length of two values",
        ),
        pytest.param(
            b"POST /-/reload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"0x10\r\n" + b"a" * 16 + b"\r\n0\r\n\r\n",
            411,  # the bad chunk size is never parsed
            id="transfer-encoding chunked with a bad chunk size",
        ),
        pytest.param(
            b"POST /-/reload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n",
            411,
            id="an unknown transfer-encoding",
        ),
        pytest.param(
            b"POST /-/reload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n",
            400,
            id="a space before the colon",
        ),
        pytest.param(
            # A proxy that ends lines at CRLF alone sees one X-A field; this server, as RFC
            # 9112 lets it, ends them at the bare LF too, and sees the Transfer-Encoding.
            b"POST /-/reload HTTP/1.1\r\nHost: x\r\nX-A: b\nTransfer-Encoding: chunked\r\n\r\n",
            411,
            id="a transfer-encoding after a bare LF",
        ),
        pytest.param(
            b"POST /-/reload HTTP/1.1\r\nHost: x\r\nX-A: b\rTransfer-Encoding: chunked\r\n\r\n",
            400,
            id="a bare CR in a header",
        ),
        pytest.param(
            b"POST /-/reload HTTP/1.1\r\nHost: x\r\nX-A: b\r\n Transfer-Encoding: chunked\r\n\r\n",
            400,
            id="a transfer-encoding folded into another header",
        ),
        pytest.param(
            b"GET /healthz HTTP/1.1 /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
            400,
            id="spaces in the request target",
        ),
        pytest.param(b"GET /healthz HTTP/1.1\r\n\r\n", 400, id="no host"),
        pytest.param(b"GET /healthz HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400, id="two hosts"),
    ],
)
def test_a_smuggling_attempt_is_refused_and_what_follows_it_is_never_served(
    start_server: Callable[..., MetricsServer],
    raw: Callable[[int], Raw],
    attempt: bytes,
    status: int,
) -> None:
    server = start_server()
    asked: list[str] = []
    app = server.app

    def watched(request: protocol.Request) -> protocol.Response:
        asked.append(request.path)
        return app(request)

    server.app = watched
    framed = raw(server.port)  # the control: a well-framed request and the same one after it
    framed.send(b"POST /-/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab" + SMUGGLED)
    assert [framed.response().status, framed.response().status] == [403, 404]
    assert asked == ["/-/reload", "/smuggled"]
    asked.clear()

    conn = raw(server.port)
    conn.send(attempt + SMUGGLED)
    assert conn.response().status == status
    assert conn.closed_within(5)
    assert b"HTTP/1.1 " not in conn.buffer  # no second answer
    assert asked == []  # the app saw neither
    assert scrape(server).status_code == 200


def test_an_http_1_0_request_needs_no_host(
    start_server: Callable[..., MetricsServer], raw: Callable[[int], Raw]
) -> None:
    conn = raw(start_server().port)
    conn.send(b"GET /healthz HTTP/1.0\r\n\r\n")
    assert conn.response().body == b"ok\n"


def test_request_bodies_come_by_content_length_and_small(
    start_server: Callable[..., MetricsServer], raw: Callable[[int], Raw]
) -> None:
    server = start_server(max_body_bytes=1000)
    server.reload = lambda: (True, "reloaded")

    chunked = raw(server.port)
    chunked.get("/-/reload", "Transfer-Encoding: chunked", method="POST")
    chunked.send(b"5\r\nhello\r\n0\r\n\r\n")
    assert chunked.response().status == 411
    assert chunked.closed_within(5)

    large = raw(server.port)
    large.get("/-/reload", "Content-Length: 1001", method="POST")
    assert large.response().status == 413  # answered before the body is even sent
    assert large.closed_within(5)

    conn = raw(server.port)
    conn.get("/-/reload", "Content-Length: 1000", method="POST")
    conn.send(b"x" * 1000)
    assert conn.response().body == b"reloaded\n"
    conn.get("/-/reload", "Content-Length: 3", "Expect: 100-continue", method="POST")
    assert conn.response().status == 100  # the client may send the body now
    conn.send(b"abc")
    assert conn.response().status == 200
    conn.get("/healthz")  # the bodies did not bleed into the next request
    assert conn.response().body == b"ok\n"


def test_a_client_that_never_reads_its_response_is_dropped(
    servers: list[HttpServer],
) -> None:
    big = b"x" * (32 << 20)  # more than the socket buffers on both sides hold

    def app(request: protocol.Request) -> protocol.Response:
        return protocol.Response("200 OK", (("Content-Type", "application/octet-stream"),), big)

    server = HttpServer("127.0.0.1", 0, app, Limits(write_timeout=0.5))
    servers.append(server)
    server.start()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    with sock:
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_for(lambda: server.connections == 1, 5, "the connection")
        wait_for(lambda: server.connections == 0, 10, "the stalled connection to be dropped")
        received = 0
        sock.settimeout(10)
        try:
            while data := sock.recv(1 << 20):
                received += len(data)
        except ConnectionResetError:
            pass
    assert received < len(big)


def test_a_failing_app_gets_500_and_the_server_goes_on(
    servers: list[HttpServer], raw: Callable[[int], Raw]
) -> None:
    def app(request: protocol.Request) -> protocol.Response:
        if request.path == "/boom":
            raise RuntimeError("boom")
        if request.path == "/split":  # a header that would split the response head in two
            return protocol.Response("200 OK", (("X-A", "b\r\nX-Injected: 1"),))
        return protocol.Response(
            "200 OK", (("Content-Type", "text/plain"),), request.query.encode()
        )

    server = HttpServer("127.0.0.1", 0, app)
    servers.append(server)
    server.start()
    conn = raw(server.port)
    conn.get("/boom")
    assert conn.response().status == 500
    conn.get("/split")
    split = conn.response()
    assert split.status == 500
    assert "x-injected" not in split.headers
    conn.get("/echo?ping", "Content-Length: 4", method="POST")
    conn.send(b"abcd")  # read and dropped: no page takes a body
    assert conn.response().body == b"ping"


# ------------------------------------------------------------------ out of file descriptors

FD_STARVED_SERVER = """
import os, resource, sys
from exporter.logs import configure_logging
from exporter.web.app import MetricsServer
from exporter.store import Store

configure_logging("info", "json")
server = MetricsServer("127.0.0.1", 0, Store())
server.start()
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
low = 256 if soft == resource.RLIM_INFINITY else min(256, soft)
resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))  # then take every descriptor left
hog = []
while True:
    try:
        hog.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        break
print(server.port, flush=True)
sys.stdin.readline()
for fd in hog:
    os.close(fd)
print("released", flush=True)
sys.stdin.readline()
server.stop()
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_out_of_file_descriptors_the_accept_loop_backs_off_quietly() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", FD_STARVED_SERVER],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    clients: list[socket.socket] = []
    try:
        port = int(proc.stdout.readline())
        # Connections the server cannot accept: the old accept loop spun on them.
        clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(5)]
        before, started = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(2)  # the window the CPU use is measured over
        used = cpu_seconds(proc.pid) - before
        assert used < 0.25 * (time.monotonic() - started)

        proc.stdin.write("release\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "released\n"
        wait_for(
            lambda: httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200,
            10,
            "/healthz once file descriptors are back",
        )
        proc.stdin.close()
        assert proc.wait(10) == 0
        logs = proc.stderr.read()
    finally:
        for client in clients:
            client.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in logs
    assert logs.count("http_accept_paused") == 1, logs
    assert logs.count("http_accept_resumed") == 1, logs


def test_a_content_length_of_thousands_of_digits_is_refused_not_a_crash(
    start_server: Callable[..., MetricsServer], raw: Callable[[int], Raw]
) -> None:
    server = start_server()
    # 20 digits are a length (too large); past that, h11 takes none for a length at all.
    for digits, status in ((20, 413), (5000, 400)):
        conn = raw(server.port)
        conn.get("/-/reload", "Content-Length: " + "9" * digits, method="POST")
        assert conn.response().status == status
        assert conn.closed_within(5)
    assert scrape(server).status_code == 200


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


def test_clients_that_stop_reading_cannot_hold_the_server(
    start_server: Callable[..., MetricsServer], raw: Callable[[int], Raw]
) -> None:
    # Every slot held by a client that asked for a large answer and never reads it: the
    # stalled writers are dropped, first for room, then to keep the held bodies bounded.
    server = start_server(max_connections=8, max_pending_bytes=32 << 20, write_timeout=60)
    big = b"x" * (16 << 20)  # more than the kernel buffers of a socket take
    app = server.app

    def large(request: protocol.Request) -> protocol.Response:
        if request.path == "/metrics":
            return protocol.Response("200 OK", (("Content-Type", "text/plain"),), big)
        return app(request)

    server.app = large
    stalled = []
    for _ in range(8):
        conn = raw(server.port)
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        conn.get("/metrics")
        stalled.append(conn)
    wait_for(lambda: server.connections <= 3, 10, "stalled writers dropped past the byte bound")
    assert httpx.get(f"http://127.0.0.1:{server.port}/healthz", timeout=5).status_code == 200
