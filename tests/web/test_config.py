"""web.config: the web config file (exporter-toolkit's ``--web.config.file``): its
sections, keys, paths and every problem at once."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import pytest

from exporter.web import WebConfigError, load_web_config
from exporter.web.config import parse_web_config
from tests.helpers import admits, basic
from tests.web.helpers import (
    ALICE_HASH,
    ALICE_PASSWORD,
    MTLS,
    TLS,
    USERS,
    context_of,
    load,
    problems,
    write,
)

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
