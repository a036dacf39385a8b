"""config.files: bounded reads of what a config names: no FIFO, no device, no alias bomb,
nothing too large, and no key quoted back."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from exporter.config import ConfigError, load_config
from tests.config.helpers import KEY, load_problems, problems


def test_invalid_yaml_and_unreadable_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("projects: [\n")
    with pytest.raises(ConfigError, match="invalid YAML at line"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


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
    assert found == [
        f"projects[0].api_key_file: cannot read the key file {fifo}: not a regular file"
    ]
    found = problems({"projects": [{"id": "p", "api_key_file": "/dev/zero"}]})
    assert found == [
        "projects[0].api_key_file: cannot read the key file /dev/zero: not a regular file"
    ]
    assert load_problems(fifo) == [f"config: cannot read {fifo}: not a regular file"]


def test_a_key_file_or_a_config_too_large_is_refused(tmp_path: Path) -> None:
    (tmp_path / "key").write_bytes(b"k" * (64 * 1024 + 1))
    found = problems({"projects": [{"id": "p", "api_key_file": str(tmp_path / "key")}]})
    assert found == [
        f"projects[0].api_key_file: cannot read the key file {tmp_path / 'key'}: "
        "larger than 65536 bytes"
    ]
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
        "projects[0].api_key_file: cannot read the key file: No such file or directory (the "
        "value looks like an API key, not a path: set api_key instead)"
    ]
    (tmp_path / "c.yaml").write_text(f"projects:\n  - id: p\n    api_key_file: {KEY}\n")
    assert KEY[4:12] not in " ".join(load_problems(tmp_path / "c.yaml"))


def test_a_yaml_error_never_quotes_a_key(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(f"projects:\n  - id: p\n    api_key: *{KEY}\n")
    found = load_problems(tmp_path / "c.yaml")
    assert found[0].startswith("config: invalid YAML at line 3")
    assert KEY[4:12] not in found[0]
