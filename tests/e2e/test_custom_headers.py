"""LLAMA_CLOUD_CUSTOM_HEADERS end to end: on every request the exporter makes (the chat
listings and the discovery of projects alike), never in place of the key, never in a log."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.cli import run_once
from exporter.client.api import CHAT_PATH, PROJECTS_PATH
from exporter.config import load_config
from exporter.simulator import DEFAULT_API_KEY, Simulator
from tests.helpers import REPO, session, write_config

SECRET_VALUE = "cf-access-secret-9f8e7d6c5b4a"
HEADERS = f"CF-Access-Client-Id: exporter.access\nCF-Access-Client-Secret: {SECRET_VALUE}\n"


def test_every_request_carries_them_beside_the_key(
    sim: Simulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sim.add_project("listed")
    for pid in ("static", "listed"):
        sim.set_sessions(pid, [session("s1"), session("s2")])
    path = write_config(
        tmp_path / "c.yaml",
        sim.base_url,
        ["static"],
        llamacloud={"page_size": 1},  # several pages each
        discovery={"organization_id": sim.organization_id},
    )
    config = load_config(path, {"LLAMA_CLOUD_CUSTOM_HEADERS": HEADERS})
    assert asyncio.run(run_once(config)) == 0
    assert "llamacloud_up{" in capsys.readouterr().out
    received = sim.requests  # as the API saw them
    paths = [request.path for request in received]
    assert paths.count(CHAT_PATH) >= 4 and PROJECTS_PATH in paths, paths
    for request in received:
        assert request.headers["cf-access-client-id"] == "exporter.access"
        assert request.headers["cf-access-client-secret"] == SECRET_VALUE
        assert request.headers["authorization"] == f"Bearer {DEFAULT_API_KEY}"
        assert request.headers["accept-encoding"] == "gzip"


def test_no_header_value_reaches_the_output(sim: Simulator, tmp_path: Path) -> None:
    """Not at debug level, not when the API rejects the requests."""
    sim.set_sessions("p", [session("s1")])
    sim.fail_next(10, status=403, detail=f"refused {SECRET_VALUE}")  # even echoed back
    config = write_config(tmp_path / "c.yaml", sim.base_url, ["p"], llamacloud={"max_retries": 0})
    env = {**os.environ, "LLAMA_CLOUD_CUSTOM_HEADERS": HEADERS}
    for fmt in ("json", "console"):
        done = subprocess.run(
            [
                *(sys.executable, "-m", "exporter", "--once", "--config", str(config)),
                *("--log.level", "debug", "--log.format", fmt),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
            env=env,
        )
        assert done.returncode == 1
        assert "poll_failed_config" in done.stderr
        assert SECRET_VALUE[4:20] not in done.stdout + done.stderr


def test_a_malformed_line_fails_check_config_naming_the_variable(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", "http://127.0.0.1:1", ["p"])
    env = {**os.environ, "LLAMA_CLOUD_CUSTOM_HEADERS": f"X-Ok: 1\n{SECRET_VALUE}"}
    done = subprocess.run(
        [sys.executable, "-m", "exporter", "--check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=env,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines()[1:] == [
        '  LLAMA_CLOUD_CUSTOM_HEADERS: line 2 is not "Name: value"'
    ]
