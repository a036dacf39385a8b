"""web.protocol: HTTP/1.1 read with h11: heads and their limit, malformed lines and
headers, smuggling, bodies by Content-Length, HEAD."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from exporter.web import MetricsServer, protocol
from exporter.web.server import MAX_HEAD_BYTES
from tests.web.helpers import Raw, scrape

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
