"""config.schema: every key of config.yaml, its type, bounds and default; every problem
with its key path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from exporter.config import parse_config
from tests.aggregate.helpers import detail
from tests.config.helpers import ENV, detail_problems, problems


def test_every_problem_is_reported_with_its_key_path() -> None:
    found = problems(
        {
            "llamacloud": {
                "page_size": 0,
                "max_retries": "3",
                "timout_seconds": 3,
                "max_requests_per_second": -1,
            },
            "projects": [{"id": "a"}, {"name": "no id"}, {"id": "a"}, "b"],
            "poll_interval_seconds": -1,
            "max_concurrency": True,
            "web": {"listen_address": "nowhere"},
            "extra": 1,
        },
        {"LLAMA_CLOUD_API_KEY": "k"},
    )
    assert "llamacloud.page_size: must be between 1 and 1000" in found
    assert "llamacloud.max_retries: must be a whole number" in found
    assert (
        "llamacloud.max_requests_per_second: must be 0 (no limit) or a number greater than 0 "
        "and at most 10000"
    ) in found
    assert "llamacloud.timout_seconds: unknown key (did you mean timeout_seconds?)" in found
    assert "projects[1].id: required" in found
    assert "projects[2].id: duplicate project id a" in found
    assert "projects[3]: must be a mapping with at least an id" in found
    assert "poll_interval_seconds: must be greater than 0 and at most 86400" in found
    assert "max_concurrency: must be a whole number" in found
    assert "web.listen_address: must be HOST:PORT with a port from 0 to 65535" in found
    assert "extra: unknown key" in found


def test_missing_projects_and_keys() -> None:
    assert problems({}) == ["projects: required (a list with at least one project, or discovery)"]
    found = problems({"projects": [{"id": "p"}]})
    assert found == [
        "projects[0].api_key: no API key (set projects[0].api_key, llamacloud.api_key "
        "or the LLAMA_CLOUD_API_KEY environment variable)"
    ]
    assert problems({"projects": [{"id": "p", "api_key": "${NOPE}"}]}) == [
        "projects[0].api_key: environment variable NOPE is not set",
    ]


def test_api_key_and_file_together_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "k").write_text("x")
    found = problems(
        {"projects": [{"id": "p", "api_key": "a", "api_key_file": str(tmp_path / "k")}]}
    )
    assert found[0] == "projects[0].api_key_file: set api_key or api_key_file, not both"
    missing = problems({"projects": [{"id": "p", "api_key_file": str(tmp_path / "none")}]})
    assert missing[0].startswith("projects[0].api_key_file: cannot read")


@pytest.mark.parametrize("key", ["llx-ключ-0123456789", "llx-a b", "llx-\x00zero"])
def test_a_key_that_cannot_go_in_a_header_is_a_config_error(key: str) -> None:
    found = problems({"projects": [{"id": "p", "api_key": key}]})
    assert found[0].startswith("projects[0].api_key: an API key is printable ASCII")
    assert key not in " ".join(found)
    found = problems({"projects": [{"id": "p"}]}, {"LLAMA_CLOUD_API_KEY": key})
    assert found[0].startswith("LLAMA_CLOUD_API_KEY: an API key is printable ASCII")


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("timeout_seconds", 1e300, "greater than 0 and at most 600"),
        ("timeout_seconds", 10**400, "greater than 0 and at most 600"),
        ("timeout_seconds", float("nan"), "greater than 0 and at most 600"),
        ("max_response_bytes", 10**12, "between 1024 and 1073741824"),
        ("full_listing_every", 0, "between 1 and 1000000"),
        ("full_listing_every", 2.5, "a whole number"),
        ("incremental_overlap_seconds", -1, "between 0 and 86400"),
        ("incremental_overlap_seconds", float("nan"), "between 0 and 86400"),
        ("incremental_overlap_seconds", "5m", "a number of seconds, without a unit (got '5m')"),
        ("listing", "sometimes", "one of auto, full"),
    ],
)
def test_numbers_are_bounded(key: str, value: Any, problem: str) -> None:
    found = problems({"llamacloud": {key: value}, "projects": [{"id": "p", "api_key": "k"}]})
    assert found == [f"llamacloud.{key}: must be {problem}"]


def test_poll_interval_is_bounded() -> None:
    found = problems({"poll_interval_seconds": 1e300, "projects": [{"id": "p", "api_key": "k"}]})
    assert found == ["poll_interval_seconds: must be greater than 0 and at most 86400"]


@pytest.mark.parametrize(
    "url",
    ["https://user:pw@api.test", "https://api.test/?x=1", "https://api.test/#f", "http://[::1"],
)
def test_base_urls_that_cannot_be_used_are_config_errors(url: str) -> None:
    found = problems({"llamacloud": {"base_url": url}, "projects": [{"id": "p", "api_key": "k"}]})
    assert found[0].startswith("llamacloud.base_url: must")
    assert url not in found[0]


# ------------------------------------------------------------------------------ detail


def test_defaults_cap_indexes_at_20_and_ship_common_error_classes() -> None:
    config = parse_config({"projects": [{"id": "p"}]}, ENV)
    assert config.detail.max_index_series == 20
    assert config.detail.class_names[-1] == "other"
    assert {"timeout", "rate_limit"} <= set(config.detail.class_names)
    assert detail(error_classes=[]).class_names == ("other",)


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (
            {"error_classes": [{"name": "bad", "match": "(unclosed"}]},
            "detail.error_classes[0].match: invalid regular expression (RE2 syntax, as in "
            "Prometheus): missing ): (unclosed",
        ),
        ({"error_classes": [{"name": "x"}]}, "detail.error_classes[0].match: required"),
        (
            {"error_classes": [{"name": "Timeout!", "match": "t"}]},
            "detail.error_classes[0].name: must be a lowercase word",
        ),
        ({"error_classes": [{"name": "other", "match": "t"}]}, "name: other is reserved"),
        (
            {"error_classes": [{"name": "other\n", "match": "t"}]},
            "detail.error_classes[0].name: must be a lowercase word",
        ),
        (
            {"error_classes": [{"name": "a", "match": "x"}, {"name": "a", "match": "y"}]},
            "detail.error_classes[1].name: duplicate class a",
        ),
        (
            {"error_classes": [{"name": "a", "match": "x", "regex": "y"}]},
            "detail.error_classes[0].regex: unknown key",
        ),
        ({"error_classes": "timeout"}, "detail.error_classes: must be a list"),
        ({"max_index_series": -1}, "detail.max_index_series: must be between 0 and 1000"),
        ({"max_index_series": "20"}, "detail.max_index_series: must be a whole number"),
        ({"max_index_sereis": 5}, "detail.max_index_sereis: unknown key"),
    ],
)
def test_bad_detail_is_a_config_error_with_its_key_path(raw: dict[str, Any], problem: str) -> None:
    found = detail_problems(**raw)
    assert any(p.startswith(problem) or problem in p for p in found), found


def test_a_repeated_class_name_is_said_even_when_the_first_class_has_a_problem() -> None:
    """Every problem at once: the broken expression and the name used twice."""
    found = detail_problems(
        error_classes=[{"name": "a", "match": "("}, {"name": "a", "match": "x"}]
    )
    assert found == [
        "detail.error_classes[0].match: invalid regular expression (RE2 syntax, as in "
        "Prometheus): missing ): (",
        "detail.error_classes[1].name: duplicate class a",
    ]


def test_the_detail_section_reports_every_problem_at_once() -> None:
    problems = detail_problems(
        max_index_series=1.5, error_classes=[{"name": "a", "match": "["}, "b"]
    )
    assert len(problems) == 3, problems
