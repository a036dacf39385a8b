"""web.server: a bounded server under clients that misbehave, over real sockets: held and
idle connections, trickling and silent requests, readers that never read, no file
descriptors left."""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from exporter.store import Store
from exporter.web import Limits, MetricsServer, protocol
from exporter.web.server import WORKERS, HttpServer
from tests.helpers import REPO, wait_for
from tests.web.helpers import HALF_SENT, Raw, scrape

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
