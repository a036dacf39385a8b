"""web.tls: ``tls_server_config``: certificates and keys read and checked, versions,
cipher suites, client certificates, and real handshakes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

import pytest
import trustme

import exporter.web.tls as webtls
from exporter.config.files import MAX_KEY_FILE_BYTES
from exporter.web import WebConfig, WebConfigError
from exporter.web.config import CLIENT_AUTH_TYPES, GO_CIPHER_SUITES
from tests.web.helpers import MTLS, TLS, context_of, load, problems


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


def test_unknown_tls_key_with_hint(certs: Path) -> None:
    found = problems(certs, {"tls_server_config": {**TLS, "certfile": "x", "Min_Version": "x"}})
    assert "tls_server_config.certfile: unknown key (did you mean cert_file?)" in found
    assert "tls_server_config.Min_Version: unknown key (did you mean min_version?)" in found


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
