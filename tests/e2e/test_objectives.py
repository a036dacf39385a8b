"""objectives.error_ratio: a default for every project, a project's own, none; the messages a
mistake gets, with its key path; and a reload that changes it."""

from __future__ import annotations

import math
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.config import ConfigError, parse_config
from exporter.simulator import Simulator
from tests.helpers import REPO, Exporter, session, value, wait_for, write_config

KEY = {"LLAMA_CLOUD_API_KEY": "llx-objectives"}
OBJECTIVE = "llamacloud_chat_run_error_ratio_objective"


def objectives(raw: dict[str, Any]) -> dict[str, float | None]:
    config = parse_config(raw, KEY)
    return {p.id: p.error_ratio_objective for p in config.projects}


def problems(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, KEY)
    return info.value.problems


def test_no_objective_unless_one_is_configured() -> None:
    assert objectives({"projects": [{"id": "a"}]}) == {"a": None}
    assert objectives({"llamacloud": {"objectives": None}, "projects": [{"id": "a"}]}) == {
        "a": None
    }


def test_the_default_applies_to_every_project_that_sets_none() -> None:
    raw = {
        "llamacloud": {"objectives": {"error_ratio": 0.01}},
        "projects": [
            {"id": "inherits"},
            {"id": "own", "objectives": {"error_ratio": 0.2}},
            {"id": "null", "objectives": None},
            {"id": "empty", "objectives": {}},
            {"id": "ratio-null", "objectives": {"error_ratio": None}},
        ],
    }
    assert objectives(raw) == {
        "inherits": 0.01,
        "own": 0.2,
        "null": None,
        "empty": None,
        "ratio-null": None,
    }


def test_a_project_may_have_one_without_a_default() -> None:
    raw = {"projects": [{"id": "a", "objectives": {"error_ratio": 0.05}}, {"id": "b"}]}
    assert objectives(raw) == {"a": 0.05, "b": None}


def test_discovered_projects_take_the_default() -> None:
    raw = {
        "llamacloud": {"api_key": "llx-org", "objectives": {"error_ratio": 0.02}},
        "discovery": {"organization_id": "org"},
    }
    discovery = parse_config(raw, {}).discovery
    assert discovery is not None and discovery.template.error_ratio_objective == 0.02


def test_the_readme_example_means_what_it_says() -> None:
    """Its block: a default, a project's own, and a project with none."""
    text = (REPO / "README.md").read_text()
    (block,) = [
        b for b in re.findall(r"^```yaml\n(.*?)^```$", text, re.M | re.S) if "error_ratio" in b
    ]
    config = parse_config(yaml.safe_load(block), KEY)
    assert [p.error_ratio_objective for p in config.projects] == [0.01, 0.05, None]


SHARE = "(a share of runs: 0.01 is 1 %)"


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (0, f"must be greater than 0 and less than 1 {SHARE}"),
        (1, f"must be greater than 0 and less than 1 {SHARE}"),
        (5, f"must be greater than 0 and less than 1 {SHARE}"),  # 5 %, written as a percentage
        (-0.01, f"must be greater than 0 and less than 1 {SHARE}"),
        (math.nan, f"must be greater than 0 and less than 1 {SHARE}"),
        (math.inf, f"must be greater than 0 and less than 1 {SHARE}"),
        (
            "1%",
            f"must be a number greater than 0 and less than 1 {SHARE}, without a unit (got '1%')",
        ),
        ("0.01", f"must be a number greater than 0 and less than 1 {SHARE}"),
        (True, f"must be a number greater than 0 and less than 1 {SHARE}"),
        ([0.01], f"must be a number greater than 0 and less than 1 {SHARE}"),
    ],
)
def test_an_error_ratio_out_of_range_is_named_by_its_key_path(given: Any, message: str) -> None:
    raw = {
        "llamacloud": {"objectives": {"error_ratio": given}},
        "projects": [{"id": "a"}, {"id": "b", "objectives": {"error_ratio": given}}],
    }
    assert problems(raw) == [
        f"llamacloud.objectives.error_ratio: {message}",
        f"projects[1].objectives.error_ratio: {message}",
    ]


def test_unknown_keys_and_wrong_shapes_under_objectives_are_errors() -> None:
    raw = {
        "llamacloud": {"objectives": {"error_rate": 0.01}},
        "projects": [
            {"id": "a", "objectives": 0.01},
            {"id": "b", "objectives": {"ErrorRatio": 0.01}},
            {"id": "c", "objective": {"error_ratio": 0.01}},
        ],
    }
    assert problems(raw) == [
        "llamacloud.objectives.error_rate: unknown key (did you mean error_ratio?)",
        "projects[0].objectives: must be a mapping",
        "projects[1].objectives.ErrorRatio: unknown key (did you mean error_ratio?)",
        "projects[2].objective: unknown key (did you mean objectives?)",
    ]


def test_check_config_prints_the_key_path_and_exits_2(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "c.yaml",
        "http://127.0.0.1:1",
        ["a"],
        llamacloud={"objectives": {"error_ratio": 1.5}},
    )
    done = subprocess.run(
        [sys.executable, "-m", "exporter", "--check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines()[1:] == [
        f"  llamacloud.objectives.error_ratio: must be greater than 0 and less than 1 {SHARE}"
    ]


def test_a_reload_changes_adds_and_removes_objectives(
    sim: Simulator, tmp_path: Path, start_exporter: Any
) -> None:
    """SIGHUP: the series follow the file at once, with no poll needed."""
    for pid in ("a", "b"):
        sim.set_sessions(pid, [session("s1")])
    path = write_config(
        tmp_path / "c.yaml",
        sim.base_url,
        ["a", "b"],
        llamacloud={"objectives": {"error_ratio": 0.05}},
        poll_interval_seconds=3600,  # one poll at the start; the reload needs none
    )
    exporter: Exporter = start_exporter(path)
    samples = exporter.metrics()
    assert value(samples, OBJECTIVE, project_id="a") == 0.05
    assert value(samples, OBJECTIVE, project_id="b") == 0.05

    raw = yaml.safe_load(path.read_text())
    raw["projects"] = [
        {"id": "a", "objectives": {"error_ratio": 0.2}},
        {"id": "b", "objectives": None},
    ]
    path.write_text(yaml.safe_dump(raw))
    exporter.proc.send_signal(signal.SIGHUP)
    samples = exporter.wait_metric(OBJECTIVE, {"project_id": "a"}, lambda v: v == 0.2)
    assert value(samples, OBJECTIVE, project_id="b") is None
    assert value(samples, "llamacloud_config_last_reload_successful") == 1

    del raw["llamacloud"]["objectives"]
    raw["projects"] = [{"id": "a"}, {"id": "b", "objectives": {"error_ratio": 0.01}}]
    path.write_text(yaml.safe_dump(raw))
    exporter.proc.send_signal(signal.SIGHUP)
    samples = exporter.wait_metric(OBJECTIVE, {"project_id": "b"}, lambda v: v == 0.01)
    assert value(samples, OBJECTIVE, project_id="a") is None

    # A bad objective changes nothing, and the reload says so.
    raw["projects"][1]["objectives"] = {"error_ratio": 2}
    path.write_text(yaml.safe_dump(raw))
    exporter.proc.send_signal(signal.SIGHUP)
    wait_for(
        lambda: value(exporter.metrics(), "llamacloud_config_last_reload_successful") == 0,
        what="the failed reload",
    )
    assert value(exporter.metrics(), OBJECTIVE, project_id="b") == 0.01
    assert "projects[1].objectives.error_ratio: must be greater than 0" in exporter.logs()
