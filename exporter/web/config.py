"""The ``--web.config.file`` of Prometheus exporters: its schema, and the checked config.

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
Where Python's ``ssl`` differs from Go's ``crypto/tls``, :mod:`exporter.web.tls` says.

``http_server_config.http2: true`` is a problem (this server speaks HTTP/1.1), and
``headers`` takes the names and values exporter-toolkit allows; ``rate_limit`` is reported as
not supported.

Stricter than exporter-toolkit: a ``tls_server_config`` that sets anything but lacks a
certificate or a key is a problem (exporter-toolkit silently serves plain HTTP when only,
say, ``min_version`` is set); ``cert_file`` and ``cert`` (``key_file`` and ``key``, ...) may
not both be set; ``client_allowed_sans`` needs a policy that requires a certificate, as
exporter-toolkit's documentation says.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any

from pydantic import Field, PlainValidator, ValidationError

from ..config import ConfigError
from ..config.fields import Reading, Schema, did_you_mean, entries, messages, problem
from ..config.files import FileProblem, YamlProblem, load_yaml, read_config_text
from ..text import is_text
from .auth import BasicAuth
from .tls import CLIENT_AUTH_TYPES, GO_CIPHER_SUITES, TLSSection

__all__ = ["CLIENT_AUTH_TYPES", "GO_CIPHER_SUITES", "WebConfig", "WebConfigError"]

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

_BCRYPT = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
_BAD_HASH = (
    'not a bcrypt hash ($2a$, $2b$ or $2y$, a cost and 53 characters: htpasswd -nBC 10 "" '
    "| tr -d ':\\n' makes one)"
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class WebConfigError(ConfigError):
    """Raised with every problem found, each starting with its key path
    (``tls_server_config.key_file: ...``, ``basic_auth_users.alice: ...``) or ``web config:``.
    """


def load_web_config(path: str | Path) -> WebConfig:
    """Read and check a web config file, loading the certificates and keys it names.

    An empty file (or ``{}``) is valid: no TLS, no authentication.
    """
    try:
        raw = load_yaml(read_config_text(path))
    except (FileProblem, YamlProblem) as exc:
        raise WebConfigError([f"web config: {exc}"]) from None
    return parse_web_config(raw, base_dir=Path(path).parent, path=Path(path))


def parse_web_config(raw: Any, base_dir: Path | None = None, path: Path | None = None) -> WebConfig:
    """Check an already parsed web config (``None`` is an empty one). Relative file names
    are taken from ``base_dir`` (the working directory when it is ``None``)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise WebConfigError(["web config: must be a mapping of keys to values"])
    try:
        file = WebConfigFile.model_validate(raw, context=Reading(base_dir))
    except ValidationError as exc:
        raise WebConfigError(messages(exc, "web config")) from None
    tls_section = file.tls_server_config
    return WebConfig(
        path=path,
        ssl_context=tls_section.context,
        client_auth_type=tls_section.client_auth_type,
        client_allowed_sans=tls_section.client_allowed_sans,
        users=file.basic_auth_users,
        headers=file.http_server_config.headers,
    )


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


# --- the schema -------------------------------------------------------------------------


def _http2(value: Any) -> bool:
    if value is not None and not isinstance(value, bool):
        raise problem("must be true or false")
    if value:
        raise problem(
            "HTTP/2 is not supported by this exporter (it serves HTTP/1.1): set it to false "
            "or remove it"
        )
    return False


def _header(name: Any, value: Any) -> str | None:
    """A header's value, None to leave it unset ("Unset if blank", as exporter-toolkit)."""
    if name not in HEADERS:
        extra = did_you_mean(str(name), HEADERS)
        raise problem(f"this header cannot be set{extra}; allowed: {', '.join(HEADERS)}")
    if value is not None and not isinstance(value, str):
        raise problem("must be a string")
    value = (value or "").strip()
    if _CONTROL.search(value) or not is_text(value) or not value.isascii():
        raise problem("must be printable ASCII on one line")
    if value and HEADERS[name] and value.lower() not in HEADERS[name]:
        raise problem(f"must be one of {', '.join(HEADERS[name])}")
    return value or None


class HTTPSection(Schema):
    """``http_server_config``."""

    http2: Annotated[bool, PlainValidator(_http2)] = False
    headers: Annotated[
        dict[str, str], entries("must be a mapping of header names to values", _header)
    ] = Field(default_factory=dict)


def _user(name: Any, hashed: Any) -> bytes:
    if not isinstance(name, str):
        raise problem("a user name must be a string (quote it)")
    if not is_text(name) or _CONTROL.search(name):
        raise problem("a user name cannot hold control characters")
    if ":" in name:
        raise problem("a user name cannot hold a colon (HTTP basic auth)")
    if not isinstance(hashed, str) or not _BCRYPT.fullmatch(hashed.strip()):
        raise problem(_BAD_HASH)  # never the value: it may be a password
    return hashed.strip().encode("ascii")


def _not_supported(value: Any) -> None:
    raise problem("not supported by this exporter")


class WebConfigFile(Schema):
    """The whole file."""

    tls_server_config: TLSSection = TLSSection()
    http_server_config: HTTPSection = HTTPSection()
    basic_auth_users: Annotated[
        dict[str, bytes], entries("must be a mapping of user names to bcrypt hashes", _user)
    ] = Field(default_factory=dict)
    rate_limit: Annotated[None, PlainValidator(_not_supported)] = None  # exporter-toolkit's
