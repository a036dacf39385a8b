"""Extra request headers from ``LLAMA_CLOUD_CUSTOM_HEADERS``, read as the official SDK reads them.

The SDK takes one ``Name: value`` a line (split at the first colon, both sides stripped) and
sends them on every request; so does the exporter, on every listing, project list and history.
Where the SDK drops a line it cannot read, the exporter says so, naming the variable and the
line number but never a value (a header may carry a token, so each value is a
:class:`~.secret.Secret`). Headers the exporter must set itself are refused: the key's
``Authorization``, the ``Accept-Encoding`` its bounded body reader decodes, and framing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from .secret import Secret

CUSTOM_HEADERS_ENV = "LLAMA_CLOUD_CUSTOM_HEADERS"

# RFC 9110 field names (tokens), and values of visible ASCII, spaces and tabs.
_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VALUE = re.compile(r"[\x20-\x7e\t]*")
# Lower-case name -> how it is written, with why the exporter keeps it.
_OWN = {
    "authorization": ("Authorization", "the exporter sends the API key in it"),
    "accept-encoding": ("Accept-Encoding", "the exporter asks for gzip, which it reads bounded"),
    "host": ("Host", "it comes from base_url"),
    "content-length": ("Content-Length", "it frames the request"),
    "transfer-encoding": ("Transfer-Encoding", "it frames the request"),
    "connection": ("Connection", "the exporter manages its connections"),
}

Headers = tuple[tuple[str, Secret], ...]


def custom_headers(env: Mapping[str, str], problems: list[str]) -> Headers:
    """The headers ``LLAMA_CLOUD_CUSTOM_HEADERS`` names, in order (a name given twice: the last
    value, as the SDK's dict keeps it); what is wrong with a line goes to ``problems``."""
    text = env.get(CUSTOM_HEADERS_ENV)
    if not text:
        return ()
    found: dict[str, tuple[str, Secret]] = {}
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{CUSTOM_HEADERS_ENV}: line {number}"
        name, colon, value = line.partition(":")
        name, value = name.strip(), value.strip()
        if not colon:
            problems.append(f'{where} is not "Name: value"')
        elif not _NAME.fullmatch(name):
            problems.append(f'{where} is not "Name: value" (the name is not an HTTP header name)')
        elif name.lower() in _OWN:
            shown, why = _OWN[name.lower()]
            problems.append(f"{where} sets {shown}, which the exporter sets itself ({why})")
        elif not _VALUE.fullmatch(value):
            problems.append(f"{where}: the value of {name} must be printable ASCII")
        else:
            found[name.lower()] = (name, Secret(value))
    return tuple(found.values())
