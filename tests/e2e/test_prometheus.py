"""End to end: simulator -> exporter -> a real Prometheus with the shipped rules and dashboard
-> a real Alertmanager with the shipped routes -> a webhook receiver.

Proves what unit tests cannot: Prometheus scrapes every metric of the contract, every dashboard
query runs against real data, a failing project's alert reaches a receiver grouped by project,
the inhibit rules hold back what would page twice, and an injected error spike trips the
error-rate alert. The rules run with every duration divided by ``TIME_SCALE`` (minutes become
seconds), so that they fire within the test as they would within the hour.
"""

from __future__ import annotations

import http.server
import json
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.simulator import DEFAULT_API_KEY, Simulator
from tests.helpers import NOT_YET_EXPOSED, REPO, free_port, lint_problems, tool, wait_for

pytestmark = pytest.mark.slow

RULE_FILES = sorted((REPO / "deploy" / "prometheus" / "rules").glob("*.yml"))
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "llamacloud-exporter.json"
ALERTMANAGER_CONFIG = REPO / "deploy" / "alertmanager" / "alertmanager.yml"
# The shipped rules' durations (range selectors, offsets, for, group intervals) are divided by
# this: a 5-minute rate becomes a 5-second one, a 10-minute "for" 10 seconds.
TIME_SCALE = 60
DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
# A project the simulator does not know: its polls fail (404), so it is down on purpose.
MISSING_PROJECT = "00000000-0000-4000-8000-00000000dead"
# Waits on Prometheus and Alertmanager: their API may answer with an error or no JSON while
# they start.
PROMETHEUS: dict[str, Any] = {"exceptions": (OSError, ValueError), "interval": 0.25}
DEADLINE = 60.0

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


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def scaled(duration: str) -> str:
    """A Prometheus duration (``1h30m``) divided by ``TIME_SCALE``, in milliseconds."""
    seconds = sum(int(n) * SECONDS[unit] for n, unit in DURATION.findall(duration))
    assert DURATION.sub("", duration) == "", duration
    return f"{round(seconds * 1000 / TIME_SCALE)}ms"


def scaled_rules(directory: Path) -> list[Path]:
    """The shipped rule files with every duration divided by ``TIME_SCALE``; thresholds and
    everything else as shipped."""
    selector = re.compile(r"(\[|offset )(\w+)")
    written = []
    for path in RULE_FILES:
        document = yaml.safe_load(path.read_text())
        for group in document["groups"]:
            if "interval" in group:
                group["interval"] = scaled(group["interval"])
            for rule in group["rules"]:
                rule["expr"] = selector.sub(lambda m: m[1] + scaled(m[2]), rule["expr"])
                if "for" in rule:
                    rule["for"] = scaled(rule["for"])
        target = directory / path.name
        target.write_text(yaml.safe_dump(document, sort_keys=False))
        written.append(target)
    return written


class Receiver(http.server.ThreadingHTTPServer):
    """Alertmanager's webhook receiver: keeps every notification it is sent."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ReceiverHandler)
        self.notifications: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"

    def received(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.notifications)


class ReceiverHandler(http.server.BaseHTTPRequestHandler):
    disable_nagle_algorithm = True
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with self.server.lock:
            self.server.notifications.append(json.loads(body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: pytest shows the receiver's notifications when a test fails."""


def alertmanager_config(directory: Path, receiver: Receiver) -> Path:
    """The shipped Alertmanager config, its routes and inhibit rules as they are, with the
    webhook receiver as its default receiver and a group sent a second after its first alert."""
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    route = config["route"]
    route.update(group_wait="1s", group_interval="1s")
    (default,) = [r for r in config["receivers"] if r["name"] == route["receiver"]]
    default["webhook_configs"] = [{"url": receiver.url, "send_resolved": False}]
    path = directory / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@dataclass
class Stack:
    sim: Simulator
    exporter_url: str
    prometheus_url: str
    alertmanager_url: str
    receiver: Receiver
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

    def alertmanager(self, path: str, payload: Any = None) -> Any:
        """Alertmanager's API v2: a GET, or a POST of ``payload``."""
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(
            f"{self.alertmanager_url}/api/v2{path}",
            data=data,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            body = response.read()
        return json.loads(body) if body else None


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Simulator, exporter, Prometheus, Alertmanager and a webhook receiver on loopback, with
    the simulator evolving meanwhile."""
    prometheus = tool("prometheus")
    tool("promtool")
    # Debian's package names it prometheus-alertmanager; upstream's archive, alertmanager.
    alertmanager = shutil.which("prometheus-alertmanager") or tool("alertmanager")
    tmp = tmp_path_factory.mktemp("e2e")
    sim = Simulator(projects=2, sessions_per_project=50, seed=11, error_share=0.1)
    # The listed sessions start with some errors, but new runs succeed until the spike test
    # sets error_share to 1.0: no random streak of failures can trip the alert before it.
    sim.error_share = 0.0
    processes: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    stepping = threading.Event()
    stepper: threading.Thread | None = None
    receiver = Receiver()
    serving = threading.Thread(target=receiver.serve_forever, name="webhook", daemon=True)
    serving.start()

    def launch(name: str, command: list[str], port: int, ready: str) -> str:
        """Start ``command``, serving on ``port``, its output in ``name``.log; its URL once
        ``ready`` answers 200."""
        log = tmp / f"{name}.log"
        logs.append(log)
        processes.append(subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT))
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: http_get(url + ready)[0] == 200, DEADLINE, f"{name} {ready}", **PROMETHEUS)
        return url

    try:
        base_url = sim.start()
        project_ids = sim.project_ids
        exporter_port = free_port()
        config = tmp / "exporter.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "llamacloud": {
                        "base_url": base_url,
                        "api_key": DEFAULT_API_KEY,
                        "objectives": {"error_ratio": 0.05},  # the burn-rate panels' data
                    },
                    "projects": [
                        *({"id": pid, "name": f"project-{n}"} for n, pid in enumerate(project_ids)),
                        {"id": MISSING_PROJECT, "name": "missing"},
                    ],
                    # Lists the simulator's projects too (the configured entries win): the
                    # discovery panels have data.
                    "discovery": {"organization_id": sim.organization_id},
                    "poll_interval_seconds": 1,
                }
            )
        )
        exporter_url = launch(
            "exporter",
            [
                *(sys.executable, "-m", "exporter", "--config", str(config)),
                *("--web.listen-address", f"127.0.0.1:{exporter_port}"),
                *("--log.format", "json"),
            ],
            exporter_port,
            "/readyz",
        )

        alertmanager_port = free_port()
        alertmanager_url = launch(
            "alertmanager",
            [
                alertmanager,
                f"--config.file={alertmanager_config(tmp, receiver)}",
                f"--storage.path={tmp / 'alertmanager'}",
                f"--web.listen-address=127.0.0.1:{alertmanager_port}",
                "--cluster.listen-address=",  # no gossip port: a single instance
                "--log.level=warn",
            ],
            alertmanager_port,
            "/-/ready",
        )

        prometheus_port = free_port()
        prometheus_config = tmp / "prometheus.yml"
        prometheus_config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(path) for path in scaled_rules(tmp)],
                    "alerting": {
                        "alertmanagers": [
                            {"static_configs": [{"targets": [f"127.0.0.1:{alertmanager_port}"]}]}
                        ]
                    },
                    "scrape_configs": [
                        {
                            "job_name": "llamacloud-exporter",
                            "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}],
                        }
                    ],
                }
            )
        )
        prometheus_url = launch(
            "prometheus",
            [
                prometheus,
                f"--config.file={prometheus_config}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{prometheus_port}",
                "--enable-feature=exemplar-storage",  # scrapes OpenMetrics, keeps exemplars
                "--log.level=warn",
            ],
            prometheus_port,
            "/-/ready",
        )

        def step() -> None:
            """Re-runs, new and deleted sessions twice a second, so counters move."""
            while not stepping.wait(0.5):
                sim.step()

        stepper = threading.Thread(target=step, name="simulator-steps", daemon=True)
        stepper.start()
        yield Stack(sim, exporter_url, prometheus_url, alertmanager_url, receiver, project_ids)
    finally:
        stepping.set()
        receiver.shutdown()
        receiver.server_close()
        if stepper is not None:
            stepper.join(timeout=10)
        for process in reversed(processes):
            stop(process)
        sim.stop()
        for log in logs:  # shown by pytest when a test of this module failed
            if log.exists():
                print(f"--- {log.name} (tail)\n{log.read_text(errors='replace')[-4000:]}")
        print(f"--- webhook notifications\n{json.dumps(receiver.received())[-4000:]}")


def test_every_contract_metric_has_series(stack: Stack) -> None:
    for name in (*PER_PROJECT, *GLOBAL):
        wait_for(partial(stack.query, name), DEADLINE, f"series of {name}", **PROMETHEUS)
    for name in PER_PROJECT:
        unlabelled = stack.query(f'{name}{{project_id=""}}')
        assert not unlabelled, f"{name} has series without project_id: {unlabelled}"
    for pid in stack.project_ids:
        counted = f'increase(llamacloud_chat_runs_total{{project_id="{pid}"}}[1m]) > 0'
        wait_for(partial(stack.query, counted), DEADLINE, f"runs counted for {pid}", **PROMETHEUS)
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

    wait_for(evaluated, DEADLINE, "every rule evaluated healthy", **PROMETHEUS)
    wait_for(
        lambda: stack.query("project_id:llamacloud_chat_run_error_ratio:rate5m"),
        DEADLINE,
        "the recorded error rate",
        **PROMETHEUS,
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
        if any(name in expr for name in NOT_YET_EXPOSED):
            stack.query(expand(expr, everything))  # runs, and has no data to show yet
            continue
        # "All" selected: data for every panel, the failing project's poll errors included.
        expanded = expand(expr, everything)
        wait_for(
            partial(stack.query, expanded), DEADLINE, f"data for panel {title!r}", **PROMETHEUS
        )
        # One healthy project selected: the query still runs.
        stack.query(expand(expr, stack.project_ids[:1]))


def test_live_metrics_pass_promtool_check_metrics(stack: Stack) -> None:
    """Once runs were observed (histograms filled), the exposition still lints clean."""
    wait_for(
        lambda: stack.query("sum(llamacloud_chat_run_duration_seconds_count) > 0"),
        DEADLINE,
        "observed runs",
        **PROMETHEUS,
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
        found = wait_for(
            partial(exemplars, stack, query), DEADLINE, f"exemplars of {query}", **PROMETHEUS
        )
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
    states = wait_for(
        lambda: alert_states(stack, "LlamaCloudProjectDown"),
        DEADLINE,
        "LlamaCloudProjectDown pending",
        **PROMETHEUS,
    )
    assert set(states) == {MISSING_PROJECT}
    assert states[MISSING_PROJECT] in {"pending", "firing"}


def notification(stack: Stack, alertname: str, project_id: str) -> dict[str, Any] | None:
    """The first notification the receiver got for the group of ``alertname`` and project."""
    for sent in stack.receiver.received():
        if sent["groupLabels"] == {"alertname": alertname, "project_id": project_id}:
            return sent
    return None


def test_failing_project_reaches_the_receiver_grouped_by_project(stack: Stack) -> None:
    """Prometheus fires LlamaCloudProjectDown from the exporter's real failing polls; the
    shipped routes send it to the receiver in a group of its own, by alert and project."""
    shipped = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())["route"]
    assert shipped["group_by"] == ["alertname", "project_id"]
    sent = wait_for(
        lambda: notification(stack, "LlamaCloudProjectDown", MISSING_PROJECT),
        DEADLINE,
        "a LlamaCloudProjectDown notification",
        **PROMETHEUS,
    )
    assert sent["receiver"] == shipped["receiver"]
    assert sent["status"] == "firing"
    assert sent["commonLabels"]["severity"] == "warning"
    (only,) = sent["alerts"]
    assert only["labels"]["project_id"] == MISSING_PROJECT
    assert only["labels"]["instance"] == stack.exporter_url.removeprefix("http://")
    assert only["annotations"]["runbook_url"] == "deploy/RUNBOOK.md#llamacloudprojectdown"
    # No notification about the healthy projects.
    about = {n["groupLabels"].get("project_id") for n in stack.receiver.received()}
    assert not about & set(stack.project_ids), stack.receiver.received()


def alertmanager_state(stack: Stack, labels: dict[str, str]) -> str | None:
    """Alertmanager's state of the alert with these labels (``active``, ``suppressed``), or
    None while it has none or has not processed it; a real alert may carry more labels."""
    query = urllib.parse.urlencode([("filter", f'{k}="{v}"') for k, v in labels.items()])
    found = stack.alertmanager(f"/alerts?{query}")
    states = {alert["status"]["state"] for alert in found}
    return None if len(found) != 1 or states == {"unprocessed"} else states.pop()


def alert(name: str, project_id: str, severity: str = "warning") -> dict[str, str]:
    return {"alertname": name, "project_id": project_id, "severity": severity}


def test_alertmanager_inhibits_what_would_page_twice(stack: Stack) -> None:
    """The shipped inhibit rules: a project down silences its chat alerts (not another
    project's), a critical budget burn its warning, an absent exporter everything else. The
    real LlamaCloudProjectDown from Prometheus is a source; the other alerts are sent to
    Alertmanager's API as Prometheus sends them."""
    healthy = stack.project_ids[0]
    down = {"alertname": "LlamaCloudProjectDown", "project_id": MISSING_PROJECT}
    wait_for(
        lambda: alertmanager_state(stack, down) == "active",
        DEADLINE,
        "the project down, active",
        **PROMETHEUS,
    )
    expected = [
        # The down project's chat alerts say nothing new: its metrics are frozen.
        (alert("LlamaCloudChatErrorRateHigh", MISSING_PROJECT), "suppressed"),
        (alert("LlamaCloudChatErrorBudgetBurn", MISSING_PROJECT, "critical"), "suppressed"),
        (alert("LlamaCloudTokenBurnHigh", MISSING_PROJECT), "suppressed"),
        # A healthy project's alerts page, its budget burn warning behind its critical one.
        (alert("LlamaCloudChatErrorRateHigh", healthy), "active"),
        (alert("LlamaCloudChatErrorBudgetBurn", healthy, "critical"), "active"),
        (alert("LlamaCloudChatErrorBudgetBurn", healthy), "suppressed"),
    ]
    ends = datetime.fromtimestamp(time.time() + 60, timezone.utc).isoformat()
    stack.alertmanager("/alerts", [{"labels": labels, "endsAt": ends} for labels, _ in expected])
    for labels, state in expected:
        check = partial(alertmanager_state, stack, labels)
        wait_for(lambda c=check, s=state: c() == s, DEADLINE, f"{labels} {state}", **PROMETHEUS)

    # No exporter scraped: every other alert, the project down included, is held back.
    absent = {"alertname": "LlamaCloudExporterAbsent", "severity": "critical"}
    stack.alertmanager("/alerts", [{"labels": absent, "endsAt": ends}])
    for labels in (down, alert("LlamaCloudChatErrorRateHigh", healthy)):
        check = partial(alertmanager_state, stack, labels)
        wait_for(lambda c=check: c() == "suppressed", DEADLINE, f"{labels} held back", **PROMETHEUS)
    assert alertmanager_state(stack, absent) == "active"


def test_error_spike_trips_the_error_rate_alert(stack: Stack) -> None:
    """Runs last. Quiet while runs succeed; pending once every new run fails, against the
    error-free history before it (at least 30 recorded rates, the scaled half-hour)."""
    wait_for(
        lambda: stack.query("project_id:llamacloud_chat_runs:rate5m >= 0.02"),
        DEADLINE,
        "steady runs",
        **PROMETHEUS,
    )
    wait_for(
        lambda: stack.query(
            "count_over_time(project_id:llamacloud_chat_runs:rate5m[30s]) >= 25"
            " and min_over_time(project_id:llamacloud_chat_runs:rate5m[30s]) > 0"
        ),
        DEADLINE,
        "half a minute of runs",
        **PROMETHEUS,
    )
    assert not stack.query("project_id:llamacloud_chat_run_error_ratio:rate5m > 0")
    assert not alert_states(stack, "LlamaCloudChatErrorRateHigh"), "alert before the spike"
    stack.sim.error_share = 1.0
    try:
        states = wait_for(
            lambda: alert_states(stack, "LlamaCloudChatErrorRateHigh"),
            DEADLINE,
            "LlamaCloudChatErrorRateHigh pending or firing",
            **PROMETHEUS,
        )
    finally:
        stack.sim.error_share = 0.0
    assert set(states) <= set(stack.project_ids)
    assert set(states.values()) <= {"pending", "firing"}
