"""config.discovery: the ``discovery:`` section, its filters and its key."""

from __future__ import annotations

from typing import Any

import pytest

from tests.config.helpers import ENV, parsed, problems_with_key
from tests.helpers import BACKTRACKING, WORDS, python_in_a_child


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
