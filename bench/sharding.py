"""Choosing a replica's projects: 100,000 discovered projects over 100 shards.

``replica_projects`` runs at every discovery (off the event loop); it must stay well under a
second at this size. Baselines in the same process: one bare BLAKE2b per project id (the
floor: a hash each), and the rendezvous hashing this replaced (a hash per project and shard),
timed on a sample and scaled.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Sequence
from random import Random

from bench.common import table
from bench.targets import Outcome, Target, report, standalone
from exporter.config import ProjectConfig, Secret, Shard
from exporter.targets.discovery import replica_projects

PROJECTS, SHARDS, RENDEZVOUS_SAMPLE = 100_000, 100, 2_000


def _rendezvous(project_id: str, total: int) -> int:
    """The assignment before jump hashing: the shard of highest BLAKE2b weight."""
    best, best_weight = 0, -1
    for index in range(total):
        data = index.to_bytes(8, "big") + project_id.encode()
        weight = int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")
        if weight > best_weight:
            best, best_weight = index, weight
    return best


def _cpu(fn: object, *args: object) -> float:
    started = time.process_time()
    fn(*args)  # type: ignore[operator]
    return time.process_time() - started


def run(quick: bool = False) -> Outcome:
    count = PROJECTS // 10 if quick else PROJECTS
    rng = Random(20261201)
    ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(count)]
    template = ProjectConfig("t", "t", "", "https://api.test", 100, Secret("llx-bench"))
    projects = [
        ProjectConfig(pid, pid, "", template.base_url, 100, template.api_key) for pid in ids
    ]
    shard = Shard(SHARDS // 2, SHARDS)
    kept: list[int] = []
    share = min(
        _cpu(lambda: kept.append(len(replica_projects((), projects, shard)))) for _ in range(3)
    )
    floor = min(
        _cpu(lambda: [hashlib.blake2b(p.encode(), digest_size=8).digest() for p in ids])
        for _ in range(3)
    )
    sample = ids[:RENDEZVOUS_SAMPLE]
    old = _cpu(lambda: [_rendezvous(p, SHARDS) for p in sample]) * count / len(sample)
    limit = 0.1 if quick else 1.0
    print(f"\n## Sharding: {count:,} projects over {SHARDS} shards\n")
    rows = [
        ["one BLAKE2b per project id (floor)", f"{floor:.3f}", "1.00x"],
        [
            f"`replica_projects` (jump hash), {kept[0]:,} kept",
            f"{share:.3f}",
            f"{share / floor:.2f}x",
        ],
        [f"rendezvous hashing (scaled from {len(sample):,})", f"{old:.1f}", f"{old / floor:.0f}x"],
    ]
    print(table([f"{count:,} projects, {SHARDS} shards", "CPU s", "vs one hash per project"], rows))
    print()
    return report(
        Target(
            f"a shard's share of {count:,} projects over {SHARDS} shards under {limit:g} s of CPU",
            share < limit,
            f"{share:.3f} s ({old / share:.0f}x less than rendezvous hashing)",
        )
    )


def main(argv: Sequence[str] | None = None) -> int:
    return standalone("sharding", "sharding benchmark", argv, run)


if __name__ == "__main__":
    raise SystemExit(main())
