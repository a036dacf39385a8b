from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.config import (
    EU_BASE_URL,
    NA_BASE_URL,
    ConfigError,
    Secret,
    load_config,
    parse_config,
)

REPO = Path(__file__).resolve().parent.parent
PID = "00000000-0000-0000-0000-000000000000"


def problems(raw: Any, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, env or {})
    return info.value.problems


def test_three_keys_are_enough() -> None:
    config = parse_config({"projects": [{"id": PID}]}, {"LLAMA_CLOUD_API_KEY": "llx-env"})
    (project,) = config.projects
    assert project.id == PID
    assert project.name == PID
    assert project.base_url == NA_BASE_URL
    assert project.api_key.get() == "llx-env"
    assert project.page_size == 100
    assert config.listen_address == "0.0.0.0:9877"
    assert config.poll_interval_seconds == 60
    assert config.max_concurrency == 4
    assert config.max_retries == 5
    assert config.max_pages == 10000
    assert config.timeout_seconds == 30
    assert config.max_requests_per_second == 0  # no limit


def test_every_key_of_the_contract(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("llx-from-file\n")
    raw = {
        "llamacloud": {
            "base_url": EU_BASE_URL + "/",
            "api_key": "${MAIN_KEY}",
            "page_size": 50,
            "timeout_seconds": 5,
            "max_retries": 1,
            "max_pages": 20,
            "max_requests_per_second": 2.5,
        },
        "projects": [
            {
                "id": PID,
                "name": "production",
                "organization_id": "org-1",
                "api_key": "${PROD_KEY}",
                "base_url": "http://127.0.0.1:8080",
                "page_size": 10,
            },
            {"id": "p2", "api_key_file": str(key_file)},
            {"id": "p3"},
        ],
        "poll_interval_seconds": 30,
        "max_concurrency": 2,
        "web": {"listen_address": "127.0.0.1:9999"},
        "state": {"path": str(tmp_path / "state.db")},
    }
    config = parse_config(raw, {"MAIN_KEY": "llx-main", "PROD_KEY": "llx-prod"})
    p1, p2, p3 = config.projects
    assert (p1.name, p1.organization_id, p1.base_url, p1.page_size) == (
        "production",
        "org-1",
        "http://127.0.0.1:8080",
        10,
    )
    assert p1.api_key.get() == "llx-prod"
    assert p2.api_key.get() == "llx-from-file"
    assert (p3.api_key.get(), p3.base_url, p3.page_size) == ("llx-main", EU_BASE_URL, 50)
    assert config.max_pages == 20
    assert config.max_requests_per_second == 2.5
    assert config.max_concurrency == 2
    assert config.listen_address == "127.0.0.1:9999"
    assert config.state_path == str(tmp_path / "state.db")


def test_base_url_from_the_environment() -> None:
    env = {"LLAMA_CLOUD_API_KEY": "k", "LLAMA_CLOUD_BASE_URL": EU_BASE_URL}
    assert parse_config({"projects": [{"id": "p"}]}, env).projects[0].base_url == EU_BASE_URL


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
    assert "llamacloud.max_requests_per_second: must be greater than 0" in found
    assert "llamacloud.timout_seconds: unknown key (did you mean timeout_seconds?)" in found
    assert "projects[1].id: required" in found
    assert "projects[2].id: duplicate project id a" in found
    assert "projects[3]: must be a mapping with at least an id" in found
    assert "poll_interval_seconds: must be greater than 0" in found
    assert "max_concurrency: must be a whole number" in found
    assert "web.listen_address: must be HOST:PORT with a port from 0 to 65535" in found
    assert "extra: unknown key" in found


def test_missing_projects_and_keys() -> None:
    assert problems({}) == ["projects: required (a list with at least one project)"]
    found = problems({"projects": [{"id": "p"}]})
    assert found == [
        "projects[0].api_key: no API key (set projects[0].api_key, llamacloud.api_key "
        "or the LLAMA_CLOUD_API_KEY environment variable)"
    ]
    assert problems({"projects": [{"id": "p", "api_key": "${NOPE}"}]}) == [
        "projects[0].api_key: environment variable NOPE is not set",
        "projects[0].api_key: no API key (set projects[0].api_key, llamacloud.api_key "
        "or the LLAMA_CLOUD_API_KEY environment variable)",
    ]


def test_env_default_and_no_yaml_injection() -> None:
    config = parse_config(
        {"projects": [{"id": "p", "name": "${NAME:-fallback}", "api_key": "${KEY}"}]},
        {"KEY": "llx-a: {b: c}"},
    )
    assert config.projects[0].name == "fallback"
    assert config.projects[0].api_key.get() == "llx-a: {b: c}"


def test_api_key_and_file_together_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "k").write_text("x")
    found = problems(
        {"projects": [{"id": "p", "api_key": "a", "api_key_file": str(tmp_path / "k")}]}
    )
    assert found[0] == "projects[0].api_key_file: set api_key or api_key_file, not both"
    missing = problems({"projects": [{"id": "p", "api_key_file": str(tmp_path / "none")}]})
    assert missing[0].startswith("projects[0].api_key_file: cannot read")


def test_the_key_never_shows(tmp_path: Path) -> None:
    config = parse_config({"projects": [{"id": "p", "api_key": "llx-secret-123"}]}, {})
    assert "llx-secret-123" not in repr(config)
    assert "llx-secret-123" not in str(config.projects[0])
    assert "llx-secret-123" not in f"{Secret('llx-secret-123')}"


def test_invalid_yaml_and_unreadable_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("projects: [\n")
    with pytest.raises(ConfigError, match="invalid YAML at line"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_the_example_config_is_valid_and_complete() -> None:
    text = (REPO / "config.example.yaml").read_text()
    config = load_config(REPO / "config.example.yaml", {"LLAMA_CLOUD_API_KEY": "llx-x"})
    assert config.projects
    raw = yaml.safe_load(text)
    # Every key the contract names appears in the example.
    for key in ("base_url", "api_key", "page_size", "timeout_seconds", "max_retries", "max_pages"):
        assert key in raw["llamacloud"], key
    for key in ("poll_interval_seconds", "max_concurrency", "web", "state", "projects"):
        assert key in raw, key
    for key in ("api_key_file", "organization_id", "name"):
        assert key in text, key
