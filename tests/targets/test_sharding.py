"""targets.sharding: jump-hash sharding: every project on exactly one shard, balanced,
stable across releases, growing the shard count moves only what the new shard takes, and
one hash per project."""

from __future__ import annotations

import hashlib
import random
import uuid
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.config import UNSHARDED, Shard
from exporter.targets.sharding import owner, owns


def project_ids(count: int, seed: int = 20240601) -> list[str]:
    """Deterministic UUID-like project ids (the same in every run and process)."""
    rng = random.Random(seed)
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(count)]


PROJECTS = project_ids(1000)

# A project id is any string: UUIDs from the config or from discovery.
any_id = st.text(min_size=0, max_size=60)
totals = st.integers(min_value=1, max_value=40)


# ------------------------------------------------------------------------------ assignment


def test_every_project_is_on_exactly_one_of_four_shards_and_they_are_balanced() -> None:
    shards = [Shard(index, 4) for index in range(4)]
    per_shard: Counter[int] = Counter()
    for project in PROJECTS:
        owning = [shard.index for shard in shards if owns(shard, project)]
        assert owning == [owner(project, 4)], project
        per_shard[owning[0]] += 1
    assert sorted(per_shard) == [0, 1, 2, 3]
    # 250 each on average; a fair split of 1000 stays within +-50 with near certainty.
    assert all(200 <= count <= 300 for count in per_shard.values()), per_shard


def test_growing_from_four_to_five_shards_moves_only_what_the_new_shard_takes() -> None:
    moved = [p for p in PROJECTS if owner(p, 4) != owner(p, 5)]
    assert len(moved) <= 0.25 * len(PROJECTS), len(moved)  # about 1/5 is expected
    assert moved, "the new shard takes some projects"
    assert all(owner(p, 5) == 4 for p in moved), "a moved project moves to the new shard"


def test_modulo_assignment_would_move_most_projects() -> None:
    """Why a consistent hash: ``hash % N`` reassigns about 80 % of projects from 4 to 5 shards, and
    each moved project restarts its counters on another replica."""

    def modulo(project_id: str, total: int) -> int:
        digest = hashlib.blake2b(project_id.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") % total

    by_modulo = sum(modulo(p, 4) != modulo(p, 5) for p in PROJECTS)
    by_jump = sum(owner(p, 4) != owner(p, 5) for p in PROJECTS)
    assert by_modulo > 0.6 * len(PROJECTS), by_modulo
    assert by_jump < by_modulo / 3


def test_shrinking_moves_only_the_projects_of_the_removed_shard() -> None:
    for project in PROJECTS[:200]:
        if owner(project, 5) != 4:
            assert owner(project, 4) == owner(project, 5), project


# Owners of fixed ids for 2, 3, 4, 5 and 8 shards. A change of the assignment (the hash, its
# input, the jump) changes these, and would move nearly every project of every sharded
# deployment on upgrade: only change them on purpose, and say so in CHANGELOG.md.
GOLDEN = {
    "00000000-0000-0000-0000-000000000000": (1, 1, 1, 1, 1),
    "11111111-1111-1111-1111-111111111111": (1, 2, 3, 3, 3),
    "4f6d7c1e-2b3a-4c5d-8e9f-0a1b2c3d4e5f": (1, 2, 2, 2, 2),
    "9b2e4a61-7f3c-4d8e-a5b0-c1d2e3f4a5b6": (1, 2, 3, 3, 5),
    "e3a9c7d5-1b2f-4e6a-8c0d-f1e2d3c4b5a6": (1, 2, 2, 2, 2),
    "production": (1, 1, 3, 3, 7),
    "scratch-demo": (1, 1, 1, 1, 5),
}


@pytest.mark.parametrize(("project", "owners"), GOLDEN.items())
def test_owners_of_fixed_ids_never_change(project: str, owners: tuple[int, ...]) -> None:
    assert tuple(owner(project, total) for total in (2, 3, 4, 5, 8)) == owners


@given(any_id, totals)
def test_the_owner_is_one_of_the_shards(project: str, total: int) -> None:
    assert 0 <= owner(project, total) < total
    assert [owns(Shard(i, total), project) for i in range(total)].count(True) == 1


@given(any_id, totals)
def test_one_more_shard_keeps_a_project_or_gives_it_to_the_new_shard(
    project: str, total: int
) -> None:
    assert owner(project, total + 1) in {owner(project, total), total}


@given(any_id)
def test_a_single_shard_owns_everything(project: str) -> None:
    assert owner(project, 1) == 0
    assert owns(UNSHARDED, project)


def test_a_project_costs_one_hash_whatever_the_number_of_shards(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Choosing a replica's share of 100,000 projects over 100 shards must not stall discovery:
    one hash per project (rendezvous hashing took one per project and shard)."""
    import exporter.targets.sharding as sharding

    calls = 0
    real = hashlib.blake2b

    def counting(*args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(sharding.hashlib, "blake2b", counting)
    shard = Shard(7, 100)
    mine = [p for p in PROJECTS if owns(shard, p)]
    assert calls == len(PROJECTS)
    assert 0 < len(mine) < 30  # about 10 of 1000


def test_owner_rejects_a_total_below_one() -> None:
    with pytest.raises(ValueError, match="from 1 to 10000, got 0"):
        owner("p", 0)
