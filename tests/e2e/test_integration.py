"""The real daemon process against the simulator on loopback, scraped over HTTP."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import yaml

from exporter.simulator import Simulator
from tests.helpers import BACKTRACKING, WORDS, Exporter, session, value, wait_for, write_config

P = "proj-integration"


def test_values_new_runs_and_sessions(
    sim: Simulator, tmp_path: Path, start_exporter: Callable[..., Exporter]
) -> None:
    sim.set_sessions(P, [session("a"), session("b", is_error=True), session("c", job=None)])
    exp = start_exporter(write_config(tmp_path / "c.yaml", sim.base_url, [P]))
    m = exp.wait_metric("llamacloud_up", {"project_id": P}, lambda v: v == 1)
    assert value(m, "llamacloud_chat_sessions", project_id=P, status="ok") == 1
    assert value(m, "llamacloud_chat_sessions", project_id=P, status="error") == 1
    assert value(m, "llamacloud_chat_sessions", project_id=P, status="never_run") == 1
    assert value(m, "llamacloud_chat_session_tokens", project_id=P, token_type="input") == 200
    assert value(m, "llamacloud_chat_session_turns", project_id=P) == 4
    assert value(m, "llamacloud_chat_session_duration_seconds", project_id=P) == 3.0
    assert value(m, "llamacloud_chat_runs_total", project_id=P) == 0  # the baseline
    assert value(m, "llamacloud_project_info", project_id=P, name=P, organization_id="") == 1

    # b is re-run and fails, c runs for the first time, d appears with a run.
    sim.set_sessions(
        P,
        [
            session("a"),
            session("b", is_error=True, total_input_tokens=1000, duration_ms=250),
            session("c", total_output_tokens=5),
            session("d", turns=7),
        ],
    )
    m = exp.wait_metric("llamacloud_chat_runs_total", {"project_id": P}, lambda v: v == 3)
    assert value(m, "llamacloud_chat_run_errors_total", project_id=P) == 1
    assert value(m, "llamacloud_chat_sessions_created_total", project_id=P) == 1
    assert value(m, "llamacloud_chat_tokens_total", project_id=P, token_type="input") == 1200
    assert value(m, "llamacloud_chat_tokens_total", project_id=P, token_type="output") == 45
    assert value(m, "llamacloud_chat_turns_total", project_id=P) == 11
    assert value(m, "llamacloud_chat_run_duration_seconds_count", project_id=P) == 3
    assert value(m, "llamacloud_chat_run_duration_seconds_bucket", project_id=P, le="0.32") == 1
    assert value(m, "llamacloud_chat_run_duration_seconds_sum", project_id=P) == 3.25
    assert (
        value(
            m, "llamacloud_chat_run_token_usage_bucket", project_id=P, token_type="input", le="+Inf"
        )
        == 3
    )
    assert value(m, "llamacloud_chat_sessions", project_id=P, status="never_run") == 0
    # Further polls of unchanged data count nothing more.
    polls = len(sim.requests)
    wait_for(lambda: len(sim.requests) >= polls + 3, what="three more polls")
    assert value(exp.metrics(), "llamacloud_chat_runs_total", project_id=P) == 3


def test_outage_keeps_the_last_numbers_and_recovers(
    sim: Simulator, tmp_path: Path, start_exporter: Callable[..., Exporter]
) -> None:
    sim.set_sessions(P, [session("a"), session("b")])
    exp = start_exporter(write_config(tmp_path / "c.yaml", sim.base_url, [P]))
    exp.wait_metric("llamacloud_up", {"project_id": P}, lambda v: v == 1)
    first_success = value(
        exp.metrics(), "llamacloud_last_successful_poll_timestamp_seconds", project_id=P
    )

    sim.fail_next(100_000, status=503, detail="maintenance")
    m = exp.wait_metric("llamacloud_up", {"project_id": P}, lambda v: v == 0)
    assert value(m, "llamacloud_chat_sessions", project_id=P, status="ok") == 2
    assert value(m, "llamacloud_poll_errors_total", project_id=P, reason="server_error") >= 1  # type: ignore[operator]
    assert value(m, "llamacloud_api_requests_total", code="503") >= 3  # type: ignore[operator]
    # Data changes during the outage are invisible until a poll completes again.
    sim.set_sessions(P, [session("a"), session("b", turns=3), session("c")])
    assert value(exp.metrics(), "llamacloud_chat_sessions", project_id=P, status="ok") == 2

    sim.clear_faults()
    m = exp.wait_metric("llamacloud_up", {"project_id": P}, lambda v: v == 1)
    assert value(m, "llamacloud_chat_sessions", project_id=P, status="ok") == 3
    assert value(m, "llamacloud_chat_runs_total", project_id=P) == 2
    last = value(m, "llamacloud_last_successful_poll_timestamp_seconds", project_id=P)
    assert last is not None and first_success is not None and last > first_success
    assert "poll_failed" in exp.logs()


def test_429_with_retry_after_is_retried(
    sim: Simulator, tmp_path: Path, start_exporter: Callable[..., Exporter]
) -> None:
    sim.set_sessions(P, [session("a")])
    sim.fail_next(1, status=429, retry_after="1", detail="Too Many Requests")
    exp = start_exporter(write_config(tmp_path / "c.yaml", sim.base_url, [P]))
    m = exp.wait_metric("llamacloud_up", {"project_id": P}, lambda v: v == 1)
    assert value(m, "llamacloud_api_requests_total", code="429") == 1
    assert value(m, "llamacloud_poll_errors_total", project_id=P, reason="rate_limited") == 0
    statuses = [r.status for r in sim.requests]
    assert statuses[:2] == [429, 200]


def test_401_is_a_config_problem_named_in_the_log(
    sim: Simulator, tmp_path: Path, start_exporter: Callable[..., Exporter]
) -> None:
    secret = "llx-wrong-secret-value-42"
    sim.add_project("locked", api_key="llx-the-right-key")
    sim.set_sessions(P, [session("a")])
    config = write_config(tmp_path / "c.yaml", sim.base_url, [P])
    raw = config.read_text().replace("- id: locked", "")
    config.write_text(raw + f"- id: locked\n  api_key: {secret}\n")
    exp = start_exporter(config)
    m = exp.wait_metric(
        "llamacloud_poll_errors_total", {"project_id": "locked", "reason": "auth"}, lambda v: v >= 1
    )
    assert value(m, "llamacloud_up", project_id="locked") == 0
    assert value(m, "llamacloud_up", project_id=P) == 1  # the other project is unaffected
    assert value(m, "llamacloud_api_requests_total", code="401") >= 1  # type: ignore[operator]
    locked = [r for r in sim.requests if r.query.get("project_id") == "locked"]
    polls = len(locked)
    assert all(r.status == 401 for r in locked)
    wait_for(lambda: "poll_failed_config" in exp.logs(), what="the config error in the log")
    events = [json.loads(line) for line in exp.logs().splitlines() if line.startswith("{")]
    auth = [e for e in events if e.get("event") == "poll_failed_config"]
    assert auth[0]["project_id"] == "locked"
    assert "projects[1].api_key in the config" in auth[0]["hint"]
    # 401 is not retried: one request per poll.
    assert polls <= len(auth) + 1  # +1: a poll may be under way
    page = exp.get("/").text
    assert "failed: auth" in page
    text = exp.get("/metrics").text + exp.logs() + page
    assert secret not in text


def test_readyz_waits_for_the_first_poll_and_sigterm_exits_0(
    sim: Simulator, tmp_path: Path, start_exporter: Callable[..., Exporter]
) -> None:
    sim.set_sessions(P, [session("a")])
    sim.hang_next(1, seconds=1.5)
    exp = start_exporter(write_config(tmp_path / "c.yaml", sim.base_url, [P]), ready=False)
    assert exp.get("/readyz").status_code == 503
    wait_for(lambda: exp.get("/readyz").status_code == 200, what="/readyz")
    assert value(exp.metrics(), "llamacloud_up", project_id=P) == 1
    started = time.monotonic()
    exp.proc.send_signal(signal.SIGTERM)
    assert exp.proc.wait(15) == 0
    assert time.monotonic() - started < 15
    assert "exporter_stopped" in exp.logs()


def test_counters_survive_a_restart_with_a_state_file(
    sim: Simulator, tmp_path: Path, start_exporter: Callable[..., Exporter]
) -> None:
    state = {"path": str(tmp_path / "state" / "state.db")}
    config = write_config(tmp_path / "c.yaml", sim.base_url, [P, "gone"], state=state)
    sim.set_sessions("gone", [session("x")])
    sim.set_sessions(P, [session("a"), session("b")])
    exp = start_exporter(config)
    exp.wait_metric("llamacloud_up", {"project_id": P}, lambda v: v == 1)
    sim.set_sessions(P, [session("a", turns=5), session("b")])
    exp.wait_metric("llamacloud_chat_runs_total", {"project_id": P}, lambda v: v == 1)
    exp.proc.send_signal(signal.SIGTERM)
    assert exp.proc.wait(15) == 0

    # While the exporter is down, b is re-run and c appears; "gone" leaves the config.
    sim.set_sessions(P, [session("a", turns=5), session("b", turns=9), session("c")])
    config = write_config(tmp_path / "c.yaml", sim.base_url, [P], state=state)
    exp = start_exporter(config)
    m = exp.wait_metric("llamacloud_chat_runs_total", {"project_id": P}, lambda v: v == 3)
    assert value(m, "llamacloud_chat_sessions_created_total", project_id=P) == 1
    assert value(m, "llamacloud_chat_turns_total", project_id=P) == 5 + 9 + 2
    assert not any(labels and ("project_id", "gone") in labels for _, labels in m)


def test_sigterm_does_not_wait_for_a_hanging_request(
    sim: Simulator, tmp_path: Path, start_exporter: Callable[..., Exporter]
) -> None:
    sim.set_sessions(P, [session("a")])
    config = write_config(tmp_path / "c.yaml", sim.base_url, [P])
    config.write_text(config.read_text().replace("timeout_seconds: 2", "timeout_seconds: 120"))
    exp = start_exporter(config)
    exp.wait_metric("llamacloud_up", {"project_id": P}, lambda v: v == 1)
    sim.hang_next(1_000, seconds=120)
    # A poll is now stuck in a request that would last two minutes.
    wait_for(lambda: sim.stalled > 0, what="a request to hang")
    exp.proc.send_signal(signal.SIGTERM)
    assert exp.proc.wait(60) == 0
    assert "exporter_stopped" in exp.logs()


def test_sighup_and_post_reload_apply_a_new_config(
    sim: Simulator, tmp_path: Path, start_exporter: Callable[..., Exporter]
) -> None:
    for pid in ("a", "b", "c"):
        sim.set_sessions(pid, [session(f"{pid}1")])
    config = write_config(tmp_path / "c.yaml", sim.base_url, ["a", "b"])
    exp = start_exporter(config, "--web.enable-lifecycle")
    exp.wait_metric("llamacloud_up", {"project_id": "b"}, lambda v: v == 1)
    sim.set_sessions("a", [session("a1", turns=8)])
    exp.wait_metric("llamacloud_chat_runs_total", {"project_id": "a"}, lambda v: v == 1)

    # SIGHUP: b leaves, c arrives, a is renamed and keeps its counters.
    raw = config.read_text().replace("- id: b", "- id: c").replace("- id: a", "- id: a\n  name: A")
    config.write_text(raw)
    exp.proc.send_signal(signal.SIGHUP)
    m = exp.wait_metric("llamacloud_up", {"project_id": "c"}, lambda v: v == 1)
    assert not any(("project_id", "b") in labels for _, labels in m)
    assert value(m, "llamacloud_project_info", project_id="a", name="A", organization_id="") == 1
    assert value(m, "llamacloud_chat_runs_total", project_id="a") == 1
    assert value(m, "llamacloud_config_last_reload_successful") == 1
    assert "config_reloaded" in exp.logs()

    # A broken config changes nothing and says why; GET is refused.
    config.write_text(raw + "polling: fast\n")
    bad = httpx.post(exp.url + "/-/reload", timeout=30)
    assert bad.status_code == 500
    assert "polling: unknown key" in bad.text
    assert value(exp.metrics(), "llamacloud_config_last_reload_successful") == 0
    assert value(exp.metrics(), "llamacloud_up", project_id="c") == 1
    assert httpx.get(exp.url + "/-/reload").status_code == 405

    config.write_text(raw.replace("- id: c", "- id: c\n- id: b"))
    good = httpx.post(exp.url + "/-/reload", timeout=30)
    assert good.status_code == 200, good.text
    exp.wait_metric("llamacloud_up", {"project_id": "b"}, lambda v: v == 1)
    assert value(exp.metrics(), "llamacloud_config_last_reload_successful") == 1


def test_http_reload_is_off_unless_enabled(
    sim: Simulator, tmp_path: Path, start_exporter: Callable[..., Exporter]
) -> None:
    sim.set_sessions(P, [session("a")])
    exp = start_exporter(write_config(tmp_path / "c.yaml", sim.base_url, [P]))
    refused = httpx.post(exp.url + "/-/reload", timeout=30)
    assert refused.status_code == 403
    assert "--web.enable-lifecycle" in refused.text


def test_reloads_that_fail_in_any_way_say_so_and_echo_no_key(
    sim: Simulator, tmp_path: Path, start_exporter: Callable[..., Exporter]
) -> None:
    key = "llx-Rt5yU7iO9pA1sD3fG5hJ7kL9zX1cV3bN"
    sim.set_sessions(P, [session("a")])
    config = write_config(tmp_path / "c.yaml", sim.base_url, [P])
    good = config.read_text()
    exp = start_exporter(config, "--web.enable-lifecycle")

    # A byte that is not UTF-8, beside a key written inline.
    config.write_bytes(good.encode() + f"# {key}\n".encode() + b"# \xff\n")
    exp.proc.send_signal(signal.SIGHUP)
    exp.wait_metric("llamacloud_config_last_reload_successful", {}, lambda v: v == 0)

    # A key pasted where a key file's path belongs.
    config.write_text(
        yaml.safe_dump(
            {
                "llamacloud": {"base_url": sim.base_url, "api_key_file": key},
                "projects": [{"id": P}],
            }
        )
    )
    answer = httpx.post(exp.url + "/-/reload", timeout=30)
    assert answer.status_code == 500
    assert "llamacloud.api_key_file: cannot read the key file" in answer.text

    # An alias bomb: refused, and polling goes on.
    config.write_text(
        "a: &a [x,x,x,x,x,x,x,x,x,x]\n"
        + "".join(
            f"{n}: &{n} [{', '.join(['*' + p] * 10)}]\n"
            for p, n in zip("abcdefgh", "bcdefghi", strict=True)
        )
    )
    answer = httpx.post(exp.url + "/-/reload", timeout=30)
    assert answer.status_code == 500 and "YAML aliases" in answer.text
    before = value(exp.metrics(), "llamacloud_last_successful_poll_timestamp_seconds", project_id=P)
    exp.wait_metric(
        "llamacloud_last_successful_poll_timestamp_seconds",
        {"project_id": P},
        lambda v: before is not None and v > before,
    )
    logs = exp.logs()
    assert key[4:12] not in logs + answer.text
    assert "Task exception was never retrieved" not in logs
    assert "Traceback" not in logs
    assert logs.count("config_reload_failed") == 3


def test_a_state_file_locked_by_another_process_never_freezes_the_exporter(
    sim: Simulator, tmp_path: Path, start_exporter: Callable[..., Exporter]
) -> None:
    sim.set_sessions(P, [session("a")])
    state = tmp_path / "state.db"
    exp = start_exporter(
        write_config(tmp_path / "c.yaml", sim.base_url, [P], state={"path": str(state)})
    )
    exp.wait_metric("llamacloud_up", {"project_id": P}, lambda v: v == 1)
    # Another process (a backup, sqlite3 in a shell) holds the database for a while.
    holder = sqlite3.connect(str(state), timeout=0, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        exp.wait_metric("llamacloud_state_save_failures_total", {}, lambda v: v >= 1, timeout=60)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    # Polling never stopped, saves work again, and SIGTERM still stops it at once.
    sim.set_sessions(P, [session("a", turns=9)])
    exp.wait_metric("llamacloud_chat_runs_total", {"project_id": P}, lambda v: v == 1)
    failures = value(exp.metrics(), "llamacloud_state_save_failures_total")
    last = value(exp.metrics(), "llamacloud_last_successful_poll_timestamp_seconds", project_id=P)
    exp.wait_metric(
        "llamacloud_last_successful_poll_timestamp_seconds",
        {"project_id": P},
        lambda v: last is not None and v > last,
    )
    assert value(exp.metrics(), "llamacloud_state_save_failures_total") == failures
    exp.proc.send_signal(signal.SIGTERM)
    assert exp.proc.wait(15) == 0
    assert "state_save_failed" in exp.logs()


def test_a_closed_log_pipe_never_stops_the_polls(sim: Simulator, tmp_path: Path) -> None:
    """stderr's reader goes away: every log line fails from then on, and the exporter goes on
    polling and saving, counting the lines it dropped."""
    import os
    import subprocess

    from tests.helpers import REPO, Exporter, exporter_command, free_port

    sim.set_sessions(P, [session("a"), session("b")])
    config = write_config(
        tmp_path / "c.yaml", sim.base_url, [P], state={"path": str(tmp_path / "state.db")}
    )
    port = free_port()
    proc = subprocess.Popen(
        exporter_command(config, port, "--log.format", "json"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        exp = Exporter(proc, f"http://127.0.0.1:{port}", tmp_path / "none.log")  # type: ignore[arg-type]
        exp.wait_metric("llamacloud_up", {"project_id": P}, lambda v: v == 1)
        assert proc.stderr is not None
        proc.stderr.close()  # the reader is gone: the next write gets EPIPE
        for runs in (1, 2):
            sim.set_sessions(P, [session("a", turns=2 + runs), session("b")])
            exp.wait_metric(
                "llamacloud_chat_runs_total", {"project_id": P}, lambda v, r=runs: v == r
            )
        m = exp.wait_metric("llamacloud_log_lines_dropped_total", {}, lambda v: v > 0)
        assert value(m, "llamacloud_up", project_id=P) == 1
        assert value(m, "llamacloud_state_save_failures_total") == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except Exception:
            proc.kill()
            proc.wait()
    # The saves went on too: the state file holds the last count.
    with sqlite3.connect(tmp_path / "state.db") as db:
        (totals,) = db.execute("SELECT data FROM totals WHERE project_id = ?", (P,)).fetchone()
    assert json.loads(totals)["runs"] == 2


def test_a_backtracking_error_class_never_freezes_the_daemon(
    sim: Simulator, tmp_path: Path, start_exporter: Callable[..., Exporter]
) -> None:
    """An expression that Python's re would backtrack on for ever, against 4 KiB of words
    from the API: classified at once (RE2), and the daemon answers and stops as ever."""
    sim.set_sessions(P, [session("a"), session("b")])
    classes = [{"name": "slow", "match": BACKTRACKING}]
    config = write_config(tmp_path / "c.yaml", sim.base_url, [P], detail={"error_classes": classes})
    exp = start_exporter(config)
    exp.wait_metric("llamacloud_up", {"project_id": P}, lambda v: v == 1)
    sim.set_sessions(
        P,
        [
            session("a", is_error=True, error=WORDS),
            session("b", is_error=True, error="upstream call: timeout"),
        ],
    )
    by_class = "llamacloud_chat_run_errors_by_class_total"
    m = exp.wait_metric(by_class, {"project_id": P, "error_class": "slow"}, lambda v: v == 1)
    assert value(m, by_class, project_id=P, error_class="other") == 1
    assert exp.get("/healthz").status_code == 200

    # A reload to an expression RE2 cannot run changes nothing and says why.
    classes[0]["match"] = "(?i)timed? ?out(?! after)"
    write_config(config, sim.base_url, [P], detail={"error_classes": classes})
    exp.proc.send_signal(signal.SIGHUP)
    m = exp.wait_metric("llamacloud_config_last_reload_successful", {}, lambda v: v == 0)
    assert value(m, by_class, project_id=P, error_class="slow") == 1
    assert "detail.error_classes[0].match: invalid regular expression (RE2 syntax" in exp.logs()

    exp.proc.send_signal(signal.SIGTERM)
    assert exp.proc.wait(10) == 0
    assert "exporter_stopped" in exp.logs()
