"""What one page body gave a listing, kept so that the same body in the next listing can be
taken unread (:meth:`~.tracker.SessionTracker.take`)."""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from datetime import datetime


class PageSummary:
    """What one page body gave a listing, so the same body can be taken again unread: its
    sessions (their slots, a range when they are consecutive as they mostly are, and the
    :func:`memo_hash` of their fingerprints and index sets), counts and what it says about
    order and time. A listing makes them; the tracker keeps them until the next listing."""

    __slots__ = (
        "broken",
        "first",
        "invalid",
        "last",
        "memo",
        "missing",
        "newest",
        "nonempty",
        "slots",
        "token",
        "unordered",
        "valid",
    )

    def __init__(
        self,
        token: str | None,
        nonempty: bool,
        valid: bool,
        slots: range | array[int],
        memo: int,
        invalid: int,
        first: datetime | None,
        last: datetime | None,
        newest: datetime | None,
        unordered: bool,
        broken: bool,
        missing: bool,
    ) -> None:
        self.token, self.nonempty, self.valid = token, nonempty, valid
        self.slots, self.memo, self.invalid = slots, memo, invalid
        self.first, self.last, self.newest = first, last, newest
        self.unordered, self.broken, self.missing = unordered, broken, missing


def memo_hash(fps: Iterable[int], sets: Iterable[int]) -> int:
    """What a remembered page's sessions must still hold for the page to be taken unread:
    their fingerprints and index sets, in order."""
    return hash((array("I", fps).tobytes(), array("I", sets).tobytes()))
