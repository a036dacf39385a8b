"""The daemon behind a web config: a real TLS handshake, client certificates, basic auth,
reloads."""

from __future__ import annotations

import asyncio
import itertools
import signal
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest
import trustme
import yaml

from tests.helpers import REPO, Exporter, free_port, run_cli, wait_for, write_config

USER, PASSWORD = "prometheus", "correct horse battery staple"


def password_hash(password: str = PASSWORD) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


def server_files(ca: trustme.CA, directory: Path) -> tuple[Path, Path]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path = directory / "server.crt", directory / "server.key"
    cert.private_key_pem.write_to_path(str(key_path))
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    return cert_path, key_path


def trust(ca: trustme.CA, client_cert: trustme.LeafCert | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    if client_cert is not None:
        client_cert.configure_cert(context)
    return context


def web_config(path: Path, **content: Any) -> Path:
    path.write_text(yaml.safe_dump(content))
    return path


def tls_web_config(ca: trustme.CA, directory: Path, **more: Any) -> Path:
    """A web config serving a fresh certificate of ``ca`` (and ``more`` top-level keys)."""
    cert, key = server_files(ca, directory)
    tls = {"cert_file": str(cert), "key_file": str(key)}
    return web_config(directory / "web.yml", tls_server_config=tls, **more)


def served_certificate(port: int, context: ssl.SSLContext) -> bytes:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


@pytest.fixture
def serve(
    sim: Any, tmp_path: Path, start_exporter: Callable[..., Exporter]
) -> Callable[..., Exporter]:
    """The exporter over one project of the simulator, with no sessions, behind a web config;
    ``extra`` goes on its command line, ``client`` to its requests (as for start_exporter)."""

    def start(web: Path, *extra: str, **client: Any) -> Exporter:
        sim.set_sessions("p", [])
        config = write_config(tmp_path / "c.yaml", sim.base_url, ["p"])
        return start_exporter(config, "--web.config.file", str(web), *extra, **client)

    return start


def port_of(exp: Exporter) -> int:
    return int(exp.url.rsplit(":", 1)[1])


def test_metrics_over_tls_with_a_real_handshake(
    tmp_path: Path, serve: Callable[..., Exporter], ca: trustme.CA
) -> None:
    web = tls_web_config(ca, tmp_path)
    exp = serve(web, verify=trust(ca))
    assert exp.url.startswith("https://")
    assert exp.get("/metrics").status_code == 200
    # Plain HTTP gets no answer; a client that does not trust the CA fails the handshake.
    with pytest.raises(httpx.HTTPError):
        httpx.get(exp.url.replace("https", "http") + "/metrics", timeout=5)
    with pytest.raises(httpx.ConnectError):
        httpx.get(exp.url + "/metrics", timeout=5, verify=ssl.create_default_context())
    assert "TLS" in exp.logs()  # exporter_started says what the web config turned on


def test_a_client_certificate_is_required_when_asked_for(
    tmp_path: Path, serve: Callable[..., Exporter], ca: trustme.CA
) -> None:
    cert, key = server_files(ca, tmp_path)
    client_ca = trustme.CA()
    client_ca_path = tmp_path / "clients.pem"
    client_ca.cert_pem.write_to_path(str(client_ca_path))
    web = web_config(
        tmp_path / "web.yml",
        tls_server_config={
            "cert_file": str(cert),
            "key_file": str(key),
            "client_ca_file": str(client_ca_path),
            "client_auth_type": "RequireAndVerifyClientCert",
        },
    )
    good = client_ca.issue_cert("prometheus.example")
    exp = serve(web, verify=trust(ca, good))
    assert exp.get("/metrics").status_code == 200
    stranger = trustme.CA().issue_cert("prometheus.example")
    for context in (trust(ca), trust(ca, stranger)):
        with pytest.raises(httpx.HTTPError):
            httpx.get(exp.url + "/metrics", timeout=5, verify=context).raise_for_status()


def test_basic_auth_guards_every_endpoint_and_is_never_logged(
    tmp_path: Path, serve: Callable[..., Exporter]
) -> None:
    web = web_config(tmp_path / "web.yml", basic_auth_users={USER: password_hash()})
    exp = serve(web, "--web.enable-lifecycle", auth=(USER, PASSWORD))
    assert exp.get("/metrics").status_code == 200
    for path in ("/metrics", "/healthz", "/readyz", "/", "/nope"):
        for auth in (None, (USER, "wrong"), ("someone", PASSWORD)):
            answer = exp.get(path, auth=auth)
            assert answer.status_code == 401, (path, auth)
            assert answer.headers["www-authenticate"].startswith("Basic ")
    assert exp.get("/metrics", auth=None, headers={"Authorization": "Bearer x"}).status_code == 401
    post = {**exp.client, "auth": None}
    assert httpx.post(exp.url + "/-/reload", timeout=5, **post).status_code == 401
    assert httpx.post(exp.url + "/-/reload", timeout=30, **exp.client).status_code == 200
    assert PASSWORD not in exp.logs() and "wrong" not in exp.logs()


def test_a_reload_picks_up_a_renewed_certificate_and_keeps_the_old_web_config_if_broken(
    tmp_path: Path, serve: Callable[..., Exporter], ca: trustme.CA
) -> None:
    web = tls_web_config(ca, tmp_path)
    exp = serve(web, verify=trust(ca))
    first = served_certificate(port_of(exp), trust(ca))
    server_files(ca, tmp_path)  # renewed in place, as cert-manager or certbot do
    exp.proc.send_signal(signal.SIGHUP)
    renewed = wait_for(
        lambda: (der := served_certificate(port_of(exp), trust(ca))) != first and der,
        what="the renewed certificate",
    )
    # A broken web config on reload: nothing changes, and the reload metric says so.
    web.write_text("tls_server_config: {cert_file: /nonexistent.crt, key_file: /nonexistent.key}\n")
    exp.proc.send_signal(signal.SIGHUP)
    exp.wait_metric("llamacloud_config_last_reload_successful", {}, lambda v: v == 0)
    assert served_certificate(port_of(exp), trust(ca)) == renewed
    assert "tls_server_config.cert_file" in exp.logs()


def test_check_config_validates_the_web_config(tmp_path: Path, ca: trustme.CA) -> None:
    cert, key = server_files(ca, tmp_path)
    config = write_config(tmp_path / "c.yaml", "http://127.0.0.1:1", ["p"])

    def check(web: Path) -> subprocess.CompletedProcess[str]:
        return run_cli("--check-config", "--config", str(config), "--web.config.file", str(web))

    good = web_config(
        tmp_path / "good.yml",
        tls_server_config={"cert_file": str(cert), "key_file": str(key)},
        basic_auth_users={USER: password_hash()},
    )
    done = check(good)
    assert done.returncode == 0, done.stderr
    assert "web configuration is valid" in done.stdout
    other_key = tmp_path / "other.key"
    ca.issue_cert("127.0.0.1").private_key_pem.write_to_path(str(other_key))
    bad = web_config(
        tmp_path / "bad.yml",
        tls_server_config={"cert_file": str(cert), "key_file": str(other_key)},
        basic_auth_users={USER: "plain-text-password"},
    )
    done = check(bad)
    assert done.returncode == 2
    assert "tls_server_config.key_file" in done.stderr
    assert f"basic_auth_users.{USER}" in done.stderr
    assert "plain-text-password" not in done.stderr + done.stdout


# ------------------------------------------------ basic auth under a flood, and across reloads


def test_a_flood_of_wrong_passwords_never_locks_out_the_right_one(
    tmp_path: Path, serve: Callable[..., Exporter]
) -> None:
    """Before, a check that found bcrypt busy failed at once: six guessing clients kept it
    busy, and a user's first login (after a start or a reload) was a 401."""
    # Cost 8 (some 15 ms a check): six clients that guess without pause keep bcrypt busy.
    logins = {f"user{i}": f"password {i}" for i in range(4)}
    users = {
        name: bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=8)).decode()
        for name, password in logins.items()
    }
    web = web_config(tmp_path / "web.yml", basic_auth_users={USER: password_hash(), **users})
    exp = serve(web, auth=(USER, PASSWORD))
    assert exp.get("/metrics").status_code == 200  # remembered from now on
    stop = threading.Event()
    answers: list[int] = []

    def guess(n: int) -> None:
        victim = [*logins, "admin"][n % 5]
        with httpx.Client(base_url=exp.url, timeout=30) as client:
            for i in itertools.count():
                if stop.is_set():
                    return
                answers.append(client.get("/metrics", auth=(victim, f"guess {n}.{i}")).status_code)

    guessers = [threading.Thread(target=guess, args=(n,)) for n in range(6)]
    for thread in guessers:
        thread.start()
    try:
        wait_for(lambda: len(answers) >= 30, 60, "the guessing to be under way")
        assert exp.get("/metrics").status_code == 200  # a remembered password: at once
        first_logins = [exp.get("/metrics", auth=login).status_code for login in logins.items()]
        assert first_logins == [200] * len(logins)
    finally:
        stop.set()
        for thread in guessers:
            thread.join(60)
    # Six clients never fill the queue: every guess was checked, and refused as wrong.
    assert set(answers) == {401}


def test_a_reload_that_keeps_the_users_keeps_their_remembered_passwords(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, every reload emptied the cache: the first scrape after it paid a bcrypt check
    again, behind whatever wrong guesses were queued."""
    from exporter.cli import _components, _reloader
    from exporter.config import load_config
    from exporter.openfiles import Budget
    from exporter.web import MetricsServer, load_web_config

    checked: list[bytes] = []
    real = bcrypt.checkpw

    def counted(password: bytes, hashed: bytes) -> bool:
        checked.append(password)
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counted)
    config_path = write_config(tmp_path / "c.yaml", "http://127.0.0.1:1", ["p"])
    web_path = web_config(tmp_path / "web.yml", basic_auth_users={USER: password_hash()})
    store, _, client, targets = _components(load_config(config_path), None)
    server = MetricsServer("127.0.0.1", 0, store, web=load_web_config(web_path))
    server.start()
    reload = _reloader(
        targets,
        store,
        server,
        lambda: (load_config(config_path), load_web_config(web_path)),
        Budget(limit=1024, api_connections=9, web_connections=512),
    )
    url = f"http://127.0.0.1:{server.port}/healthz"
    try:
        assert httpx.get(url, auth=(USER, PASSWORD), timeout=5).status_code == 200
        assert checked == [PASSWORD.encode()]
        before = server.web
        assert asyncio.run(reload())[0]
        assert server.web is not before  # read again...
        assert httpx.get(url, auth=(USER, PASSWORD), timeout=5).status_code == 200
        assert checked == [PASSWORD.encode()]  # ...and the password still remembered
        # A new hash for the user: the old password is checked again, and refused.
        web_config(web_path, basic_auth_users={USER: password_hash("a new one")})
        assert asyncio.run(reload())[0]
        assert httpx.get(url, auth=(USER, PASSWORD), timeout=5).status_code == 401
        assert httpx.get(url, auth=(USER, "a new one"), timeout=5).status_code == 200
        assert checked == [PASSWORD.encode(), PASSWORD.encode(), b"a new one"]
    finally:
        server.stop()
        client.close()


# ------------------------------------------------ handshakes cannot starve the server


def tls_server(ca: trustme.CA, tmp_path: Path, **limits: Any) -> Any:

    from exporter.store import Store
    from exporter.web import Limits, MetricsServer, load_web_config

    cert, key = server_files(ca, tmp_path)
    web = load_web_config(
        web_config(
            tmp_path / "web.yml", tls_server_config={"cert_file": str(cert), "key_file": str(key)}
        )
    )
    server = MetricsServer("127.0.0.1", 0, Store(), Limits(**limits), web=web)
    server.start()
    return server


def test_clients_that_never_finish_a_handshake_cannot_starve_the_others(
    tmp_path: Path, ca: trustme.CA
) -> None:
    server = tls_server(ca, tmp_path, max_connections=4, request_timeout=1.0)
    silent: list[socket.socket] = []
    try:
        # Twice the cap of clients that connect and never say a word: each new one evicts
        # the oldest handshake, and the accept loop never waits on any of them.
        for _ in range(8):
            silent.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
        url = f"https://127.0.0.1:{server.port}/healthz"
        assert httpx.get(url, timeout=5, verify=trust(ca)).status_code == 200
        assert server.connections <= 4
        # A handshake that never finishes ends at the request deadline.
        wait_for(lambda: server.connections == 0, timeout=10, what="stalled handshakes to end")
        lone = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        silent.append(lone)
        lone.settimeout(5)
        assert lone.recv(1) == b""  # closed by the server after about a second
    finally:
        for sock in silent:
            sock.close()
        server.stop()


def test_the_container_health_check_passes_behind_tls_and_basic_auth(
    tmp_path: Path, serve: Callable[..., Exporter], ca: trustme.CA
) -> None:
    web = tls_web_config(ca, tmp_path, basic_auth_users={USER: password_hash()})
    exp = serve(web, verify=trust(ca), auth=(USER, PASSWORD))

    def health(url: str) -> int:
        env = {"LLAMACLOUD_EXPORTER_HEALTHCHECK_URL": url, "PATH": "/usr/bin:/bin"}
        command = [sys.executable, "-m", "exporter.healthcheck"]
        return subprocess.run(command, env=env, cwd=REPO, timeout=30).returncode

    assert health(exp.url + "/healthz") == 0
    assert health(f"https://127.0.0.1:{free_port()}/healthz") == 1  # nobody there
    assert health(exp.url.replace("https", "http") + "/healthz") == 1  # not an HTTP answer


def test_a_reload_that_turns_tls_on_ends_plain_keep_alive_connections(
    tmp_path: Path, ca: trustme.CA
) -> None:

    from exporter.store import Store
    from exporter.web import MetricsServer, load_web_config

    server = MetricsServer("127.0.0.1", 0, Store())
    server.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=5) as client:
            assert client.get("/healthz").headers.get("connection") != "close"
            server.web = load_web_config(tls_web_config(ca, tmp_path))  # what a reload does
            last = client.get("/healthz")  # answered on the old connection, which then ends
            assert last.status_code == 200 and last.headers["connection"] == "close"
            with pytest.raises(httpx.HTTPError):
                client.get("/healthz")  # plain HTTP to a TLS server: no answer
        https = f"https://127.0.0.1:{server.port}/healthz"
        assert httpx.get(https, timeout=5, verify=trust(ca)).status_code == 200
    finally:
        server.stop()
