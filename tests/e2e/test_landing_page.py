"""The landing page as a browser shows it: a project's id, and its name only when it has one."""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

from exporter.simulator import Simulator
from tests.helpers import session, write_config


def rows(page: str) -> dict[str, list[str]]:
    """Each table row's cells, by the first (the project id)."""
    found: dict[str, list[str]] = {}
    for row in re.findall(r"<tr>(.*?)</tr>", page, re.S):
        cells = [html.unescape(c) for c in re.findall(r"<td>(.*?)</td>", row, re.S)]
        if cells:
            found[cells[0]] = cells
    return found


def test_a_project_without_a_name_shows_a_dash_not_its_id_twice(
    sim: Simulator, tmp_path: Path, start_exporter: Any
) -> None:
    for pid in ("unnamed", "named"):
        sim.set_sessions(pid, [session("s1")])
    config = write_config(
        tmp_path / "c.yaml",
        sim.base_url,
        [],
        projects=[{"id": "unnamed"}, {"id": "named", "name": "production"}],
    )
    exporter = start_exporter(config)
    page = exporter.get("/").text
    assert "<th>Project</th><th>Name</th>" in page
    shown = rows(page)
    assert shown["unnamed"][:2] == ["unnamed", "\u2014"]
    assert shown["named"][:2] == ["named", "production"]
    # The metric keeps a name to show: the id, as before.
    metrics = exporter.get("/metrics").text
    assert 'llamacloud_project_info{name="unnamed",organization_id="",project_id="unnamed"}' in (
        metrics
    )
