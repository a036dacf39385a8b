"""simulator.cli: ``python -m exporter.simulator``, its options, and the demo's simulator."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import httpx
import pytest

import exporter.simulator as simulator_module
from exporter.simulator import CHAT_PATH, ORGANIZATION_ID, PROJECTS_PATH, main
from tests.helpers import REPO
from tests.simulator.helpers import AUTH, assert_newest_first

FAULT_FLAGS = (
    "--rate-limit-share",
    "--rate-limit-retry-after",
    "--server-error-share",
    "--server-error-burst-every",
    "--server-error-burst-length",
    "--timeout-share",
    "--timeout-seconds",
    "--truncate-share",
    "--malformed-share",
    "--endless-project",
    "--fault-endpoint",
)


# ---------------------------------------------------------------------------------- CLI


def test_cli_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for option in ("--listen", "--projects", "--sessions", "--seed", "--evolve-every"):
        assert option in out
    for option in ("--error-share", "--latency", "--api-key"):
        assert option in out


def test_cli_rejects_bad_listen_address(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--listen", "nonsense"])
    assert exc.value.code == 2


def read_line(lines: queue.Queue[str], deadline: float) -> str:
    remaining = max(0.0, deadline - time.monotonic())
    try:
        return lines.get(timeout=remaining)
    except queue.Empty:
        raise AssertionError("the simulator printed nothing in time") from None


@contextlib.contextmanager
def cli_process(*args: str) -> Iterator[tuple[subprocess.Popen[str], str, list[str]]]:
    """``python -m exporter.simulator ARGS`` with 2 projects: (process, URL, project ids)."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    command = [sys.executable, "-m", "exporter.simulator", "--projects", "2", "--sessions", "7"]
    process = subprocess.Popen(
        [*command, "--evolve-every", "0", "--listen", "127.0.0.1:0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
    )
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line.rstrip("\n"))

    threading.Thread(target=pump, daemon=True).start()
    try:
        deadline = time.monotonic() + 30
        first = read_line(lines, deadline)
        assert first.startswith("simulator listening on http://127.0.0.1:")
        url = first.removeprefix("simulator listening on ")
        projects = [read_line(lines, deadline) for _ in range(2)]
        assert all(line.startswith("project ") for line in projects)
        assert read_line(lines, deadline) == f"organization {ORGANIZATION_ID}"
        yield process, url, [line.removeprefix("project ") for line in projects]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def test_cli_subprocess_serves_until_sigterm() -> None:
    with cli_process("--api-key", "llx-cli") as (process, url, project_ids):
        response = httpx.get(
            url + CHAT_PATH,
            params={"project_id": project_ids[0]},
            headers={"Authorization": "Bearer llx-cli"},
            timeout=10,
        )
        assert response.status_code == 200
        assert len(response.json()["items"]) == 7
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0


def test_cli_fault_flags_reach_the_server() -> None:
    flags = ("--rate-limit-share", "1", "--rate-limit-retry-after", "9")
    with cli_process(*flags) as (_, url, project_ids):
        response = httpx.get(
            url + CHAT_PATH, params={"project_id": project_ids[0]}, headers=AUTH, timeout=10
        )
        assert response.status_code == 429
        assert response.headers["retry-after"] == "9"
        assert response.json() == {"detail": "Too Many Requests"}


def test_cli_subprocess_lists_its_projects() -> None:
    with cli_process("--fault-endpoint", "projects", "--server-error-burst-every", "1") as (
        _,
        url,
        project_ids,
    ):
        params = {"organization_id": ORGANIZATION_ID}
        response = httpx.get(url + PROJECTS_PATH, params=params, headers=AUTH, timeout=10)
        assert response.status_code == 503  # the faults strike the projects listing only
        response = httpx.get(
            url + CHAT_PATH, params={"project_id": project_ids[0]}, headers=AUTH, timeout=10
        )
        assert response.status_code == 200


def test_cli_help_names_the_organization(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = "".join(capsys.readouterr().out.split())
    assert f"/api/v2/projects?organization_id={ORGANIZATION_ID}" in out


@pytest.mark.parametrize(
    ("args", "endpoints"),
    [
        ([], ("chat",)),
        (["--fault-endpoint", "projects"], ("projects",)),
        (["--fault-endpoint", "chat", "--fault-endpoint", "projects"], ("chat", "projects")),
    ],
)
def test_cli_fault_endpoint_reaches_the_simulator(
    recording: list[dict[str, Any]], args: list[str], endpoints: tuple[str, ...]
) -> None:
    assert main(args) == 1  # the stand-in cannot listen
    assert [kwargs["faults"].endpoints for kwargs in recording] == [endpoints]


def test_cli_help_documents_every_fault_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for option in FAULT_FLAGS:
        assert option in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rate-limit-share", "1.5"], "--rate-limit-share"),
        (["--server-error-share", "-0.1"], "--server-error-share"),
        (["--timeout-share", "nan"], "--timeout-share"),
        (["--truncate-share", "lots"], "--truncate-share"),
        (["--malformed-share", "2"], "--malformed-share"),
        (["--rate-limit-retry-after", "-1"], "--rate-limit-retry-after"),
        (["--server-error-burst-every", "-5"], "--server-error-burst-every"),
        (["--server-error-burst-length", "0"], "--server-error-burst-length"),
        (["--timeout-seconds", "-1"], "--timeout-seconds"),
        (["--timeout-seconds", "inf"], "--timeout-seconds"),
        (["--projects", "1", "--sessions", "1", "--endless-project", "nope"], "no such project"),
        (["--fault-endpoint", "nope"], "--fault-endpoint"),
    ],
)
def test_cli_rejects_bad_fault_values(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_order_option_is_documented(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--order {newest-first,created}" in out
    assert "(default: newest-first)" in out


def test_cli_rejects_an_unknown_order(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--order", "oldest-first"])
    assert exc.value.code == 2
    assert "--order" in capsys.readouterr().err


class RecordingSimulator:
    """Stands in for ``Simulator``: records its arguments, then fails to listen."""

    made: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, **kwargs: Any) -> None:
        self.made.append(kwargs)
        self.project_ids: list[str] = []
        self.latency = 0.0

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        raise OSError("not listening in this test")

    def stop(self) -> None:
        pass


@pytest.fixture
def recording(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    made: list[dict[str, Any]] = []
    monkeypatch.setattr(RecordingSimulator, "made", made)
    monkeypatch.setattr(simulator_module, "Simulator", RecordingSimulator)
    return made


@pytest.mark.parametrize(
    ("args", "order"),
    [
        ([], "newest-first"),
        (["--order", "created"], "created"),
        (["--order", "newest-first"], "newest-first"),
    ],
)
def test_cli_order_reaches_the_simulator(
    recording: list[dict[str, Any]], args: list[str], order: str
) -> None:
    assert main(args) == 1  # the stand-in cannot listen
    assert [kwargs["order"] for kwargs in recording] == [order]


def test_demo_simulator_lists_newest_first(recording: list[dict[str, Any]]) -> None:
    from exporter.cli import run_demo

    with pytest.raises(OSError):
        run_demo(None)
    assert [kwargs["order"] for kwargs in recording] == ["newest-first"]


def test_cli_subprocess_lists_newest_first_by_default() -> None:
    with cli_process("--sessions", "40") as (_, url, project_ids):
        response = httpx.get(
            url + CHAT_PATH, params={"project_id": project_ids[0]}, headers=AUTH, timeout=10
        )
        items = response.json()["items"]
        assert len(items) == 40
        assert_newest_first(items)
