"""What many test modules share: waiting for a condition, free ports, parsed scrapes, listed
sessions, configs and a running exporter process. Fixtures are tests/conftest.py's."""

from __future__ import annotations

import base64
import inspect
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from exporter.config import ProjectConfig, Secret
from exporter.simulator import DEFAULT_API_KEY
from exporter.web import WebConfig
from exporter.web.auth import AuthResult

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"

T = TypeVar("T")

# What a predicate may raise while what it waits for is not there yet: a server not yet
# listening, or answering something that cannot be read yet.
NOT_YET: tuple[type[BaseException], ...] = (httpx.HTTPError, OSError)


def _described(predicate: Callable[[], Any]) -> str:
    """The predicate as its source says it (a lambda's line), else its name."""
    try:
        return " ".join(inspect.getsource(predicate).split())
    except (OSError, TypeError):
        return getattr(predicate, "__name__", repr(predicate))


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 30.0,
    what: str | None = None,
    *,
    exceptions: tuple[type[BaseException], ...] = NOT_YET,
    interval: float = 0.05,
) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that.

    Past ``timeout`` seconds, fail saying what it waited for (``what``, else the predicate's
    source) and what it saw last. An exception of ``exceptions`` counts as "not yet"; any
    other fails at once. The timeout is a deadline for a condition that should hold in
    milliseconds, so it is generous and never what a test measures.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = predicate()
        except exceptions as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)  # the poll interval: what is waited for happens elsewhere
    raise AssertionError(
        f"timed out after {timeout:g} s waiting for {what or _described(predicate)}; last: {last!r}"
    )


def project(
    pid: str,
    name: str = "",
    *,
    organization_id: str = "",
    base_url: str = "http://127.0.0.1:1",
    key: str = "k",
    **fields: Any,
) -> ProjectConfig:
    """A project to poll or to serve, what a test does not care about filled in (its name is
    its id unless given; ``fields``: the other ProjectConfig fields)."""
    return ProjectConfig(pid, name or pid, organization_id, base_url, 100, Secret(key), **fields)


def admits(web: WebConfig, authorization: str | None) -> bool:
    """Whether a request with this Authorization header gets in, as the server asks (here
    off the event loop, waiting for a bcrypt check if one is needed)."""
    return web.basic_auth.check(authorization) is AuthResult.GRANTED


# A session in the shape of the API reference's example, with every field set.
SESSION = {
    "last_updated_at": "2026-04-22T12:34:41.342245",
    "session_id": "ses-abc123",
    "shared_access": "query",
    "generated_title": "What were the main findings in Q3?...",
    "index_ids": ["idx-abc123", "idx-def456"],
    "job_metadata": {
        "duration_ms": 1500,
        "error": None,
        "export_config_ids": ["string"],
        "is_error": False,
        "total_input_tokens": 100,
        "total_output_tokens": 20,
        "turns": 2,
    },
}


def session(sid: str, **job: Any) -> dict[str, Any]:
    """A listed session; ``job`` overrides fields of its job_metadata (``job=None``: never run)."""
    item = dict(SESSION, session_id=sid)
    if job.get("job", 1) is None:
        item["job_metadata"] = None
    else:
        item["job_metadata"] = dict(SESSION["job_metadata"], **job)  # type: ignore[arg-type]
    return item


# An expression that backtracks exponentially in Python's ``re`` on a run of words that never
# reaches ": timeout", and words that do not: the first 4 KiB of an error text, as classified.
BACKTRACKING = r"(?i)(\w+\s?)+: timeout"
WORDS = ("upstream request failed while reading nodes " * 100)[:4096]


def python_in_a_child(code: str, deadline: float = 60.0) -> str:
    """Run ``code`` in a fresh interpreter and return what it prints; fail past ``deadline``
    seconds (generous: for work that takes milliseconds, or never ends)."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=deadline,
            cwd=REPO,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running after {deadline:g} s")
    assert done.returncode == 0, done.stderr
    return done.stdout


# Metrics of the contract (shared/DESIGN.md) that the dashboard and the rules read and that the
# exporter does not expose yet: tests that want data for every panel leave theirs out. A name
# leaves this set when the collector names it (tests/e2e/test_deploy.py checks), and its panels
# are then held to their data like every other.
NOT_YET_EXPOSED: frozenset[str] = frozenset()


def lint_problems(output: str) -> list[str]:
    """promtool check metrics' complaints: every line it prints (none is expected)."""
    return [line for line in output.splitlines() if line.strip()]


def tool(name: str) -> str:
    """Path of a command-line tool: the venv's own first (pip-installed tools), then PATH.

    A missing tool skips the test on a developer machine and fails it in CI (``CI`` set),
    where a skip would hide a missing install step.
    """
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found:
        return found
    message = f"{name} is not installed (see .ci/run and the test extra of pyproject.toml)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_metrics(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, metric: str, /, **labels: str) -> float | None:
    return samples.get((metric, frozenset(labels.items())))


def write_config(path: Path, base_url: str, project_ids: list[str], **top: Any) -> Path:
    config: dict[str, Any] = {
        "llamacloud": {
            "base_url": base_url,
            "api_key": DEFAULT_API_KEY,
            "timeout_seconds": 2,
            "max_retries": 2,
        },
        "projects": [{"id": pid} for pid in project_ids],
        "poll_interval_seconds": 0.3,
    }
    for key, val in top.items():
        if isinstance(val, dict) and isinstance(config.get(key), dict):
            config[key].update(val)
        else:
            config[key] = val
    path.write_text(yaml.safe_dump(config))
    return path


def exporter_command(config: Path, port: int, *extra: str) -> list[str]:
    """``python -m exporter`` with ``config``, serving on 127.0.0.1:``port``."""
    address = f"127.0.0.1:{port}"
    return [
        sys.executable,
        "-m",
        "exporter",
        "--config",
        str(config),
        "--web.listen-address",
        address,
        *extra,
    ]


@dataclass
class Exporter:
    """A running ``python -m exporter`` process and its URL."""

    proc: subprocess.Popen[str]
    url: str
    log_path: Path
    client: dict[str, Any] = field(default_factory=dict)  # httpx options: verify, auth, cert
    _metrics: list[str] = field(default_factory=list)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=5, **{**self.client, **kwargs})

    def metrics(self) -> Samples:
        return parse_metrics(self.get("/metrics").text)

    def wait_metric(
        self,
        name: str,
        labels: dict[str, str],
        predicate: Callable[[float], bool],
        timeout: float = 30.0,
    ) -> Samples:
        def check() -> Samples | None:
            samples = self.metrics()
            v = value(samples, name, **labels)
            return samples if v is not None and predicate(v) else None

        return wait_for(check, timeout, f"{name}{labels}")

    def logs(self) -> str:
        return self.log_path.read_text()


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m exporter ARGS`` to its end, with ``env`` on top of this environment."""
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def json_logs(text: str) -> list[dict[str, Any]]:
    """The JSON log lines (``--log.format json``) of a process's output."""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def fragments_of(key: str, text: str) -> list[str]:
    """Every run of 8 characters of ``key`` that ``text`` still holds."""
    return [key[i : i + 8] for i in range(len(key) - 7) if key[i : i + 8] in text]


def basic(user: str, password: str | bytes) -> str:
    raw = password if isinstance(password, bytes) else password.encode()
    return "Basic " + base64.b64encode(user.encode() + b":" + raw).decode()
