"""Secrets: a type that never shows its value, and blanking of any text that might hold one.

A key travels as a :class:`Secret` and is unwrapped only where a request header is built.
Every live secret is known here, so the log pipeline and error messages can blank it, or
any long fragment of it, from text that came from somewhere else (a server echoing the key
back, an exception message): defence in depth behind "never put it there".
"""

from __future__ import annotations

import itertools
import threading
import weakref

BLANK = "********"
# A run of this many characters of a key is treated as the key: long enough that no
# ordinary text matches it by chance, short enough that most of a key never survives.
FRAGMENT = 8
# Shorter values are blanked only where they appear whole; below this, not at all (a
# one-letter "key" in a test would otherwise blank every occurrence of that letter).
MIN_SECRET = 4

# Every live Secret by a number of its own (two equal Secrets are two entries: one may die
# while the other is still in use), and the index built from their values, dropped on any
# change. Numbers are never reused, as ``id()`` values are.
_live: dict[int, str] = {}
_numbers = itertools.count()
_lock = threading.Lock()
_index: tuple[frozenset[str], tuple[str, ...]] | None = None  # cached (fragments, short keys)
# Numbers of the Secrets collected since, taken out under the lock by the next user. A
# finalizer runs wherever the garbage collector does, which may be inside a section holding
# the lock on the same thread: taking the lock there would freeze the process.
_dead: list[int] = []


def _forget(number: int) -> None:
    _dead.append(number)  # atomic: no lock


def _drop_dead() -> None:
    """Forget collected Secrets; call with the lock held."""
    global _index
    while _dead:
        _live.pop(_dead.pop(), None)
        _index = None


class Secret:
    """A string that never shows itself in a repr, a log line or an f-string."""

    __slots__ = ("__weakref__", "_value")

    def __init__(self, value: str) -> None:
        self._value = value
        global _index
        number = next(_numbers)
        with _lock:
            _drop_dead()
            _live[number] = value
            _index = None
        weakref.finalize(self, _forget, number)

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a Secret cannot be pickled")


def _build(values: set[str]) -> tuple[frozenset[str], tuple[str, ...]]:
    fragments: set[str] = set()
    short: list[str] = []
    for value in values:
        if len(value) < MIN_SECRET:
            continue
        if len(value) < FRAGMENT:
            short.append(value)
            continue
        fragments.update(value[i : i + FRAGMENT] for i in range(len(value) - FRAGMENT + 1))
    return frozenset(fragments), tuple(sorted(short, key=len, reverse=True))


def _live_index() -> tuple[frozenset[str], tuple[str, ...]]:
    global _index
    with _lock:
        _drop_dead()
        if _index is None:
            _index = _build(set(_live.values()))
        return _index


def redact(text: str, extra: tuple[str, ...] = ()) -> str:
    """``text`` with every live secret, and every fragment of ``FRAGMENT`` characters or more
    of one, replaced by ``********``. ``extra`` adds values that are not (yet) Secrets."""
    fragments, short = _build(set(extra)) if extra else (frozenset(), ())
    live_fragments, live_short = _live_index()
    fragments = fragments | live_fragments if fragments else live_fragments
    short = short + live_short
    if fragments and len(text) >= FRAGMENT:
        text = _blank_fragments(text, fragments)
    for value in short:
        if value in text:
            text = text.replace(value, BLANK)
    return text


def _blank_fragments(text: str, fragments: frozenset[str]) -> str:
    """Blank every stretch of ``text`` covered by known fragments: any run of at least
    ``FRAGMENT`` characters of a secret contains one, so none survives."""
    # Most lines hold none: while there are fewer fragments than about twice the characters,
    # looking for each one (in C) costs less than looking at each place (in Python).
    if len(fragments) <= 2 * len(text) and not any(f in text for f in fragments):
        return text
    spans: list[list[int]] = []
    for i in range(len(text) - FRAGMENT + 1):
        if text[i : i + FRAGMENT] in fragments:
            if spans and i <= spans[-1][1]:
                spans[-1][1] = i + FRAGMENT
            else:
                spans.append([i, i + FRAGMENT])
    if not spans:
        return text
    out: list[str] = []
    last = 0
    for start, end in spans:
        out += (text[last:start], BLANK)
        last = end
    out.append(text[last:])
    return "".join(out)
