"""What the web tests share: projects to serve, raw HTTP over a socket, users, web configs
written and loaded."""

from __future__ import annotations

import select
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest
import yaml

from exporter.web import WebConfig, WebConfigError, load_web_config
from exporter.web.server import HttpServer

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


def scrape(server: HttpServer) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=5)


HALF_SENT = b"GET /metrics HTTP/1.1\r\nHost: x\r\n"  # no blank line: the head never ends


def hashed(password: str, cost: int = 4) -> bytes:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=cost))


ALICE_PASSWORD = "alice's secret"
BOB_PASSWORD = "b0b:with:colons"
ALICE_HASH = bcrypt.hashpw(ALICE_PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
BOB_HASH = bcrypt.hashpw(BOB_PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
USERS = {"alice": ALICE_HASH, "bob": BOB_HASH}


TLS = {"cert_file": "server.crt", "key_file": "server.key"}
MTLS = {**TLS, "client_auth_type": "RequireAndVerifyClientCert", "client_ca_file": "ca.crt"}


def write(directory: Path, raw: Any, name: str = "web.yml") -> Path:
    path = directory / name
    if isinstance(raw, bytes):
        path.write_bytes(raw)
    else:
        path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw))
    return path


def load(directory: Path, raw: Any) -> WebConfig:
    return load_web_config(write(directory, raw))


def problems(directory: Path, raw: Any) -> list[str]:
    with pytest.raises(WebConfigError) as info:
        load(directory, raw)
    assert str(info.value) == "; ".join(info.value.problems)
    return info.value.problems


def context_of(config: WebConfig) -> ssl.SSLContext:
    context = config.ssl_context()
    assert context is not None
    return context
