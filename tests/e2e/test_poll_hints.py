"""A failed poll's log line says what to do: a rate-limited one as a rejected key does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from exporter.simulator import Simulator
from tests.helpers import json_logs, run_cli, session, write_config


def failed_polls(sim: Simulator, tmp_path: Path) -> list[dict[str, Any]]:
    config = write_config(tmp_path / "c.yaml", sim.base_url, ["p"], llamacloud={"max_retries": 0})
    done = run_cli("--once", "--config", str(config), "--log.format", "json")
    assert done.returncode == 1, done.stderr
    events = json_logs(done.stderr)
    return [e for e in events if str(e.get("event", "")).startswith("poll_failed")]


def test_a_rate_limited_poll_says_how_to_ask_less(sim: Simulator, tmp_path: Path) -> None:
    sim.set_sessions("p", [session("s1")])
    sim.fail_next(10, status=429, detail="Too Many Requests")
    (failed,) = failed_polls(sim, tmp_path)
    assert failed["event"] == "poll_failed"
    assert (failed["reason"], failed["status"], failed["project_id"]) == ("rate_limited", 429, "p")
    for advice in ("max_requests_per_second", "max_concurrency", "poll_interval_seconds"):
        assert advice in failed["hint"], failed["hint"]
