"""The web config's ``tls_server_config``: its keys, certificates and keys read and checked,
and the server's TLS context they make.

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
"""

from __future__ import annotations

import contextlib
import os
import re
import ssl
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any

from pydantic import PlainValidator, PrivateAttr, ValidationError, ValidationInfo, field_validator

from ..config.fields import Found, Schema, did_you_mean, found_in, located, problem, reading
from ..config.files import MAX_KEY_FILE_BYTES, FileProblem, read_bounded
from ..text import is_text

MAX_CERT_FILE_BYTES = 1024 * 1024  # a certificate chain or a CA bundle

CLIENT_AUTH_TYPES = (
    "NoClientCert",
    "RequestClientCert",
    "RequireAnyClientCert",
    "VerifyClientCertIfGiven",
    "RequireAndVerifyClientCert",
)
_CLIENT_AUTH_ALIASES = {"RequireClientCert": "RequireAnyClientCert"}  # as exporter-toolkit
NEEDS_CA = ("RequireAnyClientCert", "VerifyClientCertIfGiven", "RequireAndVerifyClientCert")
REQUIRES_CERT = ("RequireAnyClientCert", "RequireAndVerifyClientCert")

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

_PEM_CERT = "-----BEGIN CERTIFICATE-----"
_PEM_KEY = re.compile(r"-----BEGIN ([A-Z]+ )?PRIVATE KEY-----")


# ----------------------------------------------------------------------------- checks


def policy(value: Any) -> str | None:
    """The client certificate policy by its exporter-toolkit name, None for no such name."""
    if value is None or value == "":
        return "NoClientCert"
    name = _CLIENT_AUTH_ALIASES.get(value, value) if isinstance(value, str) else None
    return name if name in CLIENT_AUTH_TYPES else None


def _client_auth_type(value: Any) -> str:
    name = policy(value)
    if name is None:
        extra = did_you_mean(value, CLIENT_AUTH_TYPES) if isinstance(value, str) else ""
        raise problem(f"must be one of {', '.join(CLIENT_AUTH_TYPES)}{extra}")
    return name


def _version(default: str) -> PlainValidator:
    def version(value: Any) -> str:
        if value is None or value == "":
            return default
        if isinstance(value, str) and value in TLS_VERSIONS:
            if value == "TLS13" and not ssl.HAS_TLSv1_3:
                raise problem("this OpenSSL has no TLS 1.3")
            return value
        extra = did_you_mean(value, TLS_VERSIONS) if isinstance(value, str) else ""
        raise problem(f"must be one of {', '.join(TLS_VERSIONS)}{extra}")

    return PlainValidator(version)


def _strings(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise problem("must be a list of non-empty strings")
    return tuple(value)


def _names(value: Any, known: Iterable[str]) -> tuple[str, ...]:
    """A list of names out of ``known``: each unknown one said at its index, with a hint."""
    names, known = _strings(value), tuple(known)
    found: Found = [
        ((i,), f"unknown name{did_you_mean(name, known)}; known: {', '.join(known)}")
        for i, name in enumerate(names)
        if name not in known
    ]
    if found:
        raise located(found)
    return names


def _ciphers(value: Any, info: ValidationInfo) -> tuple[str, ...]:
    """OpenSSL's names for the TLS 1.2 suites listed, each checked against this OpenSSL."""
    names, openssl = _names(value, GO_CIPHER_SUITES), []
    found: Found = []
    scratch = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    for i, name in enumerate(names):
        mapped = GO_CIPHER_SUITES[name]
        if mapped is None:
            continue
        try:
            scratch.set_ciphers(mapped)
        except ssl.SSLError:
            found.append(((i,), f"{name} is not available in this OpenSSL"))
        else:
            openssl += [] if mapped in openssl else [mapped]
    if names and not openssl and not found and info.data.get("min_version") not in (None, "TLS13"):
        why = "only TLS 1.3 suites, which are not configurable, so TLS 1.2 would have no cipher "
        found.append(((), why + "suite: add TLS 1.2 suites or set min_version: TLS13"))
    if found:
        raise located(found)
    return tuple(openssl)


def _sans(value: Any, info: ValidationInfo) -> tuple[str, ...]:
    sans, auth = _strings(value), info.data.get("client_auth_type")
    if sans and auth is not None and auth not in REQUIRES_CERT:
        raise problem(
            "needs client_auth_type RequireAndVerifyClientCert (or RequireAnyClientCert): "
            "with the others a client may connect without a certificate"
        )
    return sans


def _true_or_false(value: Any) -> bool:
    if value is not None and not isinstance(value, bool):
        raise problem("must be true or false")
    return value is not False


@dataclass(frozen=True)
class Pem:
    """A certificate, key or CA bundle: its text, and the key that gave it (to blame)."""

    text: str
    key: str

    def __repr__(self) -> str:
        return f"Pem({self.key})"  # never the text: it may be a private key


def _material(value: Any, info: ValidationInfo) -> Pem | None:
    """``cert``/``key``/``client_ca`` inline, or the ``..._file`` naming where it is (taken
    from the web config's directory when relative, as exporter-toolkit does)."""
    key = info.field_name or ""
    kind = key.removesuffix("_file")
    if not is_set(value):
        return None
    if kind == key:
        if not isinstance(value, str):
            raise problem("must be PEM text")
        return _pem(value, key, kind)
    if not isinstance(value, str):
        raise problem("must be a file name")
    if "-----BEGIN" in value or "\n" in value:
        # Never echo it: a key pasted here by mistake must not be printed as a "file name".
        raise problem(f"looks like PEM text, not a file name (use {kind} for that)")
    path, base_dir = Path(value), reading(info).base_dir
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    try:
        data = read_bounded(path, MAX_KEY_FILE_BYTES if kind == "key" else MAX_CERT_FILE_BYTES)
    except FileProblem as exc:
        raise problem(f"cannot read {path}: {exc}") from None
    try:
        return _pem(data.decode("ascii"), key, kind)
    except UnicodeDecodeError:
        raise problem(f"{path} is not PEM text") from None


def _pem(text: str, key: str, kind: str) -> Pem:
    if not text.isascii() or not is_text(text):
        raise problem("not PEM text")
    if kind == "key":
        if "ENCRYPTED" in text:
            raise problem(
                "the key is encrypted; passphrase-protected keys are not supported "
                "(openssl pkey -in KEY -out PLAIN makes a plain one)"
            )
        if not _PEM_KEY.search(text):
            raise problem("no PEM private key found (-----BEGIN ... PRIVATE KEY-----)")
    elif _PEM_CERT not in text:
        raise problem(f"no PEM certificate found ({_PEM_CERT})")
    return Pem(text, key)


def is_set(value: Any) -> bool:
    """Whether a TLS key says something (as exporter-toolkit reads it: not empty)."""
    return value is not None and value != "" and value != [] and value != {}


Material = Annotated[Pem | None, PlainValidator(_material)]


# ----------------------------------------------------------------------------- section


class TLSSection(Schema):
    """``tls_server_config``: TLS as soon as anything is set, and then all of it checked,
    down to a context that loads the key with its certificate."""

    EITHER = (("cert", "cert_file"), ("key", "key_file"), ("client_ca", "client_ca_file"))

    client_auth_type: Annotated[str, PlainValidator(_client_auth_type)] = "NoClientCert"
    min_version: Annotated[str, _version("TLS12")] = "TLS12"
    max_version: Annotated[str, _version("TLS13")] = "TLS13"
    cipher_suites: Annotated[tuple[str, ...], PlainValidator(_ciphers)] = ()  # OpenSSL's
    prefer_server_cipher_suites: Annotated[bool, PlainValidator(_true_or_false)] = True
    curve_preferences: Annotated[tuple[str, ...], PlainValidator(lambda v: _names(v, CURVES))] = ()
    client_allowed_sans: Annotated[tuple[str, ...], PlainValidator(_sans)] = ()
    cert: Material = None
    cert_file: Material = None
    key: Material = None
    key_file: Material = None
    client_ca: Material = None
    client_ca_file: Material = None

    _context: ssl.SSLContext | None = PrivateAttr(None)

    @field_validator("max_version")
    @classmethod
    def _range(cls, max_version: str, info: ValidationInfo) -> str:
        min_version = info.data.get("min_version")  # None: it has a problem of its own
        found: Found = []
        if min_version is not None and TLS_VERSIONS[max_version] < TLS_VERSIONS[min_version]:
            found.append(((), "lower than min_version"))
        if min_version is not None and TLS_VERSIONS[max_version] < ssl.TLSVersion.TLSv1_2:
            why = "TLS 1.0 and 1.1 are not supported (OpenSSL refuses them at its default "
            found.append(((), why + "security level): use TLS12 or TLS13"))
        if found:
            raise located(found)
        return max_version

    @classmethod
    def together(cls, raw: dict[str, Any], parsed: TLSSection | None) -> Found:
        if not any(is_set(v) for v in raw.values()):
            return []  # no TLS

        def given(kind: str) -> bool:
            return is_set(raw.get(kind)) or is_set(raw.get(f"{kind}_file"))

        found: Found = []
        if not given("cert"):
            found.append(
                (("cert_file",), "required to serve TLS (or the certificate inline as cert)")
            )
        if not given("key"):
            found.append((("key_file",), "required to serve TLS (or the key inline as key)"))
        auth = policy(raw.get("client_auth_type"))
        if auth in NEEDS_CA and not given("client_ca"):
            why = f"required with client_auth_type {auth} (or the CA certificates inline as "
            why += "client_ca)"
            found.append((("client_ca_file",), why))
        if auth == "NoClientCert" and given("client_ca"):
            why = "a client CA is set but client_auth_type is NoClientCert, so no client "
            why += "certificate would be asked for (use RequireAndVerifyClientCert)"
            found.append((("client_auth_type",), why))
        if found or parsed is None:
            return found
        try:
            parsed._context = parsed._server_context()
        except ValidationError as exc:
            return found_in(exc)
        return []

    @property
    def context(self) -> ssl.SSLContext | None:
        """The server's TLS context; None for plain HTTP."""
        return self._context

    def _server_context(self) -> ssl.SSLContext:
        """A key that does not match its certificate (and the like) is a problem now, not at
        the first handshake."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with (
            warnings.catch_warnings()
        ):  # TLSv1 and TLSv1_1 are deprecated, yet exporters allow them
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = TLS_VERSIONS[self.min_version]
            context.maximum_version = TLS_VERSIONS[self.max_version]
        if self.cipher_suites:
            context.set_ciphers(":".join(self.cipher_suites))
        if self.prefer_server_cipher_suites:
            context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
        else:
            context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
        cert, key = self.cert or self.cert_file, self.key or self.key_file
        assert cert is not None and key is not None  # required once anything is set
        _load_chain(context, cert, key)
        ca = self.client_ca or self.client_ca_file
        if ca is not None:
            try:
                context.load_verify_locations(cadata=ca.text)
            except ssl.SSLError as exc:
                raise _at(ca, f"not valid PEM CA certificates ({_reason(exc)})") from None
        auth = self.client_auth_type
        if auth in REQUIRES_CERT:
            context.verify_mode = ssl.CERT_REQUIRED
        elif auth == "VerifyClientCertIfGiven" or (auth == "RequestClientCert" and ca is not None):
            context.verify_mode = ssl.CERT_OPTIONAL
        else:
            context.verify_mode = ssl.CERT_NONE
        return context


def _at(pem: Pem, message: str) -> ValidationError:
    return located([((pem.key,), message)])


def _load_chain(context: ssl.SSLContext, cert: Pem, key: Pem) -> None:
    # The certificates first, on their own, so that a problem is laid at the right key.
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=cert.text)
    except ssl.SSLError as exc:
        raise _at(cert, f"not a valid PEM certificate ({_reason(exc)})") from None
    try:
        with _memory_file(cert.text) as cert_path, _memory_file(key.text) as key_path:
            context.load_cert_chain(cert_path, key_path, password=_no_password)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise _at(key, "the key does not match the certificate") from None
        raise _at(key, f"not a valid PEM private key ({_reason(exc)})") from None
    except OSError as exc:
        raise _at(key, f"cannot load the key ({exc.strerror or type(exc).__name__})") from None


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
