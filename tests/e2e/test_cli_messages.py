"""What a newcomer reads when something is wrong: ``--check-config`` names each problem once,
with its key path and what to do, and the daemon's own refusals say the same."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.helpers import REPO, free_port, write_config

NOWHERE = "http://127.0.0.1:1"


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The exporter as a user runs it, with ``env`` as the whole environment added to PATH."""
    base = {"PATH": os.environ.get("PATH", ""), "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**base, **(env or {})},
    )


def check(config: Path, env: dict[str, str] | None = None) -> list[str]:
    """The problems ``--check-config`` prints, which must be there (exit 2)."""
    done = cli("--check-config", "--config", str(config), env=env)
    assert done.returncode == 2, done.stdout + done.stderr
    header, *lines = done.stderr.splitlines()
    assert header == f"{config}: invalid configuration"
    assert "Traceback" not in done.stderr
    return [line.strip() for line in lines]


def config_file(tmp_path: Path, raw: dict[str, Any]) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_each_unset_variable_is_named_once(tmp_path: Path) -> None:
    config = config_file(
        tmp_path,
        {
            "llamacloud": {"base_url": NOWHERE, "api_key": "${MAIN_KEY}"},
            "projects": [
                {"id": "a"},  # the default key, whose variable is unset
                {"id": "b", "api_key": "${PROD_KEY}"},
                {"id": "${PROJECT_ID}", "api_key": "${PROD_KEY}"},
                {"id": "d", "api_key_file": "${KEY_FILE}"},
                {"id": "e", "api_key": "${TWICE}${TWICE}"},
            ],
        },
    )
    problems = check(config)
    assert problems == [
        "llamacloud.api_key: environment variable MAIN_KEY is not set",
        "projects[1].api_key: environment variable PROD_KEY is not set",
        "projects[2].id: environment variable PROJECT_ID is not set",
        "projects[2].api_key: environment variable PROD_KEY is not set",
        "projects[3].api_key_file: environment variable KEY_FILE is not set",
        "projects[4].api_key: environment variable TWICE is not set",
    ]


def test_no_line_is_printed_twice(tmp_path: Path) -> None:
    """However many problems a file has, every line says something new."""
    config = config_file(
        tmp_path,
        {
            "llamacloud": {"api_key": "${K}", "page_size": "${K}", "timeout_seconds": "30s"},
            "projects": [{"id": "${P}"}, {"id": "${P}"}, {"name": "x"}, {"id": "a"}],
            "discovery": {"organization_id": "${ORG}"},
            "poll_interval_seconds": "1m",
            "state": {"path": "${STATE}"},
        },
    )
    problems = check(config)
    assert len(problems) >= 8, problems
    assert [line for line, n in Counter(problems).items() if n > 1] == []
    # A key at most once per variable it lacks.
    for key in ("projects[0].id", "projects[1].id", "llamacloud.page_size", "state.path"):
        assert len([p for p in problems if p.startswith(key + ":")]) == 1, (key, problems)


def test_a_state_path_the_daemon_cannot_create_fails_check_config(tmp_path: Path) -> None:
    """/proc takes no new directory, whatever its permission bits say (to root as well)."""
    config = write_config(
        tmp_path / "c.yaml", NOWHERE, ["a"], state={"path": "/proc/nope/state.db"}
    )
    assert check(config) == [
        "state.path: cannot create directory /proc/nope: No such file or directory"
    ]
    daemon = cli("--config", str(config), "--web.listen-address", f"127.0.0.1:{free_port()}")
    assert daemon.returncode == 2
    assert "state.path: cannot use /proc/nope/state.db" in daemon.stderr


def test_a_state_path_that_can_be_created_passes_and_leaves_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state" / "deeper" / "state.db"
    config = write_config(tmp_path / "c.yaml", NOWHERE, ["a"], state={"path": str(state)})
    before = sorted(tmp_path.rglob("*"))
    done = cli("--check-config", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert sorted(tmp_path.rglob("*")) == before
    (tmp_path / "here").mkdir()
    config = write_config(
        tmp_path / "c.yaml", NOWHERE, ["a"], state={"path": str(tmp_path / "here" / "s.db")}
    )
    done = cli("--check-config", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert list((tmp_path / "here").iterdir()) == []


def test_numbers_with_units_say_units_are_not_allowed(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "c.yaml",
        NOWHERE,
        ["a"],
        llamacloud={"timeout_seconds": "10s", "max_response_bytes": "64MiB"},
        poll_interval_seconds="30s",
        discovery={"interval_seconds": "10 m"},
    )
    assert check(config) == [
        "llamacloud.timeout_seconds: must be a number of seconds, without a unit (got '10s')",
        "llamacloud.max_response_bytes: must be a whole number of bytes, without a unit "
        "(got '64MiB')",
        "poll_interval_seconds: must be a number of seconds, without a unit (got '30s')",
        "discovery.interval_seconds: must be a number of seconds, without a unit (got '10 m')",
    ]


def test_a_missing_key_file_is_named(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", NOWHERE, [])
    raw = yaml.safe_load(config.read_text())
    raw["llamacloud"] = {"base_url": NOWHERE, "api_key_file": "/run/secrets/nope"}
    raw["projects"] = [{"id": "a"}, {"id": "b", "api_key_file": "keys/b.key"}]
    config.write_text(yaml.safe_dump(raw))
    assert check(config) == [
        "llamacloud.api_key_file: cannot read the key file /run/secrets/nope: "
        "No such file or directory",
        # Relative to the config's directory, and shown as looked for.
        f"projects[1].api_key_file: cannot read the key file {tmp_path / 'keys' / 'b.key'}: "
        "No such file or directory",
    ]


def test_one_project_is_one_project(tmp_path: Path, start_exporter: Any) -> None:
    config = write_config(tmp_path / "c.yaml", NOWHERE, ["a"])
    done = cli("--check-config", "--config", str(config))
    assert done.stdout == f"{config}: configuration is valid (1 project)\n"
    config = write_config(tmp_path / "c.yaml", NOWHERE, ["a", "b"])
    assert "(2 projects)" in cli("--check-config", "--config", str(config)).stdout

    config = write_config(tmp_path / "c.yaml", NOWHERE, ["a"], llamacloud={"max_retries": 0})
    exporter = start_exporter(config, "--web.enable-lifecycle", ready=False)
    answer = httpx.post(exporter.url + "/-/reload", timeout=30)
    assert answer.status_code == 200
    assert "configuration reloaded (1 project)" in answer.text


@pytest.mark.parametrize("with_config", [True, False])
def test_a_port_in_use_says_so_and_what_to_do(tmp_path: Path, with_config: bool) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        if with_config:
            config = write_config(tmp_path / "c.yaml", NOWHERE, ["a"])
            args = ["--config", str(config)]
        else:
            args = ["--demo"]
        done = cli(*args, "--web.listen-address", address, "--log.format", "console")
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "Traceback" not in output
    assert "listen_failed" in output and address in output
    assert "the address is already in use" in output
    assert "--web.listen-address" in output
    assert ("web.listen_address" in output.replace("--web.listen-address", "")) == with_config
