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
``tests/targets/test_sharding.py`` pins a few owners so that such a change shows.

Pure: no I/O, no environment. The :class:`~exporter.config.sharding.Shard` itself comes
from the command line or the config (:mod:`exporter.config.sharding`).
"""

from __future__ import annotations

import hashlib

from ..config.sharding import Shard, check_total

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


def owns(shard: Shard, project_id: str) -> bool:
    """Whether the replica of ``shard`` polls ``project_id``."""
    return shard.total == 1 or _jump(_key(project_id), shard.total) == shard.index


def owner(project_id: str, total: int) -> int:
    """The shard, from 0 to ``total`` - 1, that polls ``project_id``."""
    check_total(total)
    return _jump(_key(project_id), total)
