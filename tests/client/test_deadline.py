"""client.deadline: a total deadline per request, whatever pace the server keeps."""

from __future__ import annotations

import socket
from collections.abc import Callable

from exporter.client import ApiClient
from tests.client.helpers import hostile_project, listing
from tests.hostile import Hostile, Request, Writer, drip, page


def test_a_dripping_server_is_cut_at_the_request_deadline(hostile: Hostile) -> None:
    # A whole answer, a byte every 10 ms: no read ever waits a second, so a timeout per
    # read never fires, and the answer would take a minute. The request's deadline does.
    body = page([{"session_id": f"s{i}"} for i in range(200)])
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    sent = []

    def behaviour(request: Request) -> Writer:
        write = drip(head + body, every=0.01)

        def counting(sock: socket.socket, stopping: Callable[[], bool]) -> None:
            try:
                write(sock, stopping)
            finally:
                sent.append(True)

        return counting

    hostile.behaviour = behaviour
    error = listing(ApiClient(timeout=1.0, max_retries=0), hostile_project(hostile.url))
    assert error.reason == "timeout"
    assert not sent  # the server was still dripping: the client gave up, not the server


def test_a_body_without_length_cut_at_the_deadline_is_a_timeout(hostile: Hostile) -> None:
    # Without Content-Length the body ends when the connection does: the cut must not pass
    # for the end of a (then invalid) page.
    body = page([{"session_id": f"s{i}"} for i in range(200)])
    hostile.behaviour = lambda request: drip(
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body, every=0.01
    )
    error = listing(ApiClient(timeout=1.0, max_retries=0), hostile_project(hostile.url))
    assert error.reason == "timeout"


def test_the_watchdog_holds_nothing_between_requests(hostile: Hostile) -> None:
    client = ApiClient(timeout=600)
    try:
        for _ in range(50):
            list(client.pages(hostile_project(hostile.url), 10))
        assert client._watchdog._active == set()
    finally:
        client.close()
