"""This replica's shard, as the command line or ``sharding:`` gives it: ``I/N``, or the
ordinal of a StatefulSet pod."""

from __future__ import annotations

import re
from dataclasses import dataclass

# More shards than this is a typo.
MAX_SHARDS = 10_000
# "I/N", both whole numbers; a sign is accepted here so that "-1/2" is told its index is out
# of range rather than that it is not a number.
_SHARD = re.compile(r"\s*([+-]?[0-9]+)\s*/\s*([+-]?[0-9]+)\s*")


_ORDINAL = re.compile(r"[0-9]+")


def check_total(total: int) -> None:
    if isinstance(total, bool) or not isinstance(total, int):
        raise TypeError(f"shard total must be an integer, got {total!r}")
    if not 1 <= total <= MAX_SHARDS:
        raise ValueError(f"shard total must be from 1 to {MAX_SHARDS}, got {total}")


@dataclass(frozen=True)
class Shard:
    """This replica's shard: ``index`` from 0 to ``total`` - 1."""

    index: int = 0
    total: int = 1

    def __post_init__(self) -> None:
        check_total(self.total)
        if isinstance(self.index, bool) or not isinstance(self.index, int):
            raise TypeError(f"shard index must be an integer, got {self.index!r}")
        if not 0 <= self.index < self.total:
            raise ValueError(
                f"shard index {self.index} is out of range for {self.total} "
                f"shard{'s' if self.total != 1 else ''}: it must be from 0 to {self.total - 1}"
            )

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
    check_total(total)
    if ordinal >= total:
        raise ValueError(
            f"hostname {hostname!r} has ordinal {ordinal}, but there are only {total} "
            f"shard{'s' if total != 1 else ''} (0 to {total - 1}): the StatefulSet's replicas "
            "and --shard.total must be changed together"
        )
    return Shard(ordinal, total)
