"""The open-file limit: raised at start, shared between the API's connections and the web
server's, enforced at start and on reload; real exporter processes with a low limit."""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from exporter.openfiles import RESERVED_FILES
from exporter.simulator import Simulator
from tests.helpers import (
    REPO,
    Exporter,
    exporter_command,
    free_port,
    session,
    value,
    wait_for,
    write_config,
)

LIMIT = 256


def limit_files(soft: int, hard: int) -> Callable[[], None]:
    """For ``preexec_fn``: the child's RLIMIT_NOFILE, set before the exporter starts."""
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def soft_limit(pid: int) -> int:
    line = next(
        line
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines()
        if line.startswith("Max open files")
    )
    return int(line.split()[3])


def logged(exp: Exporter, event: str) -> dict[str, object]:
    lines = (json.loads(line) for line in exp.logs().splitlines() if line.startswith("{"))
    found: dict[str, object] = next(line for line in lines if line.get("event") == event)
    return found


def test_300_projects_with_their_own_keys_poll_within_256_open_files(
    tmp_path: Path, start_exporter: Callable[..., Exporter]
) -> None:
    """Soft and hard limit 256, so raising cannot help: every project is up, /metrics
    answers, the process stays far inside the limit, the simulator never sees more
    connections than two lanes of max_concurrency (4) and discovery use; and with the web
    server full of idle clients, /metrics still answers and every project is polled again."""
    keys = {f"proj-{i:03d}": f"llx-key-{i:03d}" for i in range(300)}
    with Simulator(projects=0, api_keys=keys, sessions_per_project=2, seed=16) as sim:
        config = write_config(
            tmp_path / "c.yaml",
            sim.base_url,
            [],
            projects=[{"id": pid, "api_key": key} for pid, key in keys.items()],
            poll_interval_seconds=2,
        )
        exp = start_exporter(config, preexec_fn=limit_files(LIMIT, LIMIT))
        peak = 0

        def every_project(since: float) -> bool:
            nonlocal peak
            peak = max(peak, open_files(exp.proc.pid))
            samples = exp.metrics()
            assert not [
                (labels, v)
                for (name, labels), v in samples.items()
                if name == "llamacloud_poll_errors_total" and v > 0
            ], "a poll failed"
            return all(
                value(samples, "llamacloud_up", project_id=pid) == 1
                and (
                    value(
                        samples, "llamacloud_last_successful_poll_timestamp_seconds", project_id=pid
                    )
                    or 0
                )
                >= since
                for pid in keys
            )

        wait_for(lambda: every_project(0), 120, "every project up")
        assert peak < LIMIT // 4, f"{peak} files open"
        assert sim.peak_connections <= 2 * 4 + 1

        # 200 idle web clients: more than the web server's share (half the limit) holds.
        idle: list[socket.socket] = []
        try:
            for _ in range(200):
                idle.append(socket.create_connection(("127.0.0.1", int(exp.url.rsplit(":", 1)[1]))))
            assert exp.get("/metrics").status_code == 200
            mark = time.time()
            wait_for(lambda: every_project(mark), 120, "every project polled again")
        finally:
            for sock in idle:
                sock.close()
        # Within the budget: the web server's half, the API's share, the process's own files.
        assert peak <= LIMIT // 2 + (2 * 4 + 1) + RESERVED_FILES, f"{peak} files open"
        assert sim.peak_connections <= 2 * 4 + 1
        assert logged(exp, "exporter_started")["open_file_limit"] == LIMIT


def test_the_daemon_raises_its_soft_open_file_limit_to_the_hard_one(
    sim: Simulator, tmp_path: Path, start_exporter: Callable[..., Exporter]
) -> None:
    sim.set_sessions("p", [session("a")])
    exp = start_exporter(
        write_config(tmp_path / "c.yaml", sim.base_url, ["p"]), preexec_fn=limit_files(128, 512)
    )
    assert soft_limit(exp.proc.pid) == 512
    started = logged(exp, "exporter_started")
    assert started["open_file_limit"] == 512
    # The web server's share: half the limit, at most 512.
    assert started["web_connections"] == 256
    assert started["api_connections"] == 2 * 4 + 1


@pytest.mark.parametrize(
    ("before", "cap", "after"),
    [
        ((100, 1000), 300, (300, 1000)),  # up to the cap, short of the hard limit
        ((100, 200), 300, (200, 200)),  # up to the hard limit, short of the cap
        ((500, 1000), 300, (500, 1000)),  # already past the cap: never lowered
    ],
)
def test_raise_limit_goes_to_the_hard_limit_at_most_to_the_cap(
    before: tuple[int, int], cap: int, after: tuple[int, int]
) -> None:
    code = (
        "import json, resource\n"
        "from exporter.openfiles import raise_limit\n"
        f"returned = raise_limit(cap={cap})\n"
        "print(json.dumps([returned, resource.getrlimit(resource.RLIMIT_NOFILE)]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        preexec_fn=limit_files(*before),
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == [list(after), list(after)]


@pytest.mark.parametrize(
    ("limit", "max_concurrency", "needed"),
    [
        (48, 4, 64),  # below the floor whatever the config
        (LIMIT, 200, 2 * 200 + 1 + 32 + 16),  # two lanes of 200, discovery, itself, web
    ],
)
def test_a_limit_too_low_fails_at_start_saying_what_to_do(
    sim: Simulator, tmp_path: Path, limit: int, max_concurrency: int, needed: int
) -> None:
    state = tmp_path / "state.db"
    config = write_config(
        tmp_path / "c.yaml",
        sim.base_url,
        ["p"],
        max_concurrency=max_concurrency,
        state={"path": str(state)},
    )
    done = subprocess.run(
        exporter_command(config, free_port()),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
        preexec_fn=limit_files(limit, limit),
    )
    assert done.returncode == 2, done.stderr
    assert f"the open-file limit is {limit}" in done.stderr
    assert f"max_concurrency {max_concurrency}" in done.stderr
    assert f"ulimit -n {needed}" in done.stderr
    assert not state.exists()  # refused before anything was opened
    assert sim.request_count == 0


def test_a_reload_to_a_max_concurrency_the_limit_cannot_hold_changes_nothing(
    sim: Simulator, tmp_path: Path, start_exporter: Callable[..., Exporter]
) -> None:
    sim.set_sessions("p", [session("a")])
    config = write_config(tmp_path / "c.yaml", sim.base_url, ["p"])
    good = config.read_text()
    exp = start_exporter(config, "--web.enable-lifecycle", preexec_fn=limit_files(LIMIT, LIMIT))
    exp.wait_metric("llamacloud_up", {"project_id": "p"}, lambda v: v == 1)

    # 256 files: 128 for the web server, 32 for the process, 96 left for the API; 100 lanes
    # of two and discovery would need 201.
    config.write_text(good + "max_concurrency: 100\n")
    refused = httpx.post(exp.url + "/-/reload", timeout=30)
    assert refused.status_code == 500
    assert "max_concurrency: 100 needs 201 connections" in refused.text
    assert "ulimit -n" in refused.text
    assert value(exp.metrics(), "llamacloud_config_last_reload_successful") == 0

    config.write_text(good + "max_concurrency: 40\n")  # 81 connections: they fit
    accepted = httpx.post(exp.url + "/-/reload", timeout=30)
    assert accepted.status_code == 200, accepted.text
    assert value(exp.metrics(), "llamacloud_config_last_reload_successful") == 1
    exp.wait_metric("llamacloud_up", {"project_id": "p"}, lambda v: v == 1)
