"""Shared fixtures (a simulated LlamaCloud API, exporter processes, a certificate authority),
the hypothesis profiles, and the ``slow`` mark on what starts processes.

Plain helpers are in tests/helpers.py."""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from hypothesis import HealthCheck, settings

from exporter.simulator import Simulator
from tests.helpers import REPO, TESTS, Exporter, exporter_command, free_port, wait_for

# CI: the same examples on every run (a failure is reproduced by running again, and its blob
# is printed), no per-example deadline on a busy machine. A developer's run keeps
# hypothesis's default, random examples, which finds what CI's fixed ones do not.
settings.register_profile(
    "ci",
    derandomize=True,
    print_blob=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
if os.environ.get("CI"):
    settings.load_profile("ci")

# Fixtures that start a process: every test that uses one (directly or through another
# fixture) is slow.
PROCESS_FIXTURES = frozenset({"start_exporter"})
# What starts a process when a test calls it: a test whose own code says one is slow.
PROCESS_CALLS = (
    "subprocess.",
    "run_cli(",
    "python_in_a_child(",
    "exporter_process(",
    "locked_by_another_process(",
    "cli_process(",
)


def starts_a_process(item: pytest.Item) -> bool:
    if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    function = getattr(item, "function", None)
    try:
        source = inspect.getsource(function) if function is not None else ""
    except (OSError, TypeError):
        return False
    return any(call in source for call in PROCESS_CALLS)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """``slow``: everything under tests/e2e/, and every test that starts a process (through
    a fixture, or by a call its code makes); a test slow for another reason says so itself."""
    e2e = TESTS / "e2e"
    for item in items:
        if item.path.is_relative_to(e2e) or starts_a_process(item):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(projects=0, seed=7) as simulator:
        yield simulator


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    """One certificate authority for the run: certificates are issued per test as needed."""
    return trustme.CA()


@pytest.fixture(scope="session")
def server_cert(ca: trustme.CA) -> trustme.LeafCert:
    """A server certificate of ``ca`` for loopback and the names the deploy kit uses."""
    return ca.issue_cert("localhost", "127.0.0.1", "exporter", "llamacloud-exporter")


@pytest.fixture
def start_exporter(tmp_path: Path) -> Iterator[Callable[..., Exporter]]:
    started: list[Exporter] = []

    def start(
        config: Path,
        *extra: str,
        ready: bool = True,
        preexec_fn: Callable[[], None] | None = None,
        **client: Any,
    ) -> Exporter:
        """``client``: httpx options for every request to it (``verify`` makes it https);
        ``preexec_fn`` runs in the child before the exporter starts (to set its limits)."""
        port = free_port()
        log_path = tmp_path / f"exporter-{len(started)}.log"
        log_file = log_path.open("w")
        proc = subprocess.Popen(
            exporter_command(config, port, "--log.format", "json", *extra),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=preexec_fn,
        )
        log_file.close()
        scheme = "https" if "verify" in client else "http"
        exporter = Exporter(proc, f"{scheme}://127.0.0.1:{port}", log_path, client)
        started.append(exporter)

        def answers(path: str) -> bool:
            if proc.poll() is not None:  # no use waiting for a process that has ended
                raise AssertionError(f"the exporter exited {proc.returncode}:\n{exporter.logs()}")
            return exporter.get(path).status_code == 200

        wait_for(lambda: answers("/healthz"), 30, "/healthz")
        if ready:
            wait_for(lambda: answers("/readyz"), 30, "/readyz")
        return exporter

    try:
        yield start
    finally:
        for exporter in started:
            if exporter.proc.poll() is None:
                exporter.proc.send_signal(signal.SIGTERM)
                try:
                    exporter.proc.wait(10)
                except subprocess.TimeoutExpired:
                    exporter.proc.kill()
                    exporter.proc.wait()
