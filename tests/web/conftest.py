"""Fixtures of the web tests: servers stopped at teardown, raw sockets, certificates."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from exporter.store import Store
from exporter.web import Limits, MetricsServer
from exporter.web.server import HttpServer
from tests.helpers import project
from tests.web.helpers import Raw


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


# --- fixtures and helpers ---------------------------------------------------------------


@pytest.fixture(scope="module")
def other_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def client_cert(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert("prometheus.example.net", "prometheus@example.net", "2001:db8::1")


@pytest.fixture
def certs(tmp_path: Path, ca: trustme.CA, server_cert: trustme.LeafCert) -> Path:
    """server.crt, server.key and ca.crt in tmp_path."""
    server_cert.cert_chain_pems[0].write_to_path(str(tmp_path / "server.crt"))
    server_cert.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.crt"))
    return tmp_path
