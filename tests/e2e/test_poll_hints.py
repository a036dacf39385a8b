"""A failed poll's log line says what to do: a rate-limited one as a rejected key does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from exporter.simulator import Simulator
from tests.conftest import REPO, session, write_config


def failed_polls(sim: Simulator, tmp_path: Path) -> list[dict[str, Any]]:
    config = write_config(tmp_path / "c.yaml", sim.base_url, ["p"], llamacloud={"max_retries": 0})
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "exporter",
            "--once",
            "--config",
            str(config),
            "--log.format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert done.returncode == 1, done.stderr
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    return [e for e in events if str(e.get("event", "")).startswith("poll_failed")]


def test_a_rate_limited_poll_says_how_to_ask_less(sim: Simulator, tmp_path: Path) -> None:
    sim.set_sessions("p", [session("s1")])
    sim.fail_next(10, status=429, detail="Too Many Requests")
    (failed,) = failed_polls(sim, tmp_path)
    assert failed["event"] == "poll_failed"
    assert (failed["reason"], failed["status"], failed["project_id"]) == ("rate_limited", 429, "p")
    for advice in ("max_requests_per_second", "max_concurrency", "poll_interval_seconds"):
        assert advice in failed["hint"], failed["hint"]
