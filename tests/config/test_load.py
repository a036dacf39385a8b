"""config.load: a config file read, ${VAR} expanded, built into frozen settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.aggregate.indexes import Detail
from exporter.config import ConfigError, Secret, load_config, parse_config
from exporter.config.load import parse_yaml
from exporter.config.project import EU_BASE_URL, NA_BASE_URL
from exporter.config.schema import (
    ConfigFile,
    LlamaCloudSection,
    ProjectEntry,
    StateSection,
    WebSection,
)
from tests.config.helpers import ENV, KEY, PID, load_problems, problems
from tests.helpers import REPO


def test_three_keys_are_enough() -> None:
    config = parse_config({"projects": [{"id": PID}]}, {"LLAMA_CLOUD_API_KEY": "llx-env"})
    (project,) = config.projects
    assert project.id == PID
    assert project.name == ""  # llamacloud_project_info shows the id in its place
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


def test_a_missing_variable_is_named_in_a_loaded_file(tmp_path: Path) -> None:
    """The file's own text is blanked where it may hold a key; ``${VAR}`` holds none."""
    (tmp_path / "c.yaml").write_text(
        "llamacloud:\n  api_key: ${LLAMA_CLOUD_API_KEY}\nprojects:\n  - id: p\n"
    )
    assert load_problems(tmp_path / "c.yaml") == [
        "llamacloud.api_key: environment variable LLAMA_CLOUD_API_KEY is not set",
    ]
    (tmp_path / "c.yaml").write_text(f"llamacloud:\n  api_key: ${{K:-{KEY}}}\nprojects: 5\n")
    assert KEY[4:12] not in " ".join(load_problems(tmp_path / "c.yaml"))


def test_env_default_and_no_yaml_injection() -> None:
    config = parse_config(
        {"projects": [{"id": "p", "name": "${NAME:-fallback}", "api_key": "${KEY}"}]},
        {"KEY": "llx-a:{b:c},[d]"},
    )
    assert config.projects[0].name == "fallback"
    assert config.projects[0].api_key.get() == "llx-a:{b:c},[d]"


def test_an_unclosed_reference_repeated_expands_at_once() -> None:
    """``${a:-`` repeated with no ``}`` was quadratic to search: 400 KB of it held the
    interpreter (a reload included) for minutes. Now linear; the child's generous deadline
    is only there so that the old code fails instead of hanging the suite."""
    import subprocess
    import sys

    script = (
        "from exporter.config import parse_config\n"
        "text = '${B}' + '${a:-' * 80_000\n"
        "raw = {'projects': [{'id': 'p', 'name': text, 'api_key': 'k'}]}\n"
        "name = parse_config(raw, {'B': 'b'}).projects[0].name\n"
        "assert name == 'b' + '${a:-' * 80_000, name[:40]\n"
    )
    done = subprocess.run([sys.executable, "-c", script], timeout=60, capture_output=True)
    assert done.returncode == 0, done.stderr


def test_the_key_never_shows(tmp_path: Path) -> None:
    config = parse_config({"projects": [{"id": "p", "api_key": "llx-secret-123"}]}, {})
    assert "llx-secret-123" not in repr(config)
    assert "llx-secret-123" not in str(config.projects[0])
    assert "llx-secret-123" not in f"{Secret('llx-secret-123')}"


def test_the_example_config_is_valid_and_complete() -> None:
    text = (REPO / "config.example.yaml").read_text()
    config = load_config(REPO / "config.example.yaml", {"LLAMA_CLOUD_API_KEY": "llx-x"})
    assert config.projects
    raw = yaml.safe_load(text)
    # Every key the contract names appears in the example.
    for key in sorted(set(LlamaCloudSection.model_fields) - {"api_key_file"}):
        assert key in raw["llamacloud"], key
    defaults = parse_config({"projects": [{"id": "p", "api_key": "k"}]}, {})
    assert config.full_listing_every == defaults.full_listing_every
    assert config.incremental_overlap_seconds == defaults.incremental_overlap_seconds
    assert config.projects[0].listing == defaults.projects[0].listing
    for key in ("poll_interval_seconds", "max_concurrency", "web", "state", "projects"):
        assert key in raw, key
    for key in ("api_key_file", "organization_id", "name", "listing: full"):
        assert key in text, key


def test_listing_is_set_per_project_or_for_all() -> None:
    raw = {
        "llamacloud": {
            "api_key": "k",
            "listing": "full",
            "full_listing_every": 3,
            "incremental_overlap_seconds": 0,
        },
        "projects": [{"id": "a"}, {"id": "b", "listing": "auto"}, {"id": "c", "listing": 1}],
    }
    assert problems(raw) == ["projects[2].listing: must be one of auto, full"]
    del raw["projects"][2]
    config = parse_config(raw, {})
    assert [p.listing for p in config.projects] == ["full", "auto"]
    assert (config.full_listing_every, config.incremental_overlap_seconds) == (3, 0.0)
    defaults = parse_config({"projects": [{"id": "a", "api_key": "k"}]}, {})
    assert defaults.projects[0].listing == "auto"
    assert (defaults.full_listing_every, defaults.incremental_overlap_seconds) == (10, 300.0)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
KNOWN = st.sampled_from(
    sorted(
        {
            key
            for section in (ConfigFile, LlamaCloudSection, ProjectEntry, WebSection, StateSection)
            for key in section.model_fields
        }
    )
)
# Configs that look like configs: known keys at every level, values of any JSON type.
CONFIGS = st.recursive(
    JSON,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(KNOWN | st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(CONFIGS)
def test_any_structure_is_a_config_or_a_config_error(raw: Any) -> None:
    try:
        config = parse_config(raw, {"LLAMA_CLOUD_API_KEY": "llx-env"})
    except ConfigError as exc:
        assert exc.problems
        for problem in exc.problems:
            problem.encode("utf-8")  # printable as it is
    else:
        assert config.projects or config.discovery is not None  # discovery alone is a config


YAML_PIECES = st.lists(
    st.sampled_from(
        [
            *"{}[]:&*!-,'\"\n #|>?%@`\t.0",
            "a",
            "&a ",
            "*a",
            "!!binary ",
            "!!set ",
            "!!omap ",
            "!!python/tuple ",
            "<<: ",
            "api_key: ",
            "llx-",
            "2026-13-45",
            "1e999",
            "~",
            "projects: ",
        ]
    ),
    max_size=60,
).map("".join)


@settings(deadline=None)
@given(st.text(max_size=300) | YAML_PIECES | CONFIGS.map(lambda raw: yaml.safe_dump(raw)))
def test_any_yaml_text_is_a_config_or_a_config_error(text: str) -> None:
    try:
        raw = parse_yaml(text)
        parse_config(raw, {"LLAMA_CLOUD_API_KEY": "llx-env"})
    except ConfigError as exc:
        assert exc.problems


def test_messages_say_where_each_key_came_from(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("llx-from-file\n")
    raw = {
        "llamacloud": {"api_key_file": str(key_file)},
        "projects": [{"id": "a"}, {"id": "b", "api_key": "llx-own"}],
    }
    a, b = parse_config(raw, {}).projects
    assert a.key_source == "llamacloud.api_key_file in the config"
    assert b.key_source == "projects[1].api_key in the config"
    (env,) = parse_config({"projects": [{"id": "c"}]}, {"LLAMA_CLOUD_API_KEY": "llx-e"}).projects
    assert env.key_source == "the LLAMA_CLOUD_API_KEY environment variable"


def test_the_example_config_spells_out_the_built_in_classes() -> None:
    """config.example.yaml shows the classes a config without error_classes gets."""
    example = load_config(REPO / "config.example.yaml", ENV)
    shown = [(c.name, c.match.pattern) for c in example.detail.error_classes]
    assert shown == [(c.name, c.match.pattern) for c in Detail().error_classes]
    assert example.detail.max_index_series == Detail().max_index_series
