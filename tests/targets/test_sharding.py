"""Jump-hash sharding: every project on exactly one shard, balanced, stable across releases,
growing the shard count moves only what the new shard takes, and one hash per project."""

from __future__ import annotations

import hashlib
import random
import uuid
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.config import UNSHARDED, Shard, parse_shard, shard_from_hostname
from exporter.config.sharding import ordinal_from_hostname
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


# ----------------------------------------------------------------------------------- Shard


def test_shard_is_frozen_and_prints_as_index_slash_total() -> None:
    shard = Shard(2, 4)
    assert str(shard) == "2/4"
    assert str(UNSHARDED) == "0/1"
    with pytest.raises(AttributeError):
        shard.index = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("index", "total", "message"),
    [
        (0, 0, "shard total must be from 1 to 10000, got 0"),
        (3, 3, "shard index 3 is out of range for 3 shards: it must be from 0 to 2"),
        (-1, 2, "shard index -1 is out of range for 2 shards: it must be from 0 to 1"),
        (1, 1, "shard index 1 is out of range for 1 shard: it must be from 0 to 0"),
    ],
)
def test_shard_validates_index_and_total(index: int, total: int, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        Shard(index, total)
    assert str(caught.value) == message


def test_shard_wants_integers() -> None:
    with pytest.raises(TypeError, match="index must be an integer"):
        Shard("1", 2)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="total must be an integer"):
        Shard(0, True)


# ----------------------------------------------------------------------------- parse_shard


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0/3", Shard(0, 3)), ("2/4", Shard(2, 4)), ("0/1", UNSHARDED), (" 1 / 2 ", Shard(1, 2))],
)
def test_parse_shard(text: str, expected: Shard) -> None:
    assert parse_shard(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("3/3", "shard '3/3': INDEX must be from 0 to 2 (TOTAL - 1), got 3"),
        ("-1/2", "shard '-1/2': INDEX must be from 0 to 1 (TOTAL - 1), got -1"),
        ("0/0", "shard '0/0': TOTAL must be from 1 to 10000, got 0"),
        ("0/1000000000", "shard '0/1000000000': TOTAL must be from 1 to 10000, got 1000000000"),
        ("a/b", "shard 'a/b' is not INDEX/TOTAL with whole numbers, e.g. 0/3"),
        ("1", "shard '1' is not INDEX/TOTAL with whole numbers, e.g. 0/3"),
        ("", "shard '' is not INDEX/TOTAL with whole numbers, e.g. 0/3"),
        ("1/2/3", "shard '1/2/3' is not INDEX/TOTAL"),
        ("1.0/2", "shard '1.0/2' is not INDEX/TOTAL"),
    ],
)
def test_parse_shard_says_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_shard(text)
    assert str(caught.value).startswith(message), caught.value


@given(
    st.integers(min_value=1, max_value=10_000).flatmap(
        lambda n: st.tuples(st.just(n), st.integers(0, n - 1))
    )
)
def test_parse_shard_reads_what_str_writes(total_index: tuple[int, int]) -> None:
    total, index = total_index
    assert parse_shard(str(Shard(index, total))) == Shard(index, total)


# ------------------------------------------------------------------------------- hostnames


@pytest.mark.parametrize(
    ("hostname", "ordinal"),
    [
        ("llamacloud-exporter-2", 2),
        ("llamacloud-exporter-0", 0),
        ("llamacloud-exporter-2.llamacloud-exporter.monitoring.svc", 2),
        ("llamacloud-exporter-12.llamacloud-exporter.monitoring.svc.cluster.local", 12),
        ("llamacloud-exporter-b-3", 3),
        ("llamacloud-exporter-2\n", 2),  # as read from /etc/hostname
    ],
)
def test_ordinal_from_hostname(hostname: str, ordinal: int) -> None:
    assert ordinal_from_hostname(hostname) == ordinal


@pytest.mark.parametrize(
    "hostname",
    ["", "llamacloud-exporter", "llamacloud-exporter-", "7", "-2", "exporter-x2", "host.example-3"],
)
def test_ordinal_from_hostname_names_a_hostname_without_one(hostname: str) -> None:
    with pytest.raises(ValueError) as caught:
        ordinal_from_hostname(hostname)
    assert repr(hostname) in str(caught.value)
    assert "-<ordinal>" in str(caught.value)


@given(
    st.from_regex(r"[a-z]([a-z0-9-]{0,40}[a-z0-9])?", fullmatch=True),
    st.integers(min_value=0, max_value=10_000),
    st.sampled_from(["", ".llamacloud-exporter", ".llamacloud-exporter.monitoring.svc"]),
)
def test_ordinal_of_any_statefulset_pod_name(name: str, ordinal: int, domain: str) -> None:
    assert ordinal_from_hostname(f"{name}-{ordinal}{domain}") == ordinal


def test_shard_from_hostname() -> None:
    assert shard_from_hostname("llamacloud-exporter-2", 3) == Shard(2, 3)
    with pytest.raises(ValueError) as caught:
        shard_from_hostname("llamacloud-exporter-3", 3)
    message = str(caught.value)
    assert "'llamacloud-exporter-3' has ordinal 3" in message
    assert "only 3 shards" in message and "--shard.total" in message
    with pytest.raises(ValueError, match="from 1 to 10000"):
        shard_from_hostname("llamacloud-exporter-0", 0)
