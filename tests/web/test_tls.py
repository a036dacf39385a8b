"""The web config file (exporter-toolkit's ``--web.config.file``): checks, TLS, basic auth."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import ssl
import tempfile
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import trustme
import yaml

import exporter.web.auth as basicauth
import exporter.web.tls as webtls
from exporter.config.files import MAX_KEY_FILE_BYTES
from exporter.web import WebConfig, WebConfigError, load_web_config
from exporter.web.auth import AUTH_CACHE_SIZE
from exporter.web.config import CLIENT_AUTH_TYPES, GO_CIPHER_SUITES, parse_web_config
from tests.helpers import admits

ALICE_PASSWORD = "alice's secret"
BOB_PASSWORD = "b0b:with:colons"
ALICE_HASH = bcrypt.hashpw(ALICE_PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
BOB_HASH = bcrypt.hashpw(BOB_PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
USERS = {"alice": ALICE_HASH, "bob": BOB_HASH}


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


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def client_context(
    ca: trustme.CA,
    cert: trustme.LeafCert | None = None,
    max_version: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(context)
    if cert is not None:
        cert.configure_cert(context)
    if max_version is not None:
        context.maximum_version = max_version
    return context


class Exchange:
    """What a client saw of a TLS server, and what the server saw of it."""

    def __init__(self) -> None:
        self.ok = False  # the client read the server's greeting
        self.peercert: Any = None
        self.version: str | None = None
        self.cipher: tuple[str, str, int] | None = None


def exchange(server_context: ssl.SSLContext, client: ssl.SSLContext) -> Exchange:
    """Connect once to an ``asyncio.start_server`` using ``server_context`` on 127.0.0.1."""
    result = Exchange()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        result.peercert = writer.get_extra_info("peercert")
        writer.write(b"ok\n")
        with contextlib.suppress(OSError):
            await writer.drain()
        writer.close()

    async def run() -> None:
        # A refused handshake is logged by asyncio on the server side: expected here.
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: None)
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_context)
        port = server.sockets[0].getsockname()[1]
        try:
            try:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", port, ssl=client, server_hostname="localhost"
                )
            except (ssl.SSLError, OSError):
                return
            try:
                ssl_object = writer.get_extra_info("ssl_object")
                result.version = ssl_object.version()
                result.cipher = ssl_object.cipher()
                result.ok = await reader.read(100) == b"ok\n"
            except (ssl.SSLError, OSError):
                pass
            finally:
                writer.close()
                with contextlib.suppress(ssl.SSLError, OSError):
                    await writer.wait_closed()
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(asyncio.wait_for(run(), 20))
    return result


def server_error(server_context: ssl.SSLContext, client: ssl.SSLContext) -> str | None:
    """Why the server gave up the handshake (OpenSSL's reason), or None when it completed;
    with blocking sockets, whose server side reports its errors (asyncio's does not)."""
    outcome: list[str | None] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def serve() -> None:
            conn, _ = listener.accept()
            conn.settimeout(10)
            try:
                with server_context.wrap_socket(conn, server_side=True) as tls:
                    outcome.append(None)
                    tls.sendall(b"ok\n")
            except ssl.SSLError as exc:
                outcome.append(exc.reason)
            except OSError as exc:
                outcome.append(type(exc).__name__)
            finally:
                conn.close()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        with (
            socket.create_connection(listener.getsockname(), timeout=10) as sock,
            contextlib.suppress(ssl.SSLError, OSError),
            client.wrap_socket(sock, server_hostname="localhost") as tls,
        ):
            tls.recv(10)
        thread.join(10)
    assert len(outcome) == 1
    return outcome[0]


def context_of(config: WebConfig) -> ssl.SSLContext:
    context = config.ssl_context()
    assert context is not None
    return context


# --- valid configs ----------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "\n", "# nothing yet\n", "{}\n", "null\n"])
def test_an_empty_file_means_no_tls_and_no_auth(tmp_path: Path, text: str) -> None:
    config = load(tmp_path, text)
    assert not config.tls_enabled
    assert not config.auth_enabled
    assert config.ssl_context() is None
    assert config.headers == {}
    assert config.path == tmp_path / "web.yml"
    assert admits(config, None)
    assert admits(config, "Basic garbage")
    assert config.check_client_cert(None)
    assert config.describe() == "no TLS, no basic auth"


def test_empty_sections_are_nothing(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        "tls_server_config:\nhttp_server_config: {}\nbasic_auth_users: {}\n",
    )
    assert not config.tls_enabled
    assert not config.auth_enabled


def test_tls_only(certs: Path) -> None:
    config = load(certs, {"tls_server_config": TLS})
    assert config.tls_enabled
    assert not config.auth_enabled
    context = context_of(config)
    assert context is config.ssl_context()  # built once, at load time
    assert context.verify_mode == ssl.CERT_NONE
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.maximum_version == ssl.TLSVersion.TLSv1_3
    assert context.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    assert config.describe() == "TLS, no basic auth"


def test_auth_only(tmp_path: Path) -> None:
    config = load(tmp_path, {"basic_auth_users": USERS})
    assert config.auth_enabled
    assert not config.tls_enabled
    assert config.describe() == "no TLS, basic auth for 2 users"
    assert admits(config, basic("alice", ALICE_PASSWORD))


def test_tls_client_certs_auth_and_headers(certs: Path) -> None:
    raw = {
        "tls_server_config": MTLS,
        "basic_auth_users": USERS,
        "http_server_config": {
            "http2": False,
            "headers": {
                "X-Frame-Options": "deny",
                "X-Content-Type-Options": "nosniff",
                "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
                "Content-Security-Policy": "default-src 'self'",
                "X-XSS-Protection": "",  # blank: unset
            },
        },
    }
    config = load(certs, raw)
    assert config.describe() == (
        "TLS (client certs: RequireAndVerifyClientCert), basic auth for 2 users"
    )
    assert context_of(config).verify_mode == ssl.CERT_REQUIRED
    assert dict(config.headers) == {
        "X-Frame-Options": "deny",
        "X-Content-Type-Options": "nosniff",
        "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
        "Content-Security-Policy": "default-src 'self'",
    }


def test_one_user_is_singular(tmp_path: Path) -> None:
    config = load(tmp_path, {"basic_auth_users": {"alice": ALICE_HASH}})
    assert config.describe() == "no TLS, basic auth for 1 user"


def test_the_config_is_read_only(certs: Path) -> None:
    config = load(certs, {"tls_server_config": TLS, "basic_auth_users": USERS})
    with pytest.raises(TypeError):
        config.headers["X-Frame-Options"] = "deny"  # type: ignore[index]
    with pytest.raises(AttributeError):
        config.tls_enabled = False  # type: ignore[misc]
    with pytest.raises(AttributeError):
        config.anything = 1  # type: ignore[attr-defined]


def test_no_hash_in_repr_or_description(tmp_path: Path) -> None:
    config = load(tmp_path, {"basic_auth_users": USERS})
    for text in (repr(config), config.describe()):
        assert ALICE_HASH not in text
        assert "$2" not in text


def test_parse_web_config_takes_data(certs: Path) -> None:
    config = parse_web_config({"tls_server_config": TLS}, base_dir=certs)
    assert config.tls_enabled
    assert config.path is None
    assert not parse_web_config(None).tls_enabled


# --- file-level problems ----------------------------------------------------------------


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(WebConfigError) as info:
        load_web_config(tmp_path / "nope.yml")
    (problem,) = info.value.problems
    assert problem.startswith("web config: cannot read ")
    assert "No such file or directory" in problem


def test_a_fifo_is_refused_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "web.yml"
    os.mkfifo(fifo)
    with pytest.raises(WebConfigError, match=r"web config: .*not a regular file"):
        load_web_config(fifo)


def test_bad_yaml(tmp_path: Path) -> None:
    (problem,) = problems(tmp_path, "tls_server_config:\n  cert_file: [a\n")
    assert problem.startswith("web config: invalid YAML at line ")


def test_not_utf8(tmp_path: Path) -> None:
    (problem,) = problems(tmp_path, b"basic_auth_users:\n  \xff: x\n")
    assert problem == "web config: not UTF-8 text (an invalid byte at offset 20)"


@pytest.mark.parametrize("text", ["- a\n- b\n", "just words\n", "42\n"])
def test_not_a_mapping(tmp_path: Path, text: str) -> None:
    assert problems(tmp_path, text) == ["web config: must be a mapping of keys to values"]


def test_unknown_keys_with_hints(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        {
            "tls_server_confg": {},
            "basic_auth_user": {},
            "something": 1,
            "http_server_config": {"header": {}},
        },
    )
    assert sorted(found) == [
        "basic_auth_user: unknown key (did you mean basic_auth_users?)",
        "http_server_config.header: unknown key (did you mean headers?)",
        "something: unknown key",
        "tls_server_confg: unknown key (did you mean tls_server_config?)",
    ]


def test_unknown_tls_key_with_hint(certs: Path) -> None:
    found = problems(certs, {"tls_server_config": {**TLS, "certfile": "x", "Min_Version": "x"}})
    assert "tls_server_config.certfile: unknown key (did you mean cert_file?)" in found
    assert "tls_server_config.Min_Version: unknown key (did you mean min_version?)" in found


def test_rate_limit_is_not_supported(tmp_path: Path) -> None:
    found = problems(tmp_path, {"rate_limit": {"interval": "1s", "burst": 5}})
    assert found == ["rate_limit: not supported by this exporter"]


@pytest.mark.parametrize("section", ["tls_server_config", "http_server_config"])
def test_a_section_must_be_a_mapping(tmp_path: Path, section: str) -> None:
    assert problems(tmp_path, {section: ["x"]}) == [f"{section}: must be a mapping"]


def test_every_problem_at_once(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        {
            "tls_server_config": {"cert_file": "missing.crt", "min_version": "TLS9"},
            "basic_auth_users": {"alice": "plain"},
            "http_server_config": {"http2": True},
            "extra": 1,
        },
    )
    prefixes = sorted(p.split(":")[0] for p in found)
    assert prefixes == [
        "basic_auth_users.alice",
        "extra",
        "http_server_config.http2",
        "tls_server_config.cert_file",
        "tls_server_config.key_file",
        "tls_server_config.min_version",
    ]


def test_a_surrogate_in_a_key_is_printable(tmp_path: Path) -> None:
    (problem,) = problems(tmp_path, '"\\ud800": 1\n')
    assert problem == "\\ud800: unknown key"
    problem.encode("utf-8")


# --- TLS problems -----------------------------------------------------------------------


def test_missing_key_file(certs: Path) -> None:
    assert problems(certs, {"tls_server_config": {"cert_file": "server.crt"}}) == [
        "tls_server_config.key_file: required to serve TLS (or the key inline as key)"
    ]


def test_missing_cert_file(certs: Path) -> None:
    assert problems(certs, {"tls_server_config": {"key_file": "server.key"}}) == [
        "tls_server_config.cert_file: required to serve TLS (or the certificate inline as cert)"
    ]


def test_tls_settings_without_a_certificate_are_a_problem(tmp_path: Path) -> None:
    # exporter-toolkit would silently serve plain HTTP here.
    found = problems(tmp_path, {"tls_server_config": {"min_version": "TLS13"}})
    assert [p.split(":")[0] for p in found] == [
        "tls_server_config.cert_file",
        "tls_server_config.key_file",
    ]


def test_unreadable_cert_path(certs: Path) -> None:
    (problem,) = problems(certs, {"tls_server_config": {**TLS, "cert_file": "missing.crt"}})
    assert problem == (
        f"tls_server_config.cert_file: cannot read {certs / 'missing.crt'}: "
        "No such file or directory"
    )


def test_a_directory_or_fifo_as_a_key(certs: Path) -> None:
    os.mkfifo(certs / "fifo")
    (problem,) = problems(certs, {"tls_server_config": {**TLS, "key_file": "fifo"}})
    assert (
        problem == f"tls_server_config.key_file: cannot read {certs / 'fifo'}: not a regular file"
    )
    (problem,) = problems(certs, {"tls_server_config": {**TLS, "key_file": "."}})
    assert problem.startswith("tls_server_config.key_file: cannot read ")


def test_a_huge_key_file(certs: Path) -> None:
    (certs / "huge.key").write_bytes(b"x" * (MAX_KEY_FILE_BYTES + 1))
    (problem,) = problems(certs, {"tls_server_config": {**TLS, "key_file": "huge.key"}})
    assert problem.endswith(f"larger than {MAX_KEY_FILE_BYTES} bytes")


def test_key_not_matching_the_certificate(certs: Path, ca: trustme.CA) -> None:
    ca.issue_cert("localhost").private_key_pem.write_to_path(str(certs / "other.key"))
    assert problems(certs, {"tls_server_config": {**TLS, "key_file": "other.key"}}) == [
        "tls_server_config.key_file: the key does not match the certificate"
    ]


def test_the_certificate_and_key_swapped(certs: Path) -> None:
    raw = {"tls_server_config": {"cert_file": "server.key", "key_file": "server.crt"}}
    assert problems(certs, raw) == [
        "tls_server_config.cert_file: no PEM certificate found (-----BEGIN CERTIFICATE-----)",
        "tls_server_config.key_file: no PEM private key found (-----BEGIN ... PRIVATE KEY-----)",
    ]


def test_a_corrupt_certificate_and_key(certs: Path) -> None:
    (certs / "bad.crt").write_text("-----BEGIN CERTIFICATE-----\nZm9v\n-----END CERTIFICATE-----\n")
    (certs / "bad.key").write_text("-----BEGIN PRIVATE KEY-----\nZm9v\n-----END PRIVATE KEY-----\n")
    (problem,) = problems(certs, {"tls_server_config": {**TLS, "cert_file": "bad.crt"}})
    assert problem.startswith("tls_server_config.cert_file: not a valid PEM certificate (OpenSSL:")
    assert "_ssl.c" not in problem
    (problem,) = problems(certs, {"tls_server_config": {**TLS, "key_file": "bad.key"}})
    assert problem.startswith("tls_server_config.key_file: not a valid PEM private key (OpenSSL:")
    (problem,) = problems(certs, {"tls_server_config": {**MTLS, "client_ca_file": "bad.crt"}})
    assert problem.startswith("tls_server_config.client_ca_file: not valid PEM CA certificates")


def test_binary_cert_file(certs: Path) -> None:
    (certs / "cert.der").write_bytes(b"\x30\x82\x01\xff\x00")
    (problem,) = problems(certs, {"tls_server_config": {**TLS, "cert_file": "cert.der"}})
    assert problem == f"tls_server_config.cert_file: {certs / 'cert.der'} is not PEM text"


def test_an_encrypted_key(certs: Path) -> None:
    (certs / "enc.key").write_text(
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nZm9v\n-----END ENCRYPTED PRIVATE KEY-----\n"
    )
    (problem,) = problems(certs, {"tls_server_config": {**TLS, "key_file": "enc.key"}})
    assert problem.startswith("tls_server_config.key_file: the key is encrypted")


def test_a_key_pasted_as_a_file_name_is_not_echoed(certs: Path) -> None:
    key = (certs / "server.key").read_text()
    raw = {"tls_server_config": {"cert_file": "server.crt", "key_file": key}}
    with pytest.raises(WebConfigError) as info:
        load(certs, raw)
    assert info.value.problems == [
        "tls_server_config.key_file: looks like PEM text, not a file name (use key for that)"
    ]
    body = key.splitlines()[1]
    assert body not in str(info.value)


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        ("RequireAndVerifyClientCerts", " (did you mean RequireAndVerifyClientCert?)"),
        ("requireandverifyclientcert", " (did you mean RequireAndVerifyClientCert?)"),
        ("Mandatory", ""),
        (True, ""),
    ],
)
def test_bad_client_auth_type(certs: Path, value: Any, hint: str) -> None:
    found = problems(certs, {"tls_server_config": {**TLS, "client_auth_type": value}})
    assert found == [
        "tls_server_config.client_auth_type: must be one of " + ", ".join(CLIENT_AUTH_TYPES) + hint
    ]


@pytest.mark.parametrize(
    "client_auth",
    ["VerifyClientCertIfGiven", "RequireAndVerifyClientCert", "RequireAnyClientCert"],
)
def test_verification_without_a_ca(certs: Path, client_auth: str) -> None:
    assert problems(certs, {"tls_server_config": {**TLS, "client_auth_type": client_auth}}) == [
        f"tls_server_config.client_ca_file: required with client_auth_type {client_auth} "
        "(or the CA certificates inline as client_ca)"
    ]


def test_a_ca_without_client_auth(certs: Path) -> None:
    (problem,) = problems(certs, {"tls_server_config": {**TLS, "client_ca_file": "ca.crt"}})
    assert problem.startswith("tls_server_config.client_auth_type: a client CA is set but")


@pytest.mark.parametrize(
    ("client_auth", "ca_file", "mode"),
    [
        ("NoClientCert", None, ssl.CERT_NONE),
        ("RequestClientCert", None, ssl.CERT_NONE),
        ("RequestClientCert", "ca.crt", ssl.CERT_OPTIONAL),
        ("RequireAnyClientCert", "ca.crt", ssl.CERT_REQUIRED),
        ("RequireClientCert", "ca.crt", ssl.CERT_REQUIRED),  # exporter-toolkit's old name
        ("VerifyClientCertIfGiven", "ca.crt", ssl.CERT_OPTIONAL),
        ("RequireAndVerifyClientCert", "ca.crt", ssl.CERT_REQUIRED),
    ],
)
def test_client_auth_type_mapping(
    certs: Path, client_auth: str, ca_file: str | None, mode: ssl.VerifyMode
) -> None:
    tls: dict[str, Any] = {**TLS, "client_auth_type": client_auth}
    if ca_file:
        tls["client_ca_file"] = ca_file
    config = load(certs, {"tls_server_config": tls})
    assert context_of(config).verify_mode == mode
    name = "RequireAnyClientCert" if client_auth == "RequireClientCert" else client_auth
    shown = "TLS" if name == "NoClientCert" else f"TLS (client certs: {name})"
    assert config.describe() == f"{shown}, no basic auth"  # what --check-config prints


@pytest.mark.parametrize(
    ("tls", "expected"),
    [
        (
            {"min_version": "TLS1.3"},
            "tls_server_config.min_version: must be one of TLS10, TLS11, TLS12, TLS13"
            " (did you mean TLS13?)",
        ),
        (
            {"min_version": "SSL3"},
            "tls_server_config.min_version: must be one of TLS10, TLS11, TLS12, TLS13",
        ),
        (
            {"max_version": 13},
            "tls_server_config.max_version: must be one of TLS10, TLS11, TLS12, TLS13",
        ),
        (
            {"min_version": "TLS13", "max_version": "TLS12"},
            "tls_server_config.max_version: lower than min_version",
        ),
    ],
)
def test_bad_versions(certs: Path, tls: dict[str, Any], expected: str) -> None:
    assert problems(certs, {"tls_server_config": {**TLS, **tls}}) == [expected]


def test_max_version_below_tls12(certs: Path) -> None:
    raw = {"tls_server_config": {**TLS, "min_version": "TLS10", "max_version": "TLS11"}}
    (problem,) = problems(certs, raw)
    assert problem.startswith("tls_server_config.max_version: TLS 1.0 and 1.1 are not supported")


def test_old_min_version_is_accepted_quietly(certs: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # ssl's DeprecationWarning for TLSv1 stays inside
        config = load(certs, {"tls_server_config": {**TLS, "min_version": "TLS10"}})
    assert context_of(config).minimum_version == ssl.TLSVersion.TLSv1


def test_cipher_suites_are_mapped(certs: Path) -> None:
    suites = [
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        "TLS_AES_128_GCM_SHA256",  # TLS 1.3: accepted, not configurable
    ]
    config = load(certs, {"tls_server_config": {**TLS, "cipher_suites": suites}})
    tls12 = [c["name"] for c in context_of(config).get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 == ["ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES128-GCM-SHA256"]


def test_every_go_cipher_suite_name_is_accepted(certs: Path) -> None:
    config = load(certs, {"tls_server_config": {**TLS, "cipher_suites": list(GO_CIPHER_SUITES)}})
    assert config.tls_enabled


def test_bad_cipher_suites(certs: Path) -> None:
    raw = {
        "tls_server_config": {
            **TLS,
            "cipher_suites": ["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA2048", "RC4"],
        }
    }
    found = problems(certs, raw)
    assert found[0].startswith(
        "tls_server_config.cipher_suites[0]: unknown name "
        "(did you mean TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256?)"
    )
    assert found[1].startswith("tls_server_config.cipher_suites[1]: unknown name; known: ")
    assert problems(certs, {"tls_server_config": {**TLS, "cipher_suites": "AES"}}) == [
        "tls_server_config.cipher_suites: must be a list of non-empty strings"
    ]


def test_only_tls13_cipher_suites(certs: Path) -> None:
    raw = {"tls_server_config": {**TLS, "cipher_suites": ["TLS_AES_256_GCM_SHA384"]}}
    (problem,) = problems(certs, raw)
    assert problem.startswith("tls_server_config.cipher_suites: only TLS 1.3 suites")
    raw["tls_server_config"]["min_version"] = "TLS13"
    assert load(certs, raw).tls_enabled


def test_prefer_server_cipher_suites(certs: Path) -> None:
    config = load(certs, {"tls_server_config": {**TLS, "prefer_server_cipher_suites": False}})
    assert not context_of(config).options & ssl.OP_CIPHER_SERVER_PREFERENCE
    assert problems(
        certs, {"tls_server_config": {**TLS, "prefer_server_cipher_suites": "yes"}}
    ) == ["tls_server_config.prefer_server_cipher_suites: must be true or false"]


def test_curve_preferences(certs: Path) -> None:
    curves = ["X25519", "CurveP256", "CurveP384", "CurveP521"]
    assert load(certs, {"tls_server_config": {**TLS, "curve_preferences": curves}}).tls_enabled
    (problem,) = problems(certs, {"tls_server_config": {**TLS, "curve_preferences": ["P256"]}})
    assert problem.startswith("tls_server_config.curve_preferences[0]: unknown name; known: ")


def test_client_allowed_sans_need_a_required_certificate(certs: Path) -> None:
    raw = {
        "tls_server_config": {
            **MTLS,
            "client_auth_type": "VerifyClientCertIfGiven",
            "client_allowed_sans": ["prometheus.example.net"],
        }
    }
    (problem,) = problems(certs, raw)
    assert problem.startswith("tls_server_config.client_allowed_sans: needs client_auth_type")
    raw["tls_server_config"]["client_allowed_sans"] = "prometheus.example.net"
    assert "tls_server_config.client_allowed_sans: must be a list of non-empty strings" in (
        problems(certs, raw)
    )


# --- relative paths and inline PEM ------------------------------------------------------


def test_relative_paths_are_taken_from_the_config_directory(
    certs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sub = tmp_path / "etc" / "exporter"
    sub.mkdir(parents=True)
    for name in ("server.crt", "server.key", "ca.crt"):
        (certs / name).rename(sub / name)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    write(sub, {"tls_server_config": MTLS})
    assert load_web_config(sub / "web.yml").tls_enabled  # absolute config path
    assert load_web_config("../etc/exporter/web.yml").tls_enabled  # relative config path
    # Absolute paths are kept as they are.
    absolute = {**MTLS, **{key: str(sub / MTLS[key]) for key in ("cert_file", "key_file")}}
    absolute["client_ca_file"] = str(sub / "ca.crt")
    assert load(elsewhere, {"tls_server_config": absolute}).tls_enabled
    # And a relative one is not looked up in the working directory.
    (elsewhere / "server.crt").write_text("not this one")
    assert load_web_config("../etc/exporter/web.yml").tls_enabled


def test_inline_cert_key_and_client_ca(
    tmp_path: Path,
    ca: trustme.CA,
    server_cert: trustme.LeafCert,
    client_cert: trustme.LeafCert,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    raw = {
        "tls_server_config": {
            "cert": server_cert.cert_chain_pems[0].bytes().decode(),
            "key": server_cert.private_key_pem.bytes().decode(),
            "client_ca": ca.cert_pem.bytes().decode(),
            "client_auth_type": "RequireAndVerifyClientCert",
        }
    }
    if hasattr(os, "memfd_create"):  # Linux: the key never touches a file system

        def no_files(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError("a temporary file was made")

        monkeypatch.setattr(tempfile, "mkstemp", no_files)
    config = load(tmp_path, raw)
    assert list(scratch.iterdir()) == []
    assert exchange(context_of(config), client_context(ca, client_cert)).ok
    assert not exchange(context_of(config), client_context(ca)).ok


def test_inline_key_without_memfd_uses_a_file_that_is_removed(
    tmp_path: Path,
    ca: trustme.CA,
    server_cert: trustme.LeafCert,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setattr(webtls, "_memfd", lambda data: None)
    raw = {
        "tls_server_config": {
            "cert": server_cert.cert_chain_pems[0].bytes().decode(),
            "key": server_cert.private_key_pem.bytes().decode(),
        }
    }
    config = load(tmp_path, raw)
    assert list(scratch.iterdir()) == []
    assert exchange(context_of(config), client_context(ca)).ok


def test_inline_and_file_together(certs: Path, server_cert: trustme.LeafCert) -> None:
    key = server_cert.private_key_pem.bytes().decode()
    raw = {"tls_server_config": {**TLS, "key": key}}
    assert problems(certs, raw) == ["tls_server_config.key_file: set key or key_file, not both"]


def test_inline_garbage(tmp_path: Path, server_cert: trustme.LeafCert) -> None:
    raw = {"tls_server_config": {"cert": "hello", "key": ["not", "text"]}}
    assert problems(tmp_path, raw) == [
        "tls_server_config.cert: no PEM certificate found (-----BEGIN CERTIFICATE-----)",
        "tls_server_config.key: must be PEM text",
    ]


# --- real handshakes --------------------------------------------------------------------


def test_handshake_with_the_ca_trusted(certs: Path, ca: trustme.CA, other_ca: trustme.CA) -> None:
    config = load(certs, {"tls_server_config": TLS})
    result = exchange(context_of(config), client_context(ca))
    assert result.ok
    assert result.version == "TLSv1.3"
    assert result.peercert is None  # no client certificate asked for
    assert not exchange(context_of(config), client_context(other_ca)).ok


def test_require_and_verify_client_cert(
    certs: Path, ca: trustme.CA, other_ca: trustme.CA, client_cert: trustme.LeafCert
) -> None:
    context = context_of(load(certs, {"tls_server_config": MTLS}))
    assert not exchange(context, client_context(ca)).ok  # no certificate
    assert exchange(context, client_context(ca, client_cert)).ok
    stranger = other_ca.issue_cert("prometheus.example.net")
    assert not exchange(context, client_context(ca, stranger)).ok
    # Refused for the right reasons:
    assert server_error(context, client_context(ca)) == "PEER_DID_NOT_RETURN_A_CERTIFICATE"
    assert server_error(context, client_context(ca, stranger)) == "CERTIFICATE_VERIFY_FAILED"
    assert server_error(context, client_context(ca, client_cert)) is None
    # The same over TLS 1.2, where the refusal happens within the handshake.
    tls12 = ssl.TLSVersion.TLSv1_2
    assert not exchange(context, client_context(ca, max_version=tls12)).ok
    assert exchange(context, client_context(ca, client_cert, max_version=tls12)).ok
    assert not exchange(context, client_context(ca, stranger, max_version=tls12)).ok


def test_verify_client_cert_if_given(
    certs: Path, ca: trustme.CA, other_ca: trustme.CA, client_cert: trustme.LeafCert
) -> None:
    raw = {"tls_server_config": {**MTLS, "client_auth_type": "VerifyClientCertIfGiven"}}
    context = context_of(load(certs, raw))
    assert exchange(context, client_context(ca)).ok
    assert exchange(context, client_context(ca, client_cert)).ok
    assert not exchange(context, client_context(ca, other_ca.issue_cert("x.example"))).ok


def test_min_version_tls13_refuses_a_tls12_client(certs: Path, ca: trustme.CA) -> None:
    config = load(certs, {"tls_server_config": {**TLS, "min_version": "TLS13"}})
    tls12_only = client_context(ca, max_version=ssl.TLSVersion.TLSv1_2)
    assert not exchange(context_of(config), tls12_only).ok
    assert server_error(context_of(config), tls12_only) == "UNSUPPORTED_PROTOCOL"
    assert exchange(context_of(config), client_context(ca)).ok


def test_max_version_and_cipher_suite(certs: Path, ca: trustme.CA) -> None:
    raw = {
        "tls_server_config": {
            **TLS,
            "max_version": "TLS12",
            "cipher_suites": ["TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"],
        }
    }
    result = exchange(context_of(load(certs, raw)), client_context(ca))
    assert result.ok
    assert result.version == "TLSv1.2"
    assert result.cipher is not None
    assert result.cipher[0] == "ECDHE-ECDSA-CHACHA20-POLY1305"


def test_client_allowed_sans_over_a_real_connection(
    certs: Path, ca: trustme.CA, client_cert: trustme.LeafCert
) -> None:
    raw = {"tls_server_config": {**MTLS, "client_allowed_sans": ["prometheus.example.net"]}}
    config = load(certs, raw)
    result = exchange(context_of(config), client_context(ca, client_cert))
    assert result.ok
    assert config.check_client_cert(result.peercert)
    other = ca.issue_cert("grafana.example.net")
    result = exchange(context_of(config), client_context(ca, other))
    assert result.ok  # the handshake passes: the server closes such a connection itself
    assert not config.check_client_cert(result.peercert)


@pytest.mark.parametrize(
    ("allowed", "expected"),
    [
        (["prometheus.example.net"], True),
        (["prometheus@example.net"], True),
        (["2001:db8::1"], True),  # OpenSSL shows 2001:DB8:0:0:0:0:0:1
        (["2001:DB8:0:0:0:0:0:1"], True),
        (["10.0.0.1", "spiffe://example.net/prometheus"], False),
        (["example.net"], False),
    ],
)
def test_check_client_cert(allowed: list[str], expected: bool) -> None:
    config = WebConfig(client_allowed_sans=tuple(allowed))
    peercert = {
        "subject": ((("commonName", "x"),),),
        "subjectAltName": (
            ("DNS", "prometheus.example.net"),
            ("email", "prometheus@example.net"),
            ("IP Address", "2001:DB8:0:0:0:0:0:1\n"),
            ("DirName", (("commonName", "x"),)),
        ),
    }
    assert config.check_client_cert(peercert) is expected
    assert not config.check_client_cert({})
    assert not config.check_client_cert(None)


def test_check_client_cert_uri() -> None:
    config = WebConfig(client_allowed_sans=("spiffe://example.net/prometheus",))
    assert config.check_client_cert(
        {"subjectAltName": (("URI", "spiffe://example.net/prometheus"),)}
    )
    assert not config.check_client_cert({"subjectAltName": (("DNS", "example.net"),)})


# --- basic auth users -------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "hunter2",
        "$1$saltsalt$abcdefghijklmnopqrstuv",  # md5-crypt
        "$2b$10$tooShort",
        "$2x$10$" + "a" * 53,  # not a prefix bcrypt tools make
        "$2b$99$" + "a" * 53,  # no such cost
        ALICE_HASH + "hunter2",
        12345,
        ["hunter2"],
        None,
    ],
)
def test_a_value_that_is_not_a_bcrypt_hash_is_never_echoed(tmp_path: Path, value: Any) -> None:
    with pytest.raises(WebConfigError) as info:
        load(tmp_path, {"basic_auth_users": {"alice": value}})
    (problem,) = info.value.problems
    assert problem.startswith("basic_auth_users.alice: not a bcrypt hash")
    for text in (str(info.value), repr(info.value)):
        assert "hunter2" not in text
        assert "tooShort" not in text
        assert "12345" not in text
        assert ALICE_HASH not in text


@pytest.mark.parametrize("prefix", ["$2a$", "$2b$", "$2y$"])
def test_every_bcrypt_prefix(tmp_path: Path, prefix: str) -> None:
    config = load(tmp_path, {"basic_auth_users": {"alice": prefix + ALICE_HASH[4:]}})
    assert admits(config, basic("alice", ALICE_PASSWORD))


def test_bad_user_names(tmp_path: Path) -> None:
    text = f"basic_auth_users:\n  42: '{ALICE_HASH}'\n  'a:b': '{ALICE_HASH}'\n  \"a\\tb\": x\n"
    assert problems(tmp_path, text) == [
        "basic_auth_users.42: a user name must be a string (quote it)",
        "basic_auth_users.a:b: a user name cannot hold a colon (HTTP basic auth)",
        "basic_auth_users.a\tb: a user name cannot hold control characters",
    ]
    assert problems(tmp_path, {"basic_auth_users": ["alice"]}) == [
        "basic_auth_users: must be a mapping of user names to bcrypt hashes"
    ]


# --- basic auth -------------------------------------------------------------------------


@pytest.fixture
def users(tmp_path: Path) -> WebConfig:
    return load(tmp_path, {"basic_auth_users": USERS})


@pytest.fixture
def checkpw_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bytes, bytes]]:
    """Every bcrypt.checkpw call, as (password, hash)."""
    calls: list[tuple[bytes, bytes]] = []
    real: Callable[[bytes, bytes], bool] = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append((password, hashed))
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    return calls


def test_right_and_wrong_passwords(users: WebConfig) -> None:
    assert admits(users, basic("alice", ALICE_PASSWORD))
    assert admits(users, basic("bob", BOB_PASSWORD))  # colons in the password
    assert not admits(users, basic("alice", "wrong"))
    assert not admits(users, basic("alice", BOB_PASSWORD))
    assert not admits(users, basic("alice", ""))
    assert not admits(users, basic("Alice", ALICE_PASSWORD))


def test_unknown_users_cost_a_bcrypt_check_and_never_pass(
    users: WebConfig, checkpw_calls: list[tuple[bytes, bytes]]
) -> None:
    assert not admits(users, basic("mallory", ALICE_PASSWORD))
    assert not admits(users, basic("", ALICE_PASSWORD))
    assert len(checkpw_calls) == 2
    # Against a hash of the configured cost that is none of the configured hashes.
    assert all(hashed.startswith(b"$2b$04$") for _, hashed in checkpw_calls)
    assert not {hashed for _, hashed in checkpw_calls} & {ALICE_HASH.encode(), BOB_HASH.encode()}


def test_a_wrong_password_costs_the_same_work_for_every_user_name(
    tmp_path: Path, checkpw_calls: list[tuple[bytes, bytes]]
) -> None:
    """bcrypt's work is 2^cost rounds; before, a wrong password for a user of cost 4 took 2^4,
    one for an unknown user those of a hash of the most common cost, so a 401's time told
    which users exist."""

    def work(password: bytes) -> int:
        return sum(2 ** int(hashed[4:6]) for p, hashed in checkpw_calls if p == password)

    costs = {"alice": 4, "bob": 5, "carol": 7}
    users = {
        u: bcrypt.hashpw(u.encode(), bcrypt.gensalt(rounds=c)).decode() for u, c in costs.items()
    }
    config = load(tmp_path, {"basic_auth_users": users})
    for user in ("alice", "bob", "carol", "mallory", "", "alice "):
        guess = f"{user} guessed wrong".encode()
        assert not admits(config, basic(user, guess.decode()))
        assert work(guess) == 2**7, user  # the highest configured cost, for everyone
    # A right password costs its own hash only: logins do not pay for the equal time.
    assert admits(config, basic("alice", "alice"))
    assert work(b"alice") == 2**4


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Basic",
        "Basic ",
        "Bearer " + base64.b64encode(b"alice:x").decode(),
        "Basicx " + base64.b64encode(f"alice:{ALICE_PASSWORD}".encode()).decode(),
        "Basic !!!not-base64!!!",
        "Basic " + base64.b64encode(f"alice:{ALICE_PASSWORD}".encode()).decode()[:-2],
        "Basic " + base64.b64encode(b"alice-without-colon").decode(),
        "Basic " + base64.b64encode(b"alice:\xff\xfe").decode(),
        "Basic " + base64.b64encode(b"\xffalice:x").decode(),
        "Basic \u00e9\u00e9\u00e9\u00e9",
        "Basic " + "A" * 10_000,
    ],
)
def test_malformed_headers(
    users: WebConfig, checkpw_calls: list[tuple[bytes, bytes]], header: str | None
) -> None:
    assert not admits(users, header)
    assert checkpw_calls == []


@pytest.mark.parametrize("scheme", ["Basic", "basic", "BASIC", "bAsIc"])
def test_the_scheme_is_case_insensitive(users: WebConfig, scheme: str) -> None:
    encoded = base64.b64encode(f"alice:{ALICE_PASSWORD}".encode()).decode()
    assert admits(users, f"{scheme} {encoded}")
    assert admits(users, f"  {scheme}   {encoded}  ")


def test_utf8_names_and_passwords(tmp_path: Path) -> None:
    hashed = bcrypt.hashpw("pässwörd".encode(), bcrypt.gensalt(rounds=4)).decode()
    config = load(tmp_path, {"basic_auth_users": {"zoë": hashed}})
    assert admits(config, basic("zoë", "pässwörd"))
    assert not admits(config, basic("zoe", "pässwörd"))


def test_long_passwords_are_cut_at_72_bytes_like_bcrypt(tmp_path: Path) -> None:
    hashed = bcrypt.hashpw(b"x" * 72, bcrypt.gensalt(rounds=4)).decode()
    config = load(tmp_path, {"basic_auth_users": {"alice": hashed}})
    assert admits(config, basic("alice", "x" * 72))
    assert admits(config, basic("alice", "x" * 100))
    assert not admits(config, basic("alice", "x" * 71))


def test_a_success_is_cached(users: WebConfig, checkpw_calls: list[tuple[bytes, bytes]]) -> None:
    header = basic("alice", ALICE_PASSWORD)
    assert admits(users, header)
    assert len(checkpw_calls) == 1
    for _ in range(5):
        assert admits(users, header)
    assert len(checkpw_calls) == 1
    # A different password for the same user is not a cache hit.
    assert not admits(users, basic("alice", ALICE_PASSWORD + "!"))
    assert len(checkpw_calls) == 2


def test_a_failure_is_remembered_too(
    users: WebConfig, checkpw_calls: list[tuple[bytes, bytes]]
) -> None:
    for _ in range(3):
        assert not admits(users, basic("alice", "wrong"))
        assert not admits(users, basic("mallory", "wrong"))
    assert len(checkpw_calls) == 2  # a guess sent again costs no bcrypt check
    assert admits(users, basic("alice", ALICE_PASSWORD))


def test_the_cache_belongs_to_one_config(
    tmp_path: Path, checkpw_calls: list[tuple[bytes, bytes]]
) -> None:
    header = basic("alice", ALICE_PASSWORD)
    assert admits(load(tmp_path, {"basic_auth_users": USERS}), header)
    assert admits(load(tmp_path, {"basic_auth_users": USERS}), header)
    assert len(checkpw_calls) == 2
    # After a reload with a new hash, the old password no longer opens the door.
    new = bcrypt.hashpw(b"new", bcrypt.gensalt(rounds=4)).decode()
    assert not admits(load(tmp_path, {"basic_auth_users": {"alice": new}}), header)


def test_the_cache_is_bounded_and_lru(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, checkpw_calls: list[tuple[bytes, bytes]]
) -> None:
    assert AUTH_CACHE_SIZE == 100
    monkeypatch.setattr(basicauth, "AUTH_CACHE_SIZE", 2)
    names = ("u1", "u2", "u3")
    hashes = {n: bcrypt.hashpw(n.encode(), bcrypt.gensalt(rounds=4)).decode() for n in names}
    config = load(tmp_path, {"basic_auth_users": hashes})

    def check(name: str) -> int:
        before = len(checkpw_calls)
        assert admits(config, basic(name, name))
        return len(checkpw_calls) - before

    assert [check("u1"), check("u2"), check("u1")] == [1, 1, 0]  # u1 is now the newest
    assert check("u3") == 1  # evicts u2, the least recently used
    assert [check("u1"), check("u3"), check("u2")] == [0, 0, 1]


def test_cache_keys_are_digests_not_passwords(users: WebConfig) -> None:
    assert admits(users, basic("alice", ALICE_PASSWORD))
    (key,) = users.basic_auth._checks.good._entries
    assert len(key) == 32
    assert ALICE_PASSWORD.encode() not in key


def test_checks_from_many_threads(
    users: WebConfig, checkpw_calls: list[tuple[bytes, bytes]]
) -> None:
    results: list[bool] = []
    lock = threading.Lock()
    headers = [basic("alice", ALICE_PASSWORD), basic("bob", BOB_PASSWORD), basic("bob", "no")]

    def work(header: str, expected: bool) -> None:
        for _ in range(10):
            ok = admits(users, header) is expected
            with lock:
                results.append(ok)

    threads = [
        threading.Thread(target=work, args=(h, i < 2))
        for _ in range(4)
        for i, h in enumerate(headers)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 120 and all(results)
    # Each password checked once: the others joined that check or found its answer remembered.
    assert sorted(password for password, _ in checkpw_calls) == sorted(
        [ALICE_PASSWORD.encode(), BOB_PASSWORD.encode(), b"no"]
    )


# --- http_server_config -----------------------------------------------------------------


def test_http2_true_is_not_supported(tmp_path: Path) -> None:
    (problem,) = problems(tmp_path, {"http_server_config": {"http2": True}})
    assert problem.startswith("http_server_config.http2: HTTP/2 is not supported")
    assert not load(tmp_path, {"http_server_config": {"http2": False}}).tls_enabled
    assert problems(tmp_path, {"http_server_config": {"http2": "no"}}) == [
        "http_server_config.http2: must be true or false"
    ]


def test_bad_headers(tmp_path: Path) -> None:
    raw = (
        "http_server_config:\n"
        "  headers:\n"
        "    x-frame-options: deny\n"
        "    Content-Type: text/html\n"
        "    X-Frame-Options: allow\n"
        "    X-Content-Type-Options: 1\n"
        '    Strict-Transport-Security: "max-age=1\\r\\nSet-Cookie: a=b"\n'
    )
    found = problems(tmp_path, raw)
    assert found[0].startswith(
        "http_server_config.headers.x-frame-options: this header cannot be set "
        "(did you mean X-Frame-Options?); allowed: "
    )
    assert found[1].startswith("http_server_config.headers.Content-Type: this header cannot be set")
    assert found[2:] == [
        "http_server_config.headers.X-Frame-Options: must be one of deny, sameorigin",
        "http_server_config.headers.X-Content-Type-Options: must be a string",
        "http_server_config.headers.Strict-Transport-Security: must be printable ASCII on one line",
    ]
    assert problems(tmp_path, {"http_server_config": {"headers": ["a"]}}) == [
        "http_server_config.headers: must be a mapping of header names to values"
    ]


def test_enumerated_header_values_ignore_case(tmp_path: Path) -> None:
    config = load(tmp_path, {"http_server_config": {"headers": {"X-Frame-Options": "SAMEORIGIN"}}})
    assert dict(config.headers) == {"X-Frame-Options": "SAMEORIGIN"}
