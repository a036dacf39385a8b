"""The ``--web.config.file`` of Prometheus exporters: TLS, client certificates, basic auth.

The format is exporter-toolkit's (node_exporter and friends), see
https://github.com/prometheus/exporter-toolkit/blob/master/docs/web-configuration.md::

    tls_server_config:
      cert_file: server.crt        # relative paths are taken from this file's directory
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert
      client_ca_file: clients-ca.crt
      client_allowed_sans: [prometheus.example.net]
      min_version: TLS12
    http_server_config:
      headers:
        X-Content-Type-Options: nosniff
    basic_auth_users:
      alice: $2y$10$...            # bcrypt, e.g. ``htpasswd -nBC 10 "" | tr -d ':\\n'``

:func:`load_web_config` reads and checks everything at once, certificate files included, and
raises :class:`WebConfigError` listing every problem with its key path. What it returns holds
what the server needs: :meth:`WebConfig.ssl_context` (built at load time, so that a key that
does not match its certificate shows at start-up rather than at the first handshake),
:attr:`WebConfig.basic_auth` for the ``Authorization`` header (:mod:`exporter.web.auth`),
:meth:`WebConfig.check_client_cert` for ``client_allowed_sans`` and :attr:`WebConfig.headers`
to add to every response. No message ever quotes a password hash, a key or a password.

Where Python's ``ssl`` module differs from Go's ``crypto/tls``:

* ``client_auth_type`` (Go's policy -> ``SSLContext.verify_mode``); Python cannot ask for a
  client certificate without verifying it against a CA, so the two "unverified" policies
  become the closest policy that is never weaker than the one asked for:

  ==========================  =============================================================
  NoClientCert (default)      ``CERT_NONE``; a client CA is then a problem (as in Go)
  RequestClientCert           ``CERT_OPTIONAL`` with a client CA (a certificate the client
                              sends must verify); without one, ``CERT_NONE`` (no
                              certificate is asked for: Go would ask and ignore it)
  RequireAnyClientCert        ``CERT_REQUIRED``, so it needs a client CA (a problem
                              without one); ``RequireClientCert`` is accepted as before
  VerifyClientCertIfGiven     ``CERT_OPTIONAL``, needs a client CA
  RequireAndVerifyClientCert  ``CERT_REQUIRED``, needs a client CA
  ==========================  =============================================================

* ``cipher_suites``: Go's names are mapped to OpenSSL's and set with
  ``SSLContext.set_ciphers`` (they govern TLS 1.2 and older). TLS 1.3 suites are accepted
  and, as in Go, have no effect: TLS 1.3 suites are not configurable.
* ``curve_preferences``: names are checked (``CurveP256``, ``CurveP384``, ``CurveP521``,
  ``X25519``) but not applied: ``ssl`` can only restrict key exchange to a single curve.
  OpenSSL's default groups are these four and a few more.
* ``min_version`` ``TLS10``/``TLS11`` are accepted, though OpenSSL 3 refuses those versions
  at its default security level anyway; a ``max_version`` below ``TLS12`` is a problem.
* ``cert``, ``key`` and ``client_ca`` (inline PEM) are supported. Every certificate and key,
  from a file or inline, is read into memory first (bounded, never from a FIFO or device)
  and handed to OpenSSL through an anonymous in-memory file (``memfd_create``), as
  ``load_cert_chain`` takes only paths; where there is none, a private temporary file that is
  deleted as soon as it has been read. Passphrase-protected keys are not supported (Go's
  ``tls.X509KeyPair`` does not read them either).
* ``http_server_config.http2: true`` is a problem (this server speaks HTTP/1.1), and
  ``headers`` takes the names and values exporter-toolkit allows; ``rate_limit`` is reported
  as not supported.

Stricter than exporter-toolkit: a ``tls_server_config`` that sets anything but lacks a
certificate or a key is a problem (exporter-toolkit silently serves plain HTTP when only,
say, ``min_version`` is set); ``cert_file`` and ``cert`` (``key_file`` and ``key``, ...) may
not both be set; ``client_allowed_sans`` needs a policy that requires a certificate, as
exporter-toolkit's documentation says.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import ssl
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..config import ConfigError
from ..config.files import (
    MAX_CONFIG_DEPTH,
    MAX_KEY_FILE_BYTES,
    FileProblem,
    YamlProblem,
    did_you_mean,
    load_yaml,
    read_bounded,
    read_config_text,
    section,
    unknown_keys,
)
from ..text import is_text
from .auth import BasicAuth

MAX_CERT_FILE_BYTES = 1024 * 1024  # a certificate chain or a CA bundle

CLIENT_AUTH_TYPES = (
    "NoClientCert",
    "RequestClientCert",
    "RequireAnyClientCert",
    "VerifyClientCertIfGiven",
    "RequireAndVerifyClientCert",
)
_CLIENT_AUTH_ALIASES = {"RequireClientCert": "RequireAnyClientCert"}  # as exporter-toolkit
_NEEDS_CA = ("RequireAnyClientCert", "VerifyClientCertIfGiven", "RequireAndVerifyClientCert")
_REQUIRES_CERT = ("RequireAnyClientCert", "RequireAndVerifyClientCert")

TLS_VERSIONS: Mapping[str, ssl.TLSVersion] = MappingProxyType(
    {
        "TLS10": ssl.TLSVersion.TLSv1,
        "TLS11": ssl.TLSVersion.TLSv1_1,
        "TLS12": ssl.TLSVersion.TLSv1_2,
        "TLS13": ssl.TLSVersion.TLSv1_3,
    }
)

# Go's tls.CipherSuites() names -> OpenSSL's; None: a TLS 1.3 suite, which is not configurable.
GO_CIPHER_SUITES: Mapping[str, str | None] = MappingProxyType(
    {
        "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
        "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
        "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
        "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
        "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
        "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
        "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
        "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
        "TLS_AES_128_GCM_SHA256": None,
        "TLS_AES_256_GCM_SHA384": None,
        "TLS_CHACHA20_POLY1305_SHA256": None,
    }
)
CURVES = ("CurveP256", "CurveP384", "CurveP521", "X25519")

# The response headers exporter-toolkit lets a web config set, with their allowed values
# (empty: any value). A blank value leaves the header unset.
HEADERS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "Strict-Transport-Security": (),
        "X-Content-Type-Options": ("nosniff",),
        "X-Frame-Options": ("deny", "sameorigin"),
        "X-XSS-Protection": (),
        "Content-Security-Policy": (),
    }
)

_TOP_KEYS = {"tls_server_config", "http_server_config", "basic_auth_users"}
_NOT_SUPPORTED_TOP = {"rate_limit"}  # exporter-toolkit has it; this server does not
_TLS_KEYS = {
    "cert",
    "key",
    "client_ca",
    "cert_file",
    "key_file",
    "client_ca_file",
    "client_auth_type",
    "client_allowed_sans",
    "min_version",
    "max_version",
    "cipher_suites",
    "prefer_server_cipher_suites",
    "curve_preferences",
}
_HTTP_KEYS = {"http2", "headers"}

_BCRYPT = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
_BAD_HASH = (
    'not a bcrypt hash ($2a$, $2b$ or $2y$, a cost and 53 characters: htpasswd -nBC 10 "" '
    "| tr -d ':\\n' makes one)"
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PEM_CERT = "-----BEGIN CERTIFICATE-----"
_PEM_KEY = re.compile(r"-----BEGIN ([A-Z]+ )?PRIVATE KEY-----")


class WebConfigError(ConfigError):
    """Raised with every problem found, each starting with its key path
    (``tls_server_config.key_file: ...``, ``basic_auth_users.alice: ...``) or ``web config:``.
    """


def load_web_config(path: str | Path) -> WebConfig:
    """Read and check a web config file, loading the certificates and keys it names.

    An empty file (or ``{}``) is valid: no TLS, no authentication.
    """
    try:
        text = read_config_text(path)
    except FileProblem as exc:
        raise WebConfigError([f"web config: {exc}"]) from None
    try:
        raw = load_yaml(text)
    except YamlProblem as exc:
        raise WebConfigError([f"web config: {exc}"]) from None
    return parse_web_config(raw, base_dir=Path(path).parent, path=Path(path))


def parse_web_config(raw: Any, base_dir: Path | None = None, path: Path | None = None) -> WebConfig:
    """Check an already parsed web config (``None`` is an empty one). Relative file names
    are taken from ``base_dir`` (the working directory when it is ``None``)."""
    problems: list[str] = []
    try:
        config = _parse(raw, base_dir, path, problems)
    except RecursionError:  # load_yaml bounds depth; a hand-built structure may not be
        problems.append(f"web config: nested deeper than {MAX_CONFIG_DEPTH} levels")
    if problems:
        raise WebConfigError(problems)
    return config


class WebConfig:
    """A checked web config. Its attributes are read-only; build one with
    :func:`load_web_config` (or :func:`parse_web_config`) and make a new one to reload."""

    __slots__ = (
        "_allowed_ips",
        "_allowed_sans",
        "_auth",
        "_client_auth_type",
        "_headers",
        "_path",
        "_ssl_context",
        "_users",
    )

    def __init__(
        self,
        *,
        path: Path | None = None,
        ssl_context: ssl.SSLContext | None = None,
        client_auth_type: str = "NoClientCert",
        client_allowed_sans: tuple[str, ...] = (),
        users: Mapping[str, bytes] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        users = dict(users or {})
        self._path = path
        self._ssl_context = ssl_context
        self._client_auth_type = client_auth_type if ssl_context is not None else "NoClientCert"
        self._allowed_sans = frozenset(client_allowed_sans)
        self._allowed_ips = frozenset(
            ip for ip in (_ip(s) for s in client_allowed_sans) if ip is not None
        )
        self._users: Mapping[str, bytes] = MappingProxyType(users)
        self._headers: Mapping[str, str] = MappingProxyType(dict(headers or {}))
        self._auth = BasicAuth(users)

    @property
    def path(self) -> Path | None:
        """The file this came from (``None`` when built from data)."""
        return self._path

    @property
    def tls_enabled(self) -> bool:
        return self._ssl_context is not None

    @property
    def auth_enabled(self) -> bool:
        """Whether requests need basic auth (some ``basic_auth_users``)."""
        return bool(self._users)

    @property
    def headers(self) -> Mapping[str, str]:
        """Headers to add to every response (read-only)."""
        return self._headers

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server's TLS context (the same object every call), or ``None`` for plain HTTP.

        For ``asyncio.start_server(..., ssl=config.ssl_context())``. With
        ``client_allowed_sans``, also call :meth:`check_client_cert` on each connection.
        """
        return self._ssl_context

    def check_client_cert(self, peercert: Mapping[str, Any] | None) -> bool:
        """Whether a connection's client certificate carries one of ``client_allowed_sans``.

        ``peercert`` is ``SSLObject.getpeercert()`` (in asyncio,
        ``writer.get_extra_info("peercert")``). True when no SANs are configured; otherwise
        a DNS name, e-mail address, URI or IP address SAN must equal an allowed entry (IP
        addresses compare as addresses: ``2001:db8::1`` matches OpenSSL's
        ``2001:DB8:0:0:0:0:0:1``). The caller should close the connection (or answer 403)
        on False. ``client_allowed_sans`` is only accepted with a policy that requires a
        verified certificate, so ``getpeercert()`` is never empty on a good connection.
        """
        if not self._allowed_sans:
            return True
        if not peercert:
            return False
        for entry in peercert.get("subjectAltName", ()):
            if not (isinstance(entry, tuple) and len(entry) == 2):
                continue
            kind, value = entry
            if not isinstance(value, str):
                continue
            if kind in ("DNS", "email", "URI") and value in self._allowed_sans:
                return True
            if kind == "IP Address":
                ip = _ip(value.strip())
                if ip is not None and ip in self._allowed_ips:
                    return True
                if value.strip() in self._allowed_sans:
                    return True
        return False

    @property
    def basic_auth(self) -> BasicAuth:
        """The basic-auth checks of ``basic_auth_users`` (see :mod:`exporter.web.auth`)."""
        return self._auth

    def carry_over(self, previous: WebConfig | None) -> None:
        """What a reload keeps of the config this one replaces: the remembered password
        checks, when ``basic_auth_users`` is unchanged (any change starts afresh)."""
        if previous is not None:
            self._auth.carry_over(previous._auth)

    def describe(self) -> str:
        """A short summary for logs, e.g.
        ``TLS (client certs: RequireAndVerifyClientCert), basic auth for 2 users``."""
        if self._ssl_context is None:
            tls = "no TLS"
        elif self._client_auth_type == "NoClientCert":
            tls = "TLS"
        else:
            tls = f"TLS (client certs: {self._client_auth_type})"
        n = len(self._users)
        auth = f"basic auth for {n} user{'s' if n != 1 else ''}" if n else "no basic auth"
        return f"{tls}, {auth}"

    def __repr__(self) -> str:
        where = f" {self._path}" if self._path is not None else ""
        return f"<WebConfig{where}: {self.describe()}>"


def _ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


# --- parsing ---------------------------------------------------------------------------


def _parse(raw: Any, base_dir: Path | None, path: Path | None, problems: list[str]) -> WebConfig:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise WebConfigError(["web config: must be a mapping of keys to values"])
    for key in raw:
        if key in _NOT_SUPPORTED_TOP:
            problems.append(f"{key}: not supported by this exporter")
    unknown_keys(
        {k: v for k, v in raw.items() if k not in _NOT_SUPPORTED_TOP}, _TOP_KEYS, "", problems
    )
    tls = section(raw, "tls_server_config", _TLS_KEYS, problems)
    http = section(raw, "http_server_config", _HTTP_KEYS, problems)
    headers = _http(http, problems)
    users = _users(raw.get("basic_auth_users"), problems)
    context, client_auth, sans = _tls(tls, base_dir, problems)
    return WebConfig(
        path=path,
        ssl_context=context,
        client_auth_type=client_auth,
        client_allowed_sans=sans,
        users=users,
        headers=headers,
    )


def _is_set(value: Any) -> bool:
    return value is not None and value != "" and value != [] and value != {}


def _http(http: dict[Any, Any], problems: list[str]) -> dict[str, str]:
    http2 = http.get("http2")
    if http2 is not None and not isinstance(http2, bool):
        problems.append("http_server_config.http2: must be true or false")
    elif http2 is True:
        problems.append(
            "http_server_config.http2: HTTP/2 is not supported by this exporter "
            "(it serves HTTP/1.1): set it to false or remove it"
        )
    raw = http.get("headers")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.append("http_server_config.headers: must be a mapping of header names to values")
        return {}
    headers: dict[str, str] = {}
    for name, value in raw.items():
        where = f"http_server_config.headers.{name}"
        if name not in HEADERS:
            extra = did_you_mean(str(name), tuple(HEADERS))
            problems.append(
                f"{where}: this header cannot be set{extra}; allowed: {', '.join(HEADERS)}"
            )
            continue
        if value is None:
            continue
        if not isinstance(value, str):
            problems.append(f"{where}: must be a string")
            continue
        value = value.strip()
        if not value:
            continue  # "Unset if blank", as exporter-toolkit documents
        if _CONTROL.search(value) or not is_text(value) or not value.isascii():
            problems.append(f"{where}: must be printable ASCII on one line")
            continue
        allowed = HEADERS[name]
        if allowed and value.lower() not in allowed:
            problems.append(f"{where}: must be one of {', '.join(allowed)}")
            continue
        headers[name] = value
    return headers


def _users(raw: Any, problems: list[str]) -> dict[str, bytes]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.append("basic_auth_users: must be a mapping of user names to bcrypt hashes")
        return {}
    users: dict[str, bytes] = {}
    for name, hashed in raw.items():
        where = f"basic_auth_users.{name}"
        if not isinstance(name, str):
            problems.append(f"{where}: a user name must be a string (quote it)")
            continue
        if not is_text(name) or _CONTROL.search(name):
            problems.append(f"{where}: a user name cannot hold control characters")
            continue
        if ":" in name:
            problems.append(f"{where}: a user name cannot hold a colon (HTTP basic auth)")
            continue
        if not isinstance(hashed, str) or not _BCRYPT.fullmatch(hashed.strip()):
            problems.append(f"{where}: {_BAD_HASH}")  # never the value: it may be a password
            continue
        users[name] = hashed.strip().encode("ascii")
    return users


@dataclass
class _Pem:
    """A certificate, key or CA bundle: its text, and the key path to blame."""

    text: str
    where: str


def _tls(
    tls: dict[Any, Any], base_dir: Path | None, problems: list[str]
) -> tuple[ssl.SSLContext | None, str, tuple[str, ...]]:
    p = "tls_server_config."
    before = len(problems)

    client_auth = _client_auth(tls.get("client_auth_type"), problems)
    min_version = _version(tls, "min_version", "TLS12", problems)
    max_version = _version(tls, "max_version", "TLS13", problems)
    if min_version is not None and max_version is not None:
        if TLS_VERSIONS[max_version] < TLS_VERSIONS[min_version]:
            problems.append(f"{p}max_version: lower than min_version")
        if TLS_VERSIONS[max_version] < ssl.TLSVersion.TLSv1_2:
            problems.append(
                f"{p}max_version: TLS 1.0 and 1.1 are not supported (OpenSSL refuses them at "
                "its default security level): use TLS12 or TLS13"
            )
    ciphers = _ciphers(tls.get("cipher_suites"), min_version, problems)
    prefer = tls.get("prefer_server_cipher_suites", True)
    if prefer is None:
        prefer = True
    if not isinstance(prefer, bool):
        problems.append(f"{p}prefer_server_cipher_suites: must be true or false")
    _names(tls.get("curve_preferences"), "curve_preferences", CURVES, problems)
    sans = _sans(tls.get("client_allowed_sans"), client_auth, problems)

    if not any(_is_set(v) for v in tls.values()):
        return None, "NoClientCert", ()

    cert = _material(tls, "cert", "cert_file", MAX_CERT_FILE_BYTES, base_dir, problems)
    key = _material(tls, "key", "key_file", MAX_KEY_FILE_BYTES, base_dir, problems)
    ca = _material(tls, "client_ca", "client_ca_file", MAX_CERT_FILE_BYTES, base_dir, problems)
    if not _given(tls, "cert", "cert_file"):
        problems.append(f"{p}cert_file: required to serve TLS (or the certificate inline as cert)")
    if not _given(tls, "key", "key_file"):
        problems.append(f"{p}key_file: required to serve TLS (or the key inline as key)")
    if client_auth in _NEEDS_CA and not _given(tls, "client_ca", "client_ca_file"):
        problems.append(
            f"{p}client_ca_file: required with client_auth_type {client_auth} "
            "(or the CA certificates inline as client_ca)"
        )
    if client_auth == "NoClientCert" and _given(tls, "client_ca", "client_ca_file"):
        problems.append(
            f"{p}client_auth_type: a client CA is set but client_auth_type is NoClientCert, "
            "so no client certificate would be asked for (use RequireAndVerifyClientCert)"
        )
    if len(problems) > before or cert is None or key is None or client_auth is None:
        return None, "NoClientCert", ()
    if min_version is None or max_version is None:  # always with a problem, so never here
        return None, "NoClientCert", ()

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():  # TLSv1 and TLSv1_1 are deprecated, yet exporters allow them
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = TLS_VERSIONS[min_version]
        context.maximum_version = TLS_VERSIONS[max_version]
    if ciphers:
        context.set_ciphers(":".join(ciphers))
    if prefer is False:
        context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    if not _load_chain(context, cert, key, problems):
        return None, "NoClientCert", ()
    if ca is not None:
        try:
            context.load_verify_locations(cadata=ca.text)
        except ssl.SSLError as exc:
            problems.append(f"{ca.where}: not valid PEM CA certificates ({_reason(exc)})")
            return None, "NoClientCert", ()
    if client_auth in ("RequireAnyClientCert", "RequireAndVerifyClientCert"):
        context.verify_mode = ssl.CERT_REQUIRED
    elif client_auth == "VerifyClientCertIfGiven" or (
        client_auth == "RequestClientCert" and ca is not None
    ):
        context.verify_mode = ssl.CERT_OPTIONAL
    else:
        context.verify_mode = ssl.CERT_NONE
    return context, client_auth, sans


def _given(tls: dict[Any, Any], inline: str, file: str) -> bool:
    return _is_set(tls.get(inline)) or _is_set(tls.get(file))


def _client_auth(value: Any, problems: list[str]) -> str | None:
    if value is None or value == "":
        return "NoClientCert"
    if isinstance(value, str):
        name = _CLIENT_AUTH_ALIASES.get(value, value)
        if name in CLIENT_AUTH_TYPES:
            return name
    extra = did_you_mean(value, CLIENT_AUTH_TYPES) if isinstance(value, str) else ""
    problems.append(
        f"tls_server_config.client_auth_type: must be one of {', '.join(CLIENT_AUTH_TYPES)}{extra}"
    )
    return None


def _version(tls: dict[Any, Any], key: str, default: str, problems: list[str]) -> str | None:
    value = tls.get(key)
    if value is None or value == "":
        return default
    if isinstance(value, str) and value in TLS_VERSIONS:
        if value == "TLS13" and not ssl.HAS_TLSv1_3:
            problems.append(f"tls_server_config.{key}: this OpenSSL has no TLS 1.3")
            return None
        return value
    extra = did_you_mean(value, tuple(TLS_VERSIONS)) if isinstance(value, str) else ""
    problems.append(f"tls_server_config.{key}: must be one of {', '.join(TLS_VERSIONS)}{extra}")
    return None


def _string_list(value: Any, where: str, problems: list[str]) -> list[str] | None:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        problems.append(f"{where}: must be a list of non-empty strings")
        return None
    return value


def _names(value: Any, key: str, known: tuple[str, ...], problems: list[str]) -> list[str]:
    where = f"tls_server_config.{key}"
    names = _string_list(value, where, problems)
    if names is None:
        return []
    for i, name in enumerate(names):
        if name not in known:
            extra = did_you_mean(name, known)
            problems.append(f"{where}[{i}]: unknown name{extra}; known: {', '.join(known)}")
    return names


def _ciphers(value: Any, min_version: str | None, problems: list[str]) -> list[str]:
    """OpenSSL names for the TLS 1.2 suites listed, each checked against this OpenSSL."""
    where = "tls_server_config.cipher_suites"
    before = len(problems)
    names = _names(value, "cipher_suites", tuple(GO_CIPHER_SUITES), problems)
    if len(problems) > before or not names:
        return []
    openssl: list[str] = []
    scratch = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    for i, name in enumerate(names):
        mapped = GO_CIPHER_SUITES[name]
        if mapped is None:
            continue
        try:
            scratch.set_ciphers(mapped)
        except ssl.SSLError:
            problems.append(f"{where}[{i}]: {name} is not available in this OpenSSL")
            continue
        if mapped not in openssl:
            openssl.append(mapped)
    if not openssl and len(problems) == before and min_version not in (None, "TLS13"):
        problems.append(
            f"{where}: only TLS 1.3 suites, which are not configurable, so TLS 1.2 would have "
            "no cipher suite: add TLS 1.2 suites or set min_version: TLS13"
        )
    return openssl


def _sans(value: Any, client_auth: str | None, problems: list[str]) -> tuple[str, ...]:
    where = "tls_server_config.client_allowed_sans"
    sans = _string_list(value, where, problems)
    if not sans:
        return ()
    if client_auth is not None and client_auth not in _REQUIRES_CERT:
        problems.append(
            f"{where}: needs client_auth_type RequireAndVerifyClientCert (or "
            "RequireAnyClientCert): with the others a client may connect without a certificate"
        )
    return tuple(sans)


def _material(
    tls: dict[Any, Any],
    inline: str,
    file: str,
    limit: int,
    base_dir: Path | None,
    problems: list[str],
) -> _Pem | None:
    """The PEM text of ``cert``/``cert_file`` (and the like), or None (with a problem, or
    when neither is given)."""
    p = "tls_server_config."
    text_value, file_value = tls.get(inline), tls.get(file)
    if _is_set(text_value) and _is_set(file_value):
        problems.append(f"{p}{file}: set {inline} or {file}, not both")
        return None
    if _is_set(text_value):
        if not isinstance(text_value, str):
            problems.append(f"{p}{inline}: must be PEM text")
            return None
        return _pem(text_value, f"{p}{inline}", inline, problems)
    if not _is_set(file_value):
        return None
    where = f"{p}{file}"
    if not isinstance(file_value, str):
        problems.append(f"{where}: must be a file name")
        return None
    if "-----BEGIN" in file_value or "\n" in file_value:
        # Never echo it: a key pasted here by mistake must not be printed as a "file name".
        problems.append(f"{where}: looks like PEM text, not a file name (use {inline} for that)")
        return None
    resolved = Path(file_value)
    if not resolved.is_absolute() and base_dir is not None:
        resolved = base_dir / resolved  # as exporter-toolkit: from the web config's directory
    try:
        data = read_bounded(resolved, limit)
    except FileProblem as exc:
        problems.append(f"{where}: cannot read {resolved}: {exc}")
        return None
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        problems.append(f"{where}: {resolved} is not PEM text")
        return None
    return _pem(text, where, inline, problems)


def _pem(text: str, where: str, kind: str, problems: list[str]) -> _Pem | None:
    if not text.isascii() or not is_text(text):
        problems.append(f"{where}: not PEM text")
        return None
    if kind == "key":
        if "ENCRYPTED" in text:
            problems.append(
                f"{where}: the key is encrypted; passphrase-protected keys are not supported "
                "(openssl pkey -in KEY -out PLAIN makes a plain one)"
            )
            return None
        if not _PEM_KEY.search(text):
            problems.append(f"{where}: no PEM private key found (-----BEGIN ... PRIVATE KEY-----)")
            return None
    elif _PEM_CERT not in text:
        problems.append(f"{where}: no PEM certificate found ({_PEM_CERT})")
        return None
    return _Pem(text, where)


def _load_chain(context: ssl.SSLContext, cert: _Pem, key: _Pem, problems: list[str]) -> bool:
    # The certificates first, on their own, so that a problem is laid at the right key.
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=cert.text)
    except ssl.SSLError as exc:
        problems.append(f"{cert.where}: not a valid PEM certificate ({_reason(exc)})")
        return False
    try:
        with _memory_file(cert.text) as cert_path, _memory_file(key.text) as key_path:
            context.load_cert_chain(cert_path, key_path, password=_no_password)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            problems.append(f"{key.where}: the key does not match the certificate")
        else:
            problems.append(f"{key.where}: not a valid PEM private key ({_reason(exc)})")
        return False
    except OSError as exc:
        problems.append(f"{key.where}: cannot load the key ({exc.strerror or type(exc).__name__})")
        return False
    return True


def _no_password() -> bytes:
    """Refuse to decrypt: OpenSSL would otherwise ask for a passphrase on the terminal."""
    return b""


def _reason(exc: ssl.SSLError) -> str:
    """OpenSSL's words, without the ``[LIB: REASON]`` prefix and ``(_ssl.c:123)`` suffix."""
    text = str(exc.strerror or exc.reason or type(exc).__name__)
    text = re.sub(r"\s*\(_ssl\.c:\d+\)", "", text)
    return "OpenSSL: " + (re.sub(r"^\[[^\]]*\]\s*", "", text) or "unknown error")


@contextlib.contextmanager
def _memory_file(text: str) -> Iterator[str]:
    """A path OpenSSL can read ``text`` from: an anonymous in-memory file where Linux has
    them, else a private temporary file removed on exit."""
    data = text.encode("ascii")
    fd = _memfd(data)
    if fd is not None:
        try:
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    fd, path = tempfile.mkstemp(prefix="webconfig-", suffix=".pem")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        yield path
    finally:
        os.unlink(path)


def _memfd(data: bytes) -> int | None:
    """An anonymous in-memory file holding ``data``, readable at ``/proc/self/fd/N``."""
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is None or not os.path.isdir("/proc/self/fd"):
        return None
    try:
        fd: int = memfd_create("webconfig-pem", getattr(os, "MFD_CLOEXEC", 0))
    except OSError:
        return None
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except OSError:
        os.close(fd)
        return None
    return fd
