"""client.wire: the standard library's connections carry what httpx's would, byte for byte
where the API can tell, over plain HTTP and TLS, kept alive only while they can be."""

from __future__ import annotations

import http.client
import io
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import trustme

from exporter.client import ApiClient, Stopped
from exporter.client.wire import Fields
from exporter.config import ProjectConfig, Secret
from tests.client.helpers import KEY, hostile_project, listing
from tests.helpers import wait_for
from tests.hostile import Behaviour, Hostile, Request, Writer, answer, drip, page

CUSTOM = (("X-Team", Secret("sre")), ("User-Agent", Secret("ours/1")))


def lister(client: ApiClient, project: ProjectConfig) -> list[list[object]]:
    try:
        return [p.items or [] for p in client.pages(project, 100)]
    finally:
        client.close()


def two_pages(request: Request) -> Writer:
    if request.query.get("page_token") == "t1":
        return answer(200, page([{"session_id": "b"}]))
    return answer(200, page([{"session_id": "a"}], "t1"))


def noting_ports(answer_for: Callable[[Request], Writer], ports: list[int]) -> Behaviour:
    """``answer_for``'s answers, each noting the client's port in ``ports``: one port per
    connection the client opened."""

    def behaviour(request: Request) -> Writer:
        final = answer_for(request)

        def write(sock: socket.socket, stopping: Callable[[], bool]) -> None:
            ports.append(sock.getpeername()[1])
            final(sock, stopping)

        return write

    return behaviour


def test_the_api_sees_the_request_httpx_would_send(hostile: Hostile) -> None:
    hostile.behaviour = two_pages
    # A base URL with a path, not ASCII, before the API's: sent as httpx sends it.
    base = hostile.url.replace("127.0.0.1", "LOCALHOST") + "/gw/é"
    project = ProjectConfig("proj 1/é", "p", "org-1", base, 1, Secret(KEY))
    ours = lister(ApiClient(headers=CUSTOM), project)
    seen_ours = list(hostile.requests)
    hostile.requests.clear()
    theirs = lister(ApiClient(headers=CUSTOM, transport=httpx.HTTPTransport()), project)

    def comparable(request: Request) -> tuple[str, dict[str, str], dict[str, str]]:
        headers = {k.lower(): v for k, v in request.headers.items() if k.lower() != "connection"}
        return request.path, request.query, headers

    assert ours == theirs == [[{"session_id": "a"}], [{"session_id": "b"}]]
    assert [comparable(r) for r in seen_ours] == [comparable(r) for r in hostile.requests]
    headers = comparable(seen_ours[0])[2]
    assert headers["authorization"] == f"Bearer {KEY}"
    assert headers["user-agent"] == "ours/1"  # a custom header replaces ours, as in the SDK
    assert headers["x-team"] == "sre"
    assert headers["accept-encoding"] == "gzip"
    assert seen_ours[0].query["project_id"] == "proj 1/é"
    assert seen_ours[0].path == "/gw/%C3%A9/api/v1/chat"


def test_interim_answers_are_passed_over(hostile: Hostile) -> None:
    # A 103 Early Hints (and a 100) before the answer: the answer is the page, and the
    # connection is still good for the next page.
    def behaviour(request: Request) -> Writer:
        final = two_pages(request)

        def write(sock: socket.socket, stopping: Callable[[], bool]) -> None:
            sock.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
            sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            final(sock, stopping)

        return write

    hostile.behaviour = behaviour
    codes: list[str] = []
    items = lister(ApiClient(on_request=codes.append), hostile_project(hostile.url))
    assert items == [[{"session_id": "a"}], [{"session_id": "b"}]]
    assert codes == ["200", "200"]


def test_a_connection_the_server_closed_while_idle_is_not_reused(hostile: Hostile) -> None:
    # The server answers, then closes its end without saying so (no Connection: close), as
    # an idle timeout does. The next request opens a new connection: no error, no retry.
    ports: list[int] = []
    closed = threading.Semaphore(0)

    def closing(request: Request) -> Writer:
        final = answer(200, page([{"session_id": "a"}]))

        def write(sock: socket.socket, stopping: Callable[[], bool]) -> None:
            final(sock, stopping)
            sock.shutdown(socket.SHUT_RDWR)
            closed.release()

        return write

    hostile.behaviour = noting_ports(closing, ports)
    codes: list[str] = []
    waits: list[float] = []
    client = ApiClient(on_request=codes.append, wait=lambda s: waits.append(s) or False)
    try:
        for _ in range(3):
            assert [p.items for p in client.pages(hostile_project(hostile.url), 10)] == [
                [{"session_id": "a"}]
            ]
            assert closed.acquire(timeout=10)  # closed while idle, before the next request
    finally:
        client.close()
    assert codes == ["200", "200", "200"]
    assert waits == []
    assert len(set(ports)) == 3


def test_a_kept_alive_connection_carries_the_next_requests(hostile: Hostile) -> None:
    ports: list[int] = []
    hostile.behaviour = noting_ports(two_pages, ports)
    client = ApiClient(max_connections=1)
    try:
        for _ in range(3):
            assert len(list(client.pages(hostile_project(hostile.url), 10))) == 2
    finally:
        client.close()
    assert len(ports) == 6 and len(set(ports)) == 1


def test_a_cookie_the_api_sets_goes_back(hostile: Hostile) -> None:
    def behaviour(request: Request) -> Writer:
        if request.query.get("page_token") == "t1":
            return answer(200, page([]), headers={"Set-Cookie": "lb=node-7; Path=/"})
        return answer(200, page([{"session_id": "a"}], "t1"))

    hostile.behaviour = behaviour
    project = ProjectConfig("proj-1", "p", "", hostile.url, 1, Secret(KEY))
    client = ApiClient(max_connections=1)
    try:
        list(client.pages(project, 10))
        list(client.pages(project, 10))
    finally:
        client.close()
    assert [r.headers.get("Cookie") for r in hostile.requests] == [
        None,
        None,
        "lb=node-7",
        "lb=node-7",
    ]


def test_a_proxy_in_the_environment_is_used_and_no_proxy_honoured(
    hostile: Hostile, monkeypatch: pytest.MonkeyPatch
) -> None:
    hostile.behaviour = lambda request: answer(200, page([{"session_id": "a"}]))
    monkeypatch.setenv("HTTP_PROXY", hostile.url)
    via_proxy = ProjectConfig("proj-1", "p", "", "http://api.example.test", 10, Secret(KEY))
    assert lister(ApiClient(), via_proxy) == [[{"session_id": "a"}]]
    assert hostile.requests[-1].headers["Host"] == "api.example.test"

    with socket.socket() as closed:  # a port nothing listens on: a proxy that is down
        closed.bind(("127.0.0.1", 0))
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{closed.getsockname()[1]}")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert lister(ApiClient(), hostile_project(hostile.url)) == [[{"session_id": "a"}]]


@pytest.fixture
def tls_hostile(ca: trustme.CA, server_cert: trustme.LeafCert) -> Iterator[Hostile]:
    server = Hostile(lambda request: answer(200, page([])))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_cert.configure_cert(context)
    server._server.socket = context.wrap_socket(server._server.socket, server_side=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def https(server: Hostile) -> str:
    return server.url.replace("http://", "https://")


def test_tls_pages_and_the_deadline(
    tls_hostile: Hostile, ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    ports: list[int] = []
    tls_hostile.behaviour = noting_ports(two_pages, ports)
    project = ProjectConfig("proj-1", "p", "", https(tls_hostile), 1, Secret(KEY))
    client = ApiClient(max_connections=1)
    try:
        for _ in range(2):
            pages = [p.items for p in client.pages(project, 10)]
            assert pages == [[{"session_id": "a"}], [{"session_id": "b"}]]
    finally:
        client.close()
    assert tls_hostile.requests[0].headers["Authorization"] == f"Bearer {KEY}"
    assert len(ports) == 4 and len(set(ports)) == 1  # one handshake, kept alive

    body = page([{"session_id": f"s{i}"} for i in range(200)])
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    tls_hostile.behaviour = lambda request: drip(head + body, every=0.01)
    error = listing(ApiClient(timeout=1.0, max_retries=0), hostile_project(https(tls_hostile)))
    assert error.reason == "timeout"


def test_an_untrusted_certificate_says_so(tls_hostile: Hostile) -> None:
    error = listing(ApiClient(max_retries=0), hostile_project(https(tls_hostile)))
    assert error.reason == "connection"
    assert "TLS certificate not trusted" in str(error)
    assert KEY not in str(error)


def test_a_refused_connection_says_so() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
    error = listing(ApiClient(max_retries=0), hostile_project(url))
    assert error.reason == "connection"
    assert "connection refused" in str(error)


def test_closing_the_client_ends_a_request_under_way_at_once(hostile: Hostile) -> None:
    # At shutdown the pool closes a client lent to a request that waits for an answer: the
    # request ends now, as the exporter stopping, not with an error of a socket gone.
    answered = threading.Event()

    def behaviour(request: Request) -> Writer:
        def write(sock: socket.socket, stopping: Callable[[], bool]) -> None:
            answered.wait(30)

        return write

    hostile.behaviour = behaviour
    client = ApiClient(timeout=60)
    outcome: list[BaseException] = []

    def list_it() -> None:
        try:
            list(client.pages(hostile_project(hostile.url), 10))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=list_it)
    thread.start()
    try:
        wait_for(lambda: bool(hostile.requests), 10, "the request to arrive")
        client.close()
        thread.join(10)
        assert not thread.is_alive()
        assert [type(exc) for exc in outcome] == [Stopped]
    finally:
        answered.set()
        client.close()


def fields(raw: bytes) -> Fields:
    return Fields.read(io.BytesIO(raw))


def test_fields_are_read_as_h11_reads_them() -> None:
    read = fields(
        b"Content-Length: 12\r\nset-cookie: a=1\r\nSet-Cookie: b=2\r\n"
        b"X-Long: one\r\n  two\r\nX-Empty:\r\n\r\nbody"
    )
    assert read.get("content-length") == read.get("CONTENT-LENGTH") == "12"
    assert "Set-Cookie" in read and "content-type" not in read
    assert read.get("set-cookie") == "a=1"  # the first, as HTTPMessage.get
    assert read.items() == [
        ("Content-Length", "12"),
        ("set-cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("X-Long", "one two"),
        ("X-Empty", ""),
    ]
    assert read.get("x-missing", "none") == "none"


@pytest.mark.parametrize(
    "raw",
    [
        b"no colon here\r\n\r\n",
        b": no name\r\n\r\n",
        b"Name : space before the colon\r\n\r\n",
        b" folded: before any field\r\n\r\n",
        b"X: " + b"a" * 70000 + b"\r\n\r\n",
        b"".join(b"X-%d: v\r\n" % i for i in range(101)) + b"\r\n",
    ],
)
def test_fields_that_are_not_http_fail_the_answer(raw: bytes) -> None:
    with pytest.raises(http.client.HTTPException):
        fields(raw)


def test_a_malformed_answer_fails_the_poll_as_a_connection_failure(hostile: Hostile) -> None:
    def behaviour(request: Request) -> Writer:
        def write(sock: socket.socket, stopping: Callable[[], bool]) -> None:
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length 2\r\n\r\n{}")

        return write

    hostile.behaviour = behaviour
    error = listing(ApiClient(max_retries=0), hostile_project(hostile.url))
    assert error.reason == "connection"
    assert KEY not in str(error)
