"""targets.discovery: listed projects read and filtered, static entries first, and a
replica's share of them."""

from __future__ import annotations

import uuid
from typing import Any

from exporter.config import Shard
from exporter.targets.discovery import read_projects, replica_projects
from tests.config.helpers import parsed


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
