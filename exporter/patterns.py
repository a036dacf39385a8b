"""Regular expressions from the config, run by RE2 as Prometheus runs its own.

A config's expressions are searched in text the API sends: a failed run's ``error``, a listed
project's name. Python's ``re`` backtracks, and ``(\\w+\\s?)+: timeout`` against 4 KiB of words
would run for ages while holding the interpreter (no scrape, no health check, no signal).
RE2 matches in time linear in the text whatever the expression, and refuses what it cannot
run that way (backreferences, lookarounds, possessive repeats, atomic groups): such an
expression is a config error, never handed to a backtracking engine instead.

Differences from ``re`` that a user may meet: ``\\w``, ``\\d``, ``\\s`` and ``\\b`` are ASCII
only (``\\pL`` is a letter of any script; ``(?i)`` folds case in any script); ``$`` is the end
of the text only (not before a final newline) and ``\\Z`` is spelled ``\\z``; ``(?x)`` and
``(?P=name)`` do not exist.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import re2

# RE2's memory for one expression (its program and its DFA cache; RE2's own default is 8 MiB),
# some 100,000 instructions: ordinary expressions take a few dozen, ``(?:\w+\s?){1000}`` 8,000,
# and a larger one is refused as "pattern too large". A search is linear in the text and in the
# program's size, so this bounds its cost too: about 2 s for 4 KiB at worst at this size (RE2
# lets other threads run meanwhile), against about 7 s at RE2's default.
MAX_PATTERN_MEMORY = 2 << 20

# google-re2's module: ``Options`` is its own, so an older ``re2`` package in its place (pyre2,
# which falls back to ``re`` for what RE2 refuses) fails here rather than backtrack quietly.
_OPTIONS = re2.Options()
_OPTIONS.max_mem = MAX_PATTERN_MEMORY
_OPTIONS.log_errors = False  # a refused expression is a config problem, not a line on stderr
_OPTIONS.never_capture = True  # only "does it match" is asked: no group is tracked


@dataclass(frozen=True)
class Pattern:
    """A compiled expression that compares, hashes and shows as its text (a reload compares
    configs, and two compilations of one text are the same setting)."""

    pattern: str
    _regexp: Any = field(compare=False, repr=False)

    def search(self, text: str) -> bool:
        """Whether the expression matches anywhere in ``text``."""
        # Encoded here: a lone surrogate (which the standard JSON parser lets through) must
        # not raise, and RE2 reads bytes without the offset bookkeeping it does for a str.
        return self._regexp.search(text.encode("utf-8", "surrogatepass")) is not None


class PatternError(ValueError):
    """RE2 cannot compile the expression; the message is RE2's reason."""


def compile_pattern(text: str) -> Pattern:
    """``text`` compiled by RE2; raises PatternError."""
    try:
        return Pattern(text, re2.compile(text, _OPTIONS))
    except UnicodeEncodeError:
        raise PatternError("not valid Unicode text (an unpaired surrogate)") from None
    except re2.error as exc:
        reason = exc.args[0] if exc.args else ""
        if isinstance(reason, bytes):  # RE2's message comes as UTF-8 bytes
            reason = reason.decode("utf-8", "replace")
        raise PatternError(str(reason)) from None
