"""Sharding: which replica polls which project, so that N exporters split the projects.

Jump consistent hashing (Lamping and Veach, 2014): a 64-bit hash of the project id seeds a
short pseudo-random walk over the shard numbers, and where the walk leaves ``range(total)``
is the owner. Every replica computes the same answer from the project id and the shard total
alone, with no coordination. Going from N to N + 1 shards moves only the projects the new
shard takes, about 1/(N + 1) of them, where ``hash % N`` would move most of them (and with
them their counters and state); going back moves only the last shard's. Shards are numbered
0 to N - 1, as a StatefulSet's pods are, which is the one shape jump hashing needs.

It costs one hash and about ln(N) steps per project, where rendezvous hashing costs one
hash per project *and shard*: at 100,000 projects over 100 shards, a fraction of a second
instead of a quarter of a minute.

The hash must be the same in every process and every release: Python's ``hash()`` is salted
per process, so this uses BLAKE2b. Changing it moves almost every project on upgrade;
``tests/test_sharding.py`` pins a few owners so that such a change shows.

Pure: no I/O, no environment. The CLI reads ``--shard I/N``, ``--shard.from-hostname`` with
``--shard.total N``, or the config's ``sharding:`` and builds a :class:`Shard` from here.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

__all__ = [
    "UNSHARDED",
    "Shard",
    "ordinal_from_hostname",
    "owner",
    "parse_shard",
    "shard_from_hostname",
]

# "I/N", both whole numbers; a sign is accepted here so that "-1/2" is told its index is out
# of range rather than that it is not a number.
# More shards than this is a typo (each project is hashed once per shard).
MAX_SHARDS = 10_000
_SHARD = re.compile(r"\s*([+-]?[0-9]+)\s*/\s*([+-]?[0-9]+)\s*")
_ORDINAL = re.compile(r"[0-9]+")


_MASK = (1 << 64) - 1


def _key(project_id: str) -> int:
    """BLAKE2b-64 of the id in UTF-8, read as a big-endian unsigned integer."""
    data = project_id.encode("utf-8")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def _jump(key: int, total: int) -> int:
    """Lamping and Veach's jump consistent hash of a 64-bit ``key`` into ``range(total)``."""
    bucket, jump = -1, 0
    while jump < total:
        bucket = jump
        key = (key * 2862933555777941757 + 1) & _MASK
        jump = int((bucket + 1) * (2147483648.0 / ((key >> 33) + 1)))
    return bucket


def _check_total(total: int) -> None:
    if isinstance(total, bool) or not isinstance(total, int):
        raise TypeError(f"shard total must be an integer, got {total!r}")
    if not 1 <= total <= MAX_SHARDS:
        raise ValueError(f"shard total must be from 1 to {MAX_SHARDS}, got {total}")


def owner(project_id: str, total: int) -> int:
    """The shard, from 0 to ``total`` - 1, that polls ``project_id``."""
    _check_total(total)
    return _jump(_key(project_id), total)


@dataclass(frozen=True)
class Shard:
    """This replica's shard: ``index`` from 0 to ``total`` - 1."""

    index: int = 0
    total: int = 1

    def __post_init__(self) -> None:
        _check_total(self.total)
        if isinstance(self.index, bool) or not isinstance(self.index, int):
            raise TypeError(f"shard index must be an integer, got {self.index!r}")
        if not 0 <= self.index < self.total:
            raise ValueError(
                f"shard index {self.index} is out of range for {self.total} "
                f"shard{'s' if self.total != 1 else ''}: it must be from 0 to {self.total - 1}"
            )

    def owns(self, project_id: str) -> bool:
        """Whether this replica polls ``project_id``."""
        return self.total == 1 or _jump(_key(project_id), self.total) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.total}"


UNSHARDED = Shard(0, 1)


def parse_shard(text: str) -> Shard:
    """A shard written as ``I/N`` (``--shard 2/4``: the third of four shards)."""
    match = _SHARD.fullmatch(text)
    if match is None:
        raise ValueError(
            f"shard {text!r} is not INDEX/TOTAL with whole numbers, e.g. 0/3 "
            "(the first of three shards)"
        )
    index, total = int(match[1]), int(match[2])
    if not 1 <= total <= MAX_SHARDS:
        raise ValueError(f"shard {text!r}: TOTAL must be from 1 to {MAX_SHARDS}, got {total}")
    if not 0 <= index < total:
        raise ValueError(
            f"shard {text!r}: INDEX must be from 0 to {total - 1} (TOTAL - 1), got {index}"
        )
    return Shard(index, total)


def ordinal_from_hostname(hostname: str) -> int:
    """The ordinal of a StatefulSet pod from its hostname: ``llamacloud-exporter-2`` is 2.

    Only the first label counts, so a fully qualified name
    (``llamacloud-exporter-2.llamacloud-exporter.monitoring.svc``) works too.
    """
    label = hostname.strip().split(".", 1)[0]
    name, dash, digits = label.rpartition("-")
    if not (name and dash and _ORDINAL.fullmatch(digits)):
        raise ValueError(
            f"hostname {hostname!r} does not end in -<ordinal> like a StatefulSet pod's "
            "(llamacloud-exporter-2); use --shard I/N instead of --shard.from-hostname"
        )
    return int(digits)


def shard_from_hostname(hostname: str, total: int) -> Shard:
    """The shard of a StatefulSet pod: its ordinal, out of ``total`` (``--shard.total``)."""
    ordinal = ordinal_from_hostname(hostname)
    _check_total(total)
    if ordinal >= total:
        raise ValueError(
            f"hostname {hostname!r} has ordinal {ordinal}, but there are only {total} "
            f"shard{'s' if total != 1 else ''} (0 to {total - 1}): the StatefulSet's replicas "
            "and --shard.total must be changed together"
        )
    return Shard(ordinal, total)
