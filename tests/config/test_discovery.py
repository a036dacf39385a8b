"""Discovery's pure parts: the config section, reading listed projects, a replica's share."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from exporter.config import ConfigError, Shard, parse_config
from exporter.targets.discovery import read_projects, replica_projects
from tests.helpers import BACKTRACKING, WORDS, python_in_a_child

ENV = {"LLAMA_CLOUD_API_KEY": "llx-k"}


def parsed(**top: Any) -> Any:
    return parse_config(top, ENV)


def problems_with_key(raw: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, ENV if env is None else env)
    return info.value.problems


def test_discovery_alone_is_a_config() -> None:
    c = parsed(discovery={"organization_id": "org-1"})
    assert c.projects == ()
    assert c.discovery is not None
    assert (c.discovery.organization_id, c.discovery.interval_seconds) == ("org-1", 600.0)
    assert c.discovery.wants("anything")
    # Discovered projects take the llamacloud section's settings.
    c = parsed(
        llamacloud={"base_url": "http://127.0.0.1:1", "page_size": 7, "listing": "full"},
        discovery={},
    )
    assert c.discovery is not None
    t = c.discovery.template
    assert (t.base_url, t.page_size, t.listing, t.api_key.get()) == (
        "http://127.0.0.1:1",
        7,
        "full",
        "llx-k",
    )


def test_include_and_exclude_search_the_name() -> None:
    c = parsed(discovery={"include": "^prod|^staging", "exclude": "-old$"})
    assert c.discovery is not None
    wants = c.discovery.wants
    assert wants("production") and wants("staging-eu")
    assert not wants("research") and not wants("production-old")


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        ({"include": "(unclosed"}, "discovery.include: invalid regular expression (RE2 syntax"),
        (
            {"include": "^prod(?!-old)"},
            "discovery.include: invalid regular expression (RE2 syntax, as in Prometheus): "
            "invalid perl operator: (?!",
        ),
        (
            {"exclude": r"^(\w+)-\1$"},
            "discovery.exclude: invalid regular expression (RE2 syntax, as in Prometheus): "
            r"invalid escape sequence: \1",
        ),
        ({"exclude": 5}, "discovery.exclude: must be a regular expression"),
        ({"interval_seconds": 0}, "discovery.interval_seconds: must be between 1 and 86400"),
        ({"interval_seconds": "10m"}, "discovery.interval_seconds: must be a number"),
        ({"organization_id": 7}, "discovery.organization_id: must be a string"),
        ({"organisation_id": "x"}, "discovery.organisation_id: unknown key"),
    ],
)
def test_bad_discovery_names_the_key(section: dict[str, Any], problem: str) -> None:
    found = problems_with_key({"discovery": section})
    assert any(p.startswith(problem) for p in found), found


def test_a_backtracking_filter_reads_a_long_name_at_once() -> None:
    """Names are searched up to 1024 characters: in Python's re this include never ends; in
    RE2 it is linear. A child process, so that a hang fails the test."""
    name = WORDS[:1024]
    code = f"""
from exporter.config import parse_config
from exporter.targets.discovery import read_projects
for key in ("include", "exclude"):
    c = parse_config({{"discovery": {{key: {BACKTRACKING!r}}}}}, {ENV!r})
    items = [{{"id": "a", "name": {name!r}}}, {{"id": "b", "name": "prod: timeout"}}]
    print(key, *(p.id for p in read_projects(items, c.discovery)[0]))
"""
    assert python_in_a_child(code).splitlines() == ["include b", "exclude a"]


def test_discovery_settings_compare_by_their_expressions() -> None:
    """A reload compares them: the same text is the same setting, however often compiled."""
    settings = {"include": "^prod", "exclude": "-old$"}
    first, again = parsed(discovery=settings).discovery, parsed(discovery=settings).discovery
    assert first == again and hash(first.include) == hash(again.include)
    assert parsed(discovery={**settings, "include": "^staging"}).discovery != first


def test_discovery_needs_a_key_of_its_own() -> None:
    found = problems_with_key({"discovery": {}, "projects": [{"id": "p", "api_key": "llx-p"}]}, {})
    assert found == [
        "discovery: lists projects with llamacloud.api_key (or api_key_file, or the "
        "LLAMA_CLOUD_API_KEY environment variable): set one"
    ]


def test_sharding_in_the_config() -> None:
    assert parsed(projects=[{"id": "p"}], sharding={"index": 2, "total": 3}).shard == Shard(2, 3)
    assert parsed(projects=[{"id": "p"}]).shard == Shard(0, 1)
    assert problems_with_key({"projects": [{"id": "p"}], "sharding": {"index": 3, "total": 3}}) == [
        "sharding.index: must be below sharding.total (3)"
    ]
    assert problems_with_key({"projects": [{"id": "p"}], "sharding": {"total": 0}}) == [
        "sharding.total: must be between 1 and 10000"
    ]


def template() -> Any:
    c = parsed(discovery={"exclude": "^scratch-"})
    assert c.discovery is not None
    return c.discovery


def test_listed_projects_are_read_and_filtered() -> None:
    discovery = template()
    items = [
        {"id": "p1", "name": "production", "organization_id": "org-1", "is_default": True},
        {"id": "p2", "name": "scratch-2", "organization_id": "org-1"},  # excluded
        {"id": "p3", "name": "", "organization_id": None},  # unnamed: its id is its name
        {"id": "p1", "name": "again"},  # a repeated id
        {"id": "", "name": "x"},
        {"id": 5, "name": "x"},
        {"id": "p4", "name": None},
        {"id": "p5", "name": "x", "organization_id": 1},
        "not an object",
    ]
    projects, invalid = read_projects(items, discovery)
    assert [(p.id, p.name, p.organization_id) for p in projects] == [
        ("p1", "production", "org-1"),
        ("p3", "p3", ""),
    ]
    assert invalid == 6
    assert projects[0].api_key == discovery.template.api_key


def test_a_static_entry_wins_over_a_discovered_one() -> None:
    c = parsed(projects=[{"id": "p1", "name": "mine", "api_key": "llx-own"}], discovery={})
    assert c.discovery is not None
    discovered, _ = read_projects(
        [{"id": "p1", "name": "listed"}, {"id": "p2", "name": "other"}], c.discovery
    )
    merged = replica_projects(c.projects, discovered)
    assert [(p.id, p.name, p.api_key.get()) for p in merged] == [
        ("p1", "mine", "llx-own"),
        ("p2", "other", "llx-k"),
    ]


def test_1000_projects_over_4_replicas_each_exactly_once() -> None:
    discovery = template()
    ids = [str(uuid.UUID(int=n * 7919 + 1)) for n in range(1000)]
    listed, _ = read_projects(
        [{"id": pid, "name": f"p{n}"} for n, pid in enumerate(ids)], discovery
    )
    static = listed[:10]  # static entries are sharded too
    shares = [replica_projects(static, listed, Shard(i, 4)) for i in range(4)]
    polled = [p.id for share in shares for p in share]
    assert sorted(polled) == sorted(ids)  # every project, each on one replica
    assert all(200 <= len(share) <= 300 for share in shares), [len(s) for s in shares]
    grown = [replica_projects(static, listed, Shard(i, 5)) for i in range(5)]
    before = {p.id: i for i, share in enumerate(shares) for p in share}
    after = {p.id: i for i, share in enumerate(grown) for p in share}
    moved = [pid for pid in ids if before[pid] != after[pid]]
    assert len(moved) <= 250
    assert all(after[pid] == 4 for pid in moved)  # only to the new replica
