"""End to end: simulator -> exporter -> a real Prometheus with the shipped rules and dashboard.

Proves what unit tests cannot: Prometheus scrapes every metric of the contract, every dashboard
query runs against real data, and an injected error spike trips the error-rate alert.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from exporter.simulator import DEFAULT_API_KEY, Simulator
from tests.conftest import free_port, lint_problems, tool

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
RULE_FILES = sorted((REPO / "deploy" / "prometheus" / "rules").glob("*.yml"))
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "llamacloud-exporter.json"
# A project the simulator does not know: its polls fail (404), so it is down on purpose.
MISSING_PROJECT = "00000000-0000-4000-8000-00000000dead"
DEADLINE = 60.0
T = TypeVar("T")

GAUGES = (
    "llamacloud_chat_sessions",
    "llamacloud_chat_session_tokens",
    "llamacloud_chat_session_turns",
    "llamacloud_chat_session_duration_seconds",
    "llamacloud_chat_last_updated_timestamp_seconds",
    "llamacloud_chat_sessions_by_index",
    "llamacloud_project_info",
    "llamacloud_up",
    "llamacloud_poll_duration_seconds",
    "llamacloud_last_successful_poll_timestamp_seconds",
)
COUNTERS = (
    "llamacloud_chat_runs_total",
    "llamacloud_chat_run_errors_total",
    "llamacloud_chat_run_errors_by_class_total",
    "llamacloud_chat_tokens_total",
    "llamacloud_chat_turns_total",
    "llamacloud_chat_sessions_created_total",
    "llamacloud_poll_errors_total",
    "llamacloud_invalid_items_total",
)
HISTOGRAMS = ("llamacloud_chat_run_duration_seconds", "llamacloud_chat_run_token_usage")
GLOBAL = ("llamacloud_api_requests_total", "llamacloud_exporter_build_info")
PER_PROJECT = (
    *GAUGES,
    *COUNTERS,
    *(f"{name}_{suffix}" for name in HISTOGRAMS for suffix in ("bucket", "sum", "count")),
)


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def eventually(check: Callable[[], T | None], what: str, timeout: float = DEADLINE) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            result = check()
        except (OSError, ValueError) as exc:
            last = exc
        else:
            if result:
                return result
            last = result
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@dataclass
class Stack:
    sim: Simulator
    exporter_url: str
    prometheus_url: str
    project_ids: list[str]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query; a PromQL error fails the test at once instead of timing out."""
        url = f"{self.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        status, body = http_get(url)
        answer = json.loads(body)
        assert status == 200 and answer["status"] == "success", f"{expr}: {answer}"
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def api(self, path: str) -> Any:
        status, body = http_get(f"{self.prometheus_url}{path}")
        assert status == 200, body
        return json.loads(body)["data"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Simulator, exporter and Prometheus on loopback, with the simulator evolving meanwhile."""
    prometheus = tool("prometheus")
    tool("promtool")
    tmp = tmp_path_factory.mktemp("e2e")
    sim = Simulator(projects=2, sessions_per_project=50, seed=11, error_share=0.1)
    # The listed sessions start with some errors, but new runs succeed until the spike test
    # sets error_share to 1.0: no random streak of failures can trip the alert before it.
    sim.error_share = 0.0
    processes: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    stepping = threading.Event()
    stepper: threading.Thread | None = None
    try:
        base_url = sim.start()
        project_ids = sim.project_ids
        exporter_port = free_port()
        config = tmp / "exporter.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "llamacloud": {"base_url": base_url, "api_key": DEFAULT_API_KEY},
                    "projects": [
                        *({"id": pid, "name": f"project-{n}"} for n, pid in enumerate(project_ids)),
                        {"id": MISSING_PROJECT, "name": "missing"},
                    ],
                    "poll_interval_seconds": 1,
                }
            )
        )
        exporter_log = tmp / "exporter.log"
        logs.append(exporter_log)
        processes.append(
            subprocess.Popen(
                [
                    *(sys.executable, "-m", "exporter", "--config", str(config)),
                    *("--web.listen-address", f"127.0.0.1:{exporter_port}"),
                    *("--log.format", "json"),
                ],
                stdout=exporter_log.open("wb"),
                stderr=subprocess.STDOUT,
            )
        )
        exporter_url = f"http://127.0.0.1:{exporter_port}"
        eventually(lambda: http_get(f"{exporter_url}/readyz")[0] == 200, "exporter /readyz")

        prometheus_port = free_port()
        prometheus_config = tmp / "prometheus.yml"
        prometheus_config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(path) for path in RULE_FILES],
                    "scrape_configs": [
                        {
                            "job_name": "llamacloud-exporter",
                            "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}],
                        }
                    ],
                }
            )
        )
        prometheus_log = tmp / "prometheus.log"
        logs.append(prometheus_log)
        processes.append(
            subprocess.Popen(
                [
                    prometheus,
                    f"--config.file={prometheus_config}",
                    f"--storage.tsdb.path={tmp / 'data'}",
                    f"--web.listen-address=127.0.0.1:{prometheus_port}",
                    "--enable-feature=exemplar-storage",  # scrapes OpenMetrics, keeps exemplars
                    "--log.level=warn",
                ],
                stdout=prometheus_log.open("wb"),
                stderr=subprocess.STDOUT,
            )
        )
        prometheus_url = f"http://127.0.0.1:{prometheus_port}"
        eventually(lambda: http_get(f"{prometheus_url}/-/ready")[0] == 200, "Prometheus ready")

        def step() -> None:
            """Re-runs, new and deleted sessions twice a second, so counters move."""
            while not stepping.wait(0.5):
                sim.step()

        stepper = threading.Thread(target=step, name="simulator-steps", daemon=True)
        stepper.start()
        yield Stack(sim, exporter_url, prometheus_url, project_ids)
    finally:
        stepping.set()
        if stepper is not None:
            stepper.join(timeout=10)
        for process in reversed(processes):
            stop(process)
        sim.stop()
        for log in logs:  # shown by pytest when a test of this module failed
            if log.exists():
                print(f"--- {log.name} (tail)\n{log.read_text(errors='replace')[-4000:]}")


def test_every_contract_metric_has_series(stack: Stack) -> None:
    for name in (*PER_PROJECT, *GLOBAL):
        eventually(partial(stack.query, name), f"series of {name}")
    for name in PER_PROJECT:
        unlabelled = stack.query(f'{name}{{project_id=""}}')
        assert not unlabelled, f"{name} has series without project_id: {unlabelled}"
    for pid in stack.project_ids:
        counted = f'increase(llamacloud_chat_runs_total{{project_id="{pid}"}}[1m]) > 0'
        eventually(partial(stack.query, counted), f"runs counted for {pid}")
    down = stack.query(f'llamacloud_up{{project_id="{MISSING_PROJECT}"}}')
    assert [float(s["value"][1]) for s in down] == [0.0]


def test_shipped_rules_load_and_evaluate(stack: Stack) -> None:
    expected = {
        rule.get("record") or rule.get("alert")
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    }

    def evaluated() -> bool:
        rules = [rule for group in stack.api("/api/v1/rules")["groups"] for rule in group["rules"]]
        assert {rule["name"] for rule in rules} == expected
        return all(rule["health"] == "ok" for rule in rules)

    eventually(evaluated, "every rule evaluated healthy")
    eventually(
        lambda: stack.query("project_id:llamacloud_chat_run_error_ratio:rate5m"),
        "the recorded error rate",
    )


def expand(expr: str, project_ids: list[str]) -> str:
    """Grafana's substitution for a multi-value regex variable, and a fixed rate interval.

    Grafana escapes regex metacharacters with a doubled backslash, as a PromQL string needs.
    """
    alternatives = "|".join(re.sub(r"([\\^$*+?.()|{}\[\]])", r"\\\\\1", pid) for pid in project_ids)
    return expr.replace("$project_id", f"({alternatives})").replace("$__rate_interval", "1m")


def test_every_dashboard_query_returns_data(stack: Stack) -> None:
    board = json.loads(DASHBOARD.read_text())
    targets = [
        (panel["title"], target["expr"])
        for panel in board["panels"]
        for target in panel.get("targets", [])
        if target.get("expr")
    ]
    assert targets
    everything = [*stack.project_ids, MISSING_PROJECT]
    for title, expr in targets:
        # "All" selected: data for every panel, the failing project's poll errors included.
        expanded = expand(expr, everything)
        eventually(partial(stack.query, expanded), f"data for panel {title!r}")
        # One healthy project selected: the query still runs.
        stack.query(expand(expr, stack.project_ids[:1]))


def test_live_metrics_pass_promtool_check_metrics(stack: Stack) -> None:
    """Once runs were observed (histograms filled), the exposition still lints clean."""
    eventually(
        lambda: stack.query("sum(llamacloud_chat_run_duration_seconds_count) > 0"),
        "observed runs",
    )
    status, body = http_get(f"{stack.exporter_url}/metrics")
    assert status == 200
    lint = subprocess.run(
        [tool("promtool"), "check", "metrics"], input=body, capture_output=True, timeout=60
    )
    output = (lint.stdout + lint.stderr).decode()
    assert not lint_problems(output), output


def exemplars(stack: Stack, query: str) -> list[tuple[dict[str, str], dict[str, Any]]]:
    """(series labels, exemplar) pairs Prometheus stored."""
    # Stamped with the simulator's clock, which the steps below run ahead of the real one.
    params = {"query": query, "start": "0", "end": str(stack.sim.clock.timestamp() + 60)}
    found = stack.api("/api/v1/query_exemplars?" + urllib.parse.urlencode(params))
    return [(series["seriesLabels"], ex) for series in found for ex in series["exemplars"]]


def test_exemplars_lead_from_a_spike_to_its_session(stack: Stack) -> None:
    """Counters and duration buckets carry the session of their latest run, which Prometheus
    stores and returns: the session the simulator has, stamped when it ran."""
    for query in ("llamacloud_chat_runs_total", "llamacloud_chat_run_duration_seconds_bucket"):
        found = eventually(partial(exemplars, stack, query), f"exemplars of {query}")
        known = {
            item["session_id"]: item["last_updated_at"]
            for pid in stack.project_ids
            for item in stack.sim.sessions(pid)
        }
        matched = [
            (labels, ex) for labels, ex in found if ex["labels"]["session_id"] in known
        ]  # the rest ran again or were deleted since: their exemplar moved on
        assert matched, found
        for labels, ex in matched:
            assert labels["project_id"] in stack.project_ids
            assert set(ex["labels"]) == {"session_id"}
            # The run's last_updated_at: at most the session's latest (it may be touched since).
            latest = datetime.fromisoformat(known[ex["labels"]["session_id"]])
            if latest.tzinfo is None:
                latest = latest.replace(tzinfo=timezone.utc)
            assert 1.7e9 < float(ex["timestamp"]) <= latest.timestamp() + 1e-3
        if query.endswith("_bucket"):
            for labels, ex in matched:  # each bucket's exemplar is a run of that bucket
                assert float(ex["value"]) <= float(labels["le"])
        else:
            assert {float(ex["value"]) for _, ex in matched} == {1.0}


def alert_states(stack: Stack, name: str) -> dict[str, str]:
    return {
        alert["labels"].get("project_id", ""): alert["state"]
        for alert in stack.api("/api/v1/alerts")["alerts"]
        if alert["labels"]["alertname"] == name
    }


def test_failing_project_trips_project_down(stack: Stack) -> None:
    states = eventually(
        lambda: alert_states(stack, "LlamaCloudProjectDown"), "LlamaCloudProjectDown pending"
    )
    assert set(states) == {MISSING_PROJECT}
    assert states[MISSING_PROJECT] in {"pending", "firing"}


def test_error_spike_trips_the_error_rate_alert(stack: Stack) -> None:
    """Runs last. Quiet while runs succeed; pending once every new run fails."""
    eventually(lambda: stack.query("project_id:llamacloud_chat_runs:rate5m >= 0.02"), "steady runs")
    assert not stack.query("project_id:llamacloud_chat_run_error_ratio:rate5m > 0")
    assert not alert_states(stack, "LlamaCloudChatErrorRateHigh"), "alert before the spike"
    stack.sim.error_share = 1.0
    try:
        states = eventually(
            lambda: alert_states(stack, "LlamaCloudChatErrorRateHigh"),
            "LlamaCloudChatErrorRateHigh pending or firing",
        )
    finally:
        stack.sim.error_share = 0.0
    assert set(states) <= set(stack.project_ids)
    assert set(states.values()) <= {"pending", "firing"}
