"""config.sharding: this replica's shard, from ``sharding:``, ``--shard I/N`` or a
StatefulSet pod's hostname."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.config import UNSHARDED, Shard, parse_shard, shard_from_hostname
from exporter.config.sharding import ordinal_from_hostname
from tests.config.helpers import parsed, problems_with_key


def test_sharding_in_the_config() -> None:
    assert parsed(projects=[{"id": "p"}], sharding={"index": 2, "total": 3}).shard == Shard(2, 3)
    assert parsed(projects=[{"id": "p"}]).shard == Shard(0, 1)
    assert problems_with_key({"projects": [{"id": "p"}], "sharding": {"index": 3, "total": 3}}) == [
        "sharding.index: must be below sharding.total (3)"
    ]
    assert problems_with_key({"projects": [{"id": "p"}], "sharding": {"total": 0}}) == [
        "sharding.total: must be between 1 and 10000"
    ]


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
