"""Strings from outside (the API, a config file) that become label values, exemplars or page
text: Unicode that UTF-8 can carry, checked where they enter.

JSON and YAML can both spell an unpaired surrogate (``"\\ud800"``), which is a ``str`` to
Python but no UTF-8 page can hold: one such label value would make every scrape fail.
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"


def is_text(value: str) -> bool:
    """False for a string holding an unpaired surrogate, which no URL, label or file can
    carry."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def repaired(value: str) -> str:
    """``value`` with each unpaired surrogate replaced by U+FFFD (itself when it has none)."""
    if is_text(value):
        return value
    return "".join(REPLACEMENT if "\ud800" <= c <= "\udfff" else c for c in value)
