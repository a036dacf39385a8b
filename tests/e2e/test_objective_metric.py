"""llamacloud_chat_run_error_ratio_objective as Prometheus scrapes it: one series per project
with an objective, whatever its polls do, and none for a project without one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from exporter.config import parse_config
from exporter.metrics import StoreCollector, TextExposition
from exporter.simulator import Simulator
from exporter.store import Store
from tests.helpers import REPO, parse_metrics, session, value, write_config

OBJECTIVE = "llamacloud_chat_run_error_ratio_objective"


def once(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter", "--once", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


def test_once_shows_each_project_s_objective(sim: Simulator, tmp_path: Path) -> None:
    for pid in ("inherits", "own", "none"):
        sim.set_sessions(pid, [session("s1"), session("s2", is_error=True)])
    config = write_config(
        tmp_path / "c.yaml",
        sim.base_url,
        [],
        llamacloud={"objectives": {"error_ratio": 0.05}, "max_retries": 0},
        projects=[
            {"id": "inherits"},
            {"id": "own", "objectives": {"error_ratio": 0.2}},
            {"id": "none", "objectives": None},
            {"id": "missing"},  # the simulator has no such project: its poll fails (404)
        ],
    )
    done = once(config)
    assert done.returncode == 1, done.stderr  # the missing project failed
    samples = parse_metrics(done.stdout)
    assert value(samples, "llamacloud_up", project_id="missing") == 0
    shown = {
        dict(labels)["project_id"]: v for (name, labels), v in samples.items() if name == OBJECTIVE
    }
    # A failed poll does not hide it: it comes from the config, as llamacloud_project_info.
    assert shown == {"inherits": 0.05, "own": 0.2, "missing": 0.05}
    assert f"# TYPE {OBJECTIVE} gauge" in done.stdout
    (help_line,) = [
        line for line in done.stdout.splitlines() if line.startswith(f"# HELP {OBJECTIVE}")
    ]
    assert "objectives.error_ratio" in help_line and "Absent for a project without one" in help_line


def test_without_objectives_the_family_has_no_series(sim: Simulator, tmp_path: Path) -> None:
    sim.set_sessions("a", [session("s1")])
    done = once(write_config(tmp_path / "c.yaml", sim.base_url, ["a"]))
    assert done.returncode == 0, done.stderr
    assert not [line for line in done.stdout.splitlines() if line.startswith(OBJECTIVE)]


def test_shown_before_a_project_s_first_poll() -> None:
    """From the moment the project is configured, in the cached exposition and the collector."""
    config = parse_config(
        {"projects": [{"id": "a", "objectives": {"error_ratio": 0.1}}, {"id": "b"}]},
        {"LLAMA_CLOUD_API_KEY": "llx-objective"},
    )
    store = Store(config.projects)
    collector = StoreCollector(store)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    for text in (TextExposition(collector, store).render(), generate_latest(registry)):
        samples = parse_metrics(text.decode())
        assert value(samples, OBJECTIVE, project_id="a") == 0.1
        assert value(samples, OBJECTIVE, project_id="b") is None
        assert value(samples, "llamacloud_up", project_id="a") == 0  # no poll yet
