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

from pydantic import Field, PlainValidator, PrivateAttr, ValidationError, ValidationInfo
from pydantic import field_validator as checked

from ..config import ConfigError
from ..config.fields import (
    Found,
    Reading,
    Schema,
    did_you_mean,
    found_in,
    located,
    messages,
    printable,
    problem,
    reading,
)
from ..config.files import FileProblem, YamlProblem, load_yaml, read_config_text
from ..text import is_text
from . import tls
from .auth import AuthResult, BasicAuth
from .tls import CLIENT_AUTH_TYPES, CURVES, GO_CIPHER_SUITES, Pem

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

    @property
    def users(self) -> tuple[str, ...]:
        """The basic-auth user names, sorted (never the hashes)."""
        return tuple(sorted(self._users))

    @property
    def client_auth_type(self) -> str:
        """The client certificate policy, by its exporter-toolkit name."""
        return self._client_auth_type

    @property
    def client_allowed_sans(self) -> frozenset[str]:
        return self._allowed_sans

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

    def check_basic_auth(self, authorization_header: str | None) -> bool:
        """Whether a request's ``Authorization`` header lets it in, waiting for a bcrypt
        check if need be (call it off the event loop, or await ``basic_auth.check_async``).

        True when no users are configured. Otherwise the header must be ``Basic`` (any case)
        and base64 of UTF-8 ``user:password`` whose password matches the user's bcrypt hash
        (cut at 72 bytes, as bcrypt, Go and htpasswd do). False too when it could not be
        checked (:attr:`AuthResult.BUSY`: the bcrypt queue was full, or the wait too long).
        """
        return self._auth.check(authorization_header) is AuthResult.GRANTED

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


def _is_set(value: Any) -> bool:
    """Whether a TLS key says something (not empty, as exporter-toolkit reads it)."""
    return value is not None and value != "" and value != [] and value != {}


def _inline(kind: str) -> PlainValidator:
    def pem(value: Any) -> Pem | None:
        return tls.inline(value, kind, kind) if _is_set(value) else None

    return PlainValidator(pem)


def _from_file(kind: str) -> PlainValidator:
    def pem(value: Any, info: ValidationInfo) -> Pem | None:
        if not _is_set(value):
            return None
        return tls.from_file(value, f"{kind}_file", kind, reading(info).base_dir)

    return PlainValidator(pem)


def _ciphers(value: Any, info: ValidationInfo) -> tuple[str, ...]:
    return tuple(tls.ciphers(value, info.data.get("min_version")))


def _sans(value: Any, info: ValidationInfo) -> tuple[str, ...]:
    sans = tls.strings(value)
    auth = info.data.get("client_auth_type")
    if sans and auth is not None and auth not in tls.REQUIRES_CERT:
        raise problem(
            "needs client_auth_type RequireAndVerifyClientCert (or RequireAnyClientCert): "
            "with the others a client may connect without a certificate"
        )
    return tuple(sans)


def _true_or_false(value: Any) -> bool:
    if value is None:
        return True
    if not isinstance(value, bool):
        raise problem("must be true or false")
    return value


class TLSSection(Schema):
    """``tls_server_config``: TLS as soon as anything is set, and then all of it checked."""

    EITHER = (("cert", "cert_file"), ("key", "key_file"), ("client_ca", "client_ca_file"))

    client_auth_type: Annotated[str, PlainValidator(tls.client_auth_type)] = "NoClientCert"
    min_version: Annotated[str, PlainValidator(lambda v: tls.version(v, "TLS12"))] = "TLS12"
    max_version: Annotated[str, PlainValidator(lambda v: tls.version(v, "TLS13"))] = "TLS13"
    cipher_suites: Annotated[tuple[str, ...], PlainValidator(_ciphers)] = ()  # OpenSSL's names
    prefer_server_cipher_suites: Annotated[bool, PlainValidator(_true_or_false)] = True
    curve_preferences: Annotated[Any, PlainValidator(lambda v: tls.names(v, CURVES))] = ()
    client_allowed_sans: Annotated[tuple[str, ...], PlainValidator(_sans)] = ()
    cert: Annotated[Pem | None, _inline("cert")] = None
    cert_file: Annotated[Pem | None, _from_file("cert")] = None
    key: Annotated[Pem | None, _inline("key")] = None
    key_file: Annotated[Pem | None, _from_file("key")] = None
    client_ca: Annotated[Pem | None, _inline("client_ca")] = None
    client_ca_file: Annotated[Pem | None, _from_file("client_ca")] = None

    _context: ssl.SSLContext | None = PrivateAttr(None)

    @checked("max_version")
    @classmethod
    def _range(cls, max_version: str, info: ValidationInfo) -> str:
        found = tls.version_range(info.data.get("min_version"), max_version)
        if found:
            raise located(found)
        return max_version

    @classmethod
    def together(cls, raw: dict[str, Any], parsed: TLSSection | None) -> Found:
        if not any(_is_set(v) for v in raw.values()):
            return []  # no TLS

        def given(kind: str) -> bool:
            return _is_set(raw.get(kind)) or _is_set(raw.get(f"{kind}_file"))

        found: Found = []
        if not given("cert"):
            found.append(
                (("cert_file",), "required to serve TLS (or the certificate inline as cert)")
            )
        if not given("key"):
            found.append((("key_file",), "required to serve TLS (or the key inline as key)"))
        auth = tls.policy(raw.get("client_auth_type"))
        if auth in tls.NEEDS_CA and not given("client_ca"):
            found.append(
                (
                    ("client_ca_file",),
                    f"required with client_auth_type {auth} "
                    "(or the CA certificates inline as client_ca)",
                )
            )
        if auth == "NoClientCert" and given("client_ca"):
            found.append(
                (
                    ("client_auth_type",),
                    "a client CA is set but client_auth_type is NoClientCert, so no client "
                    "certificate would be asked for (use RequireAndVerifyClientCert)",
                )
            )
        if found or parsed is None:
            return found
        try:
            parsed._context = tls.server_context(parsed.settings())
        except ValidationError as exc:
            return found_in(exc)
        return []

    def settings(self) -> tls.Settings:
        cert, key = self.cert or self.cert_file, self.key or self.key_file
        assert cert is not None and key is not None  # required once anything is set
        return tls.Settings(
            cert=cert,
            key=key,
            client_ca=self.client_ca or self.client_ca_file,
            client_auth_type=self.client_auth_type,
            min_version=self.min_version,
            max_version=self.max_version,
            ciphers=self.cipher_suites,
            prefer_server_cipher_suites=self.prefer_server_cipher_suites,
        )

    @property
    def context(self) -> ssl.SSLContext | None:
        """The server's context; None for plain HTTP."""
        return self._context


def _http2(value: Any) -> bool:
    if value is not None and not isinstance(value, bool):
        raise problem("must be true or false")
    if value:
        raise problem(
            "HTTP/2 is not supported by this exporter (it serves HTTP/1.1): set it to false "
            "or remove it"
        )
    return False


def _headers(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise problem("must be a mapping of header names to values")
    headers: dict[str, str] = {}
    found: Found = []
    for name, text in value.items():
        why = _header_problem(name, text)
        if why:
            found.append(((printable(str(name)),), why))
        elif isinstance(text, str) and text.strip():  # "Unset if blank", as exporter-toolkit has it
            headers[name] = text.strip()
    if found:
        raise located(found)
    return headers


def _header_problem(name: Any, value: Any) -> str | None:
    if name not in HEADERS:
        extra = did_you_mean(str(name), HEADERS)
        return f"this header cannot be set{extra}; allowed: {', '.join(HEADERS)}"
    if value is None:
        return None
    if not isinstance(value, str):
        return "must be a string"
    value = value.strip()
    if value and (_CONTROL.search(value) or not is_text(value) or not value.isascii()):
        return "must be printable ASCII on one line"
    allowed = HEADERS[name]
    if value and allowed and value.lower() not in allowed:
        return f"must be one of {', '.join(allowed)}"
    return None


class HTTPSection(Schema):
    """``http_server_config``."""

    http2: Annotated[bool, PlainValidator(_http2)] = False
    headers: Annotated[dict[str, str], PlainValidator(_headers)] = Field(default_factory=dict)


def _users(value: Any) -> dict[str, bytes]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise problem("must be a mapping of user names to bcrypt hashes")
    users: dict[str, bytes] = {}
    found: Found = []
    for name, hashed in value.items():
        why = _user_problem(name, hashed)
        if why:
            found.append(((printable(str(name)),), why))
        else:
            users[name] = hashed.strip().encode("ascii")
    if found:
        raise located(found)
    return users


def _user_problem(name: Any, hashed: Any) -> str | None:
    if not isinstance(name, str):
        return "a user name must be a string (quote it)"
    if not is_text(name) or _CONTROL.search(name):
        return "a user name cannot hold control characters"
    if ":" in name:
        return "a user name cannot hold a colon (HTTP basic auth)"
    if not isinstance(hashed, str) or not _BCRYPT.fullmatch(hashed.strip()):
        return _BAD_HASH  # never the value: it may be a password
    return None


def _not_supported(value: Any) -> None:
    raise problem("not supported by this exporter")


class WebConfigFile(Schema):
    """The whole file."""

    tls_server_config: TLSSection = TLSSection()
    http_server_config: HTTPSection = HTTPSection()
    basic_auth_users: Annotated[dict[str, bytes], PlainValidator(_users)] = Field(
        default_factory=dict
    )
    rate_limit: Annotated[None, PlainValidator(_not_supported)] = None  # exporter-toolkit's
