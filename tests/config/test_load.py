from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
from tests.helpers import REPO

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
        "projects[0].api_key: no API key (set projects[0].api_key, llamacloud.api_key "
        "or the LLAMA_CLOUD_API_KEY environment variable)",
    ]


def test_a_missing_variable_is_named_in_a_loaded_file(tmp_path: Path) -> None:
    """The file's own text is blanked where it may hold a key; ``${VAR}`` holds none."""
    (tmp_path / "c.yaml").write_text(
        "llamacloud:\n  api_key: ${LLAMA_CLOUD_API_KEY}\nprojects:\n  - id: p\n"
    )
    assert load_problems(tmp_path / "c.yaml") == [
        "llamacloud.api_key: environment variable LLAMA_CLOUD_API_KEY is not set",
        "projects[0].api_key: no API key (set projects[0].api_key, llamacloud.api_key "
        "or the LLAMA_CLOUD_API_KEY environment variable)",
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


# ------------------------------------------------------------ hostile and mistaken configs

KEY = "llx-Zq8mW2xVb7Kp4Rt9Ls3Nd6Hf1Gj5Yc0Ue"

# 554 bytes of anchors that expand to 10**9 values when walked.
ALIAS_BOMB = """a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
projects: [{id: p, api_key: k}]
"""


def load_problems(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, env or {})
    return info.value.problems


def test_a_yaml_alias_bomb_is_refused(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(ALIAS_BOMB)
    assert load_problems(tmp_path / "c.yaml") == [
        "config: expands to more than 1000000 values (YAML aliases)"
    ]


def test_aliases_within_bounds_still_work(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(
        "defaults: &d {api_key: llx-shared, page_size: 50}\n"
        "projects:\n  - {<<: *d, id: a}\n  - {<<: *d, id: b}\n"
    )
    with pytest.raises(ConfigError, match=r"^defaults: unknown key"):
        load_config(tmp_path / "c.yaml", {})
    (tmp_path / "c.yaml").write_text(
        "projects:\n  - &a {api_key: llx-shared, page_size: 50, id: a}\n  - {<<: *a, id: b}\n"
    )
    config = load_config(tmp_path / "c.yaml", {})
    assert [(p.id, p.page_size) for p in config.projects] == [("a", 50), ("b", 50)]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("a: &a [*a]\n", "config: a YAML alias refers to itself"),
        ("a: " + "[" * 200 + "]" * 200 + "\n", "config: nested deeper than 64 levels"),
        ("a: " + "[" * 5000 + "]" * 5000 + "\n", "config: nested deeper than 64 levels"),
        ("when: 2026-13-45\n", "config: invalid YAML: a value cannot be read"),
        (
            "projects: [\n",
            "config: invalid YAML at line 2, column 1: expected the node content, but found",
        ),
    ],
)
def test_odd_yaml_is_a_config_error(tmp_path: Path, text: str, problem: str) -> None:
    (tmp_path / "c.yaml").write_text(text)
    found = load_problems(tmp_path / "c.yaml")
    assert found[0].startswith(problem)


def test_a_fifo_or_a_device_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "key"
    os.mkfifo(fifo)  # nobody writes: opening it blocking would hang for good
    found = problems({"projects": [{"id": "p", "api_key_file": str(fifo)}]})
    assert found == ["projects[0].api_key_file: cannot read the key file: not a regular file"]
    found = problems({"projects": [{"id": "p", "api_key_file": "/dev/zero"}]})
    assert found == ["projects[0].api_key_file: cannot read the key file: not a regular file"]
    assert load_problems(fifo) == [f"config: cannot read {fifo}: not a regular file"]


def test_a_key_file_or_a_config_too_large_is_refused(tmp_path: Path) -> None:
    (tmp_path / "key").write_bytes(b"k" * (64 * 1024 + 1))
    found = problems({"projects": [{"id": "p", "api_key_file": str(tmp_path / "key")}]})
    assert found == ["projects[0].api_key_file: cannot read the key file: larger than 65536 bytes"]
    (tmp_path / "c.yaml").write_bytes(b"#" * (4 * 1024 * 1024 + 1))
    assert load_problems(tmp_path / "c.yaml") == [
        f"config: cannot read {tmp_path / 'c.yaml'}: larger than 4194304 bytes"
    ]


def test_a_config_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    head = f"projects: [{{id: p, api_key: {KEY}}}]\nname: ".encode()
    (tmp_path / "c.yaml").write_bytes(head + b"\xff\n")
    found = load_problems(tmp_path / "c.yaml")
    assert found == [f"config: not UTF-8 text (an invalid byte at offset {len(head)})"]


def test_a_key_pasted_into_api_key_file_is_never_echoed(tmp_path: Path) -> None:
    found = problems({"projects": [{"id": "p", "api_key_file": KEY}]})
    assert found == [
        "projects[0].api_key_file: cannot read the key file: No such file or directory"
    ]
    (tmp_path / "c.yaml").write_text(f"projects:\n  - id: p\n    api_key_file: {KEY}\n")
    assert KEY[4:12] not in " ".join(load_problems(tmp_path / "c.yaml"))


def test_a_yaml_error_never_quotes_a_key(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(f"projects:\n  - id: p\n    api_key: *{KEY}\n")
    found = load_problems(tmp_path / "c.yaml")
    assert found[0].startswith("config: invalid YAML at line 3")
    assert KEY[4:12] not in found[0]


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
        ("incremental_overlap_seconds", "5m", "a number"),
        ("listing", "sometimes", "one of auto, full"),
    ],
)
def test_numbers_are_bounded(key: str, value: Any, problem: str) -> None:
    found = problems({"llamacloud": {key: value}, "projects": [{"id": "p", "api_key": "k"}]})
    assert found == [f"llamacloud.{key}: must be {problem}"]


NUMBERS = {
    "page_size": "a whole number",
    "max_retries": "a whole number",
    "max_pages": "a whole number",
    "max_response_bytes": "a whole number",
    "full_listing_every": "a whole number",
    "timeout_seconds": "a number",
    "incremental_overlap_seconds": "a number",
}


@pytest.mark.parametrize("value", ["100", True, "5.0", [5], None])
@pytest.mark.parametrize("key", sorted(NUMBERS))
def test_numbers_are_never_taken_from_strings_or_booleans(key: str, value: Any) -> None:
    """No lax conversion: ``"100"`` is not 100 and ``true`` is not 1, as before."""
    found = problems({"llamacloud": {key: value}, "projects": [{"id": "p", "api_key": "k"}]})
    assert found == [f"llamacloud.{key}: must be {NUMBERS[key]}"]


def test_no_message_is_in_the_validation_library_s_words() -> None:
    """Its messages can quote the input; every message is the exporter's own phrase."""
    secret = "llx-Qw3rTy7UiOp9AsDf"
    raw = {
        "llamacloud": {"page_size": secret, "listing": secret, "base_url": [secret]},
        "projects": [{"id": [secret], "name": {secret: 1}, "api_key": 5, "page_size": {}}],
        "web": {"listen_address": 8080},
        "detail": {"error_classes": [{"name": secret, "match": [secret]}, [secret]]},
        "discovery": {"include": [secret], "interval_seconds": secret},
        "sharding": {"total": secret},
        "state": {"path": [secret]},
    }
    found = problems(raw)
    assert len(found) >= 15, found  # each key above has its problem
    text = "\n".join(found)
    for word in (secret, "Input should", "input_value", "type=", "pydantic"):
        assert word not in text, word


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


def test_poll_interval_is_bounded() -> None:
    found = problems({"poll_interval_seconds": 1e300, "projects": [{"id": "p", "api_key": "k"}]})
    assert found == ["poll_interval_seconds: must be greater than 0 and at most 86400"]


def test_strings_that_are_not_unicode_text_are_config_errors() -> None:
    found = problems({"projects": [{"id": "p\ud800", "api_key": "k"}]})
    assert found == ["projects[0].id: not valid Unicode text (an unpaired surrogate)"]
    found = problems({"projects": [{"id": "p", "api_key": "k", "n\udc00": 1}]})
    assert found == ["projects[0].n\\udc00: unknown key"]


@pytest.mark.parametrize(
    "url",
    ["https://user:pw@api.test", "https://api.test/?x=1", "https://api.test/#f", "http://[::1"],
)
def test_base_urls_that_cannot_be_used_are_config_errors(url: str) -> None:
    found = problems({"llamacloud": {"base_url": url}, "projects": [{"id": "p", "api_key": "k"}]})
    assert found[0].startswith("llamacloud.base_url: must")
    assert url not in found[0]


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


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
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


@settings(max_examples=500, deadline=None)
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
