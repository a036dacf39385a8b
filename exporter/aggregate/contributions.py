"""What each session's most recent run contributes to the gauges, packed per slot, and the
exact sums over them (correctly rounded, whatever order the values came in)."""

from __future__ import annotations

from array import array
from math import ldexp
from typing import Any

_U32 = 2**32 - 1


# Exact sums of doubles: every double is a whole multiple of 2**-1074. Values with at most 64
# bits after the point (all but the tiniest) are summed scaled by 2**64, which keeps the
# integers short; the others by 2**1074.
_FINE = 64
_TINY = 1074


class Exact:
    """An exact sum of numbers, correctly rounded when read."""

    __slots__ = ("fine", "tiny")

    def __init__(self) -> None:
        self.fine = 0
        self.tiny = 0

    def add(self, value: float, sign: int = 1) -> None:
        if type(value) is int:
            self.fine += sign * (value << _FINE)
            return
        try:
            scaled = ldexp(value, _FINE)  # exact: a power of two
        except OverflowError:  # too large to scale: as_integer_ratio below
            pass
        else:
            if scaled.is_integer():  # at most 64 bits after the point: the common case
                self.fine += sign * int(scaled)
                return
        numerator, denominator = value.as_integer_ratio()
        bits = denominator.bit_length() - 1
        if bits <= _FINE:
            self.fine += sign * (numerator << (_FINE - bits))
        else:
            self.tiny += sign * (numerator << (_TINY - bits))

    def value(self, whole: int = 0) -> float:
        """The sum, plus ``whole``; int / int rounds correctly."""
        fine = (whole << _FINE) + self.fine
        if not self.tiny:
            return fine / (1 << _FINE)
        return ((fine << (_TINY - _FINE)) + self.tiny) / (1 << _TINY)


_ODD = 2**32 - 1  # a duration kept in ``Runs.odd``


class Runs:
    """Per slot, the most recent run's input and output tokens, turns and duration (ms),
    and their exact sums.

    Counts go in arrays of unsigned 32-bit integers, which hold nearly every real count in
    4 bytes; a slot with a count that is not such an integer (a fraction, or 2**32 and more)
    keeps its three counts in a small dict instead, so every value stays exact. Durations
    come in milliseconds with up to three decimals: they go in thousandths of a millisecond,
    4 bytes each as well (up to 71 minutes); one that does not round-trip exactly that way
    (more decimals, or longer) is kept as a double in a small dict.

    The sums are kept exactly (whole counts as Python integers, the rest in :class:`Exact`)
    and updated on every write, so a gauge costs nothing to read, whatever the number of
    sessions, and is the correctly rounded sum whatever order values came in.
    """

    __slots__ = ("big", "columns", "duration", "exact", "odd", "whole")

    def __init__(self) -> None:
        self.columns = (array("I"), array("I"), array("I"))
        self.duration = array("I")  # in microseconds; _ODD: see ``odd``
        self.odd: dict[int, float] = {}  # durations that are not whole microseconds below _ODD
        self.big: dict[int, tuple[float, float, float]] = {}
        self.whole = [0, 0, 0]  # sums of the counts in ``columns``
        self.exact = (Exact(), Exact(), Exact(), Exact())  # of ``big``, and durations

    def grow(self, count: int) -> None:
        """``count`` more slots, all zero."""
        for column in self.columns:
            column.extend(array("I", bytes(4 * count)))
        self.duration.extend(array("I", bytes(4 * count)))

    def put_new(self, slot: int, i: Any, o: Any, t: Any, d: Any) -> None:
        """:meth:`put` into a slot that holds zeros (a new session): nothing to take out
        first. A first listing stores every session this way."""
        if d:
            self.exact[3].add(d)
            self._set_duration(slot, d)
        self._put_counts(slot, i or 0, o or 0, t or 0)

    def put(self, slot: int, i: Any, o: Any, t: Any, d: Any) -> None:
        """Store one slot's values (numbers from 0 to below 2**53, or None for 0)."""
        d = d or 0
        ci, co, ct = self.columns
        whole, exact, big = self.whole, self.exact, self.big
        old = big.pop(slot, None) if big else None
        if old is None:
            whole[0] -= ci[slot]
            whole[1] -= co[slot]
            whole[2] -= ct[slot]
        else:
            exact[0].add(old[0], -1)
            exact[1].add(old[1], -1)
            exact[2].add(old[2], -1)
        previous = self._duration(slot)
        if previous != d:
            if previous:
                exact[3].add(previous, -1)
            if d:
                exact[3].add(d)
            self._set_duration(slot, d)
        self._put_counts(slot, i or 0, o or 0, t or 0)

    def _put_counts(self, slot: int, i: Any, o: Any, t: Any) -> None:
        """A slot's counts, into a slot whose counts were taken out of the sums."""
        ci, co, ct = self.columns
        if (
            type(i) is int
            and type(o) is int
            and type(t) is int
            and i <= _U32
            and o <= _U32
            and t <= _U32
        ):
            ci[slot], co[slot], ct[slot] = i, o, t
            whole = self.whole
            whole[0] += i
            whole[1] += o
            whole[2] += t
        else:
            ci[slot] = co[slot] = ct[slot] = 0
            self.big[slot] = (float(i), float(o), float(t))
            exact = self.exact
            exact[0].add(i)
            exact[1].add(o)
            exact[2].add(t)

    def _duration(self, slot: int) -> float:
        us = self.duration[slot]
        return self.odd[slot] if us == _ODD else us / 1000

    def _set_duration(self, slot: int, d: float) -> None:
        us = round(d * 1000)
        if us < _ODD and us / 1000 == d:
            self.duration[slot] = us
            if self.odd:
                self.odd.pop(slot, None)
        else:
            self.duration[slot] = _ODD
            self.odd[slot] = float(d)

    def get(self, slot: int) -> tuple[float, float, float, float]:
        big = self.big.get(slot)
        if big is not None:
            return (*big, self._duration(slot))
        ci, co, ct = self.columns
        return ci[slot], co[slot], ct[slot], self._duration(slot)

    def sums(self) -> tuple[float, float, float, float]:
        """The correctly rounded sums."""
        w, e = self.whole, self.exact
        return e[0].value(w[0]), e[1].value(w[1]), e[2].value(w[2]), e[3].value()

    def clear(self) -> None:
        for column in self.columns:
            column[:] = array("I", bytes(4 * len(column)))
        self.duration[:] = array("I", bytes(4 * len(self.duration)))
        self.odd.clear()
        self.big.clear()
        self.whole = [0, 0, 0]
        self.exact = (Exact(), Exact(), Exact(), Exact())
