"""Exact run counting end to end: ``--once`` with a state file against the simulator, whose
histories are the ground truth, as a user running the exporter would see it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from exporter.simulator import Simulator
from tests.helpers import Samples, json_logs, parse_metrics, run_cli, value, write_config


def once(config: Path) -> tuple[Samples, list[dict[str, Any]]]:
    """One ``--once`` run: its metrics and its JSON log lines."""
    result = run_cli("--once", "--config", str(config), "--log.format", "json")
    assert result.returncode == 0, result.stderr
    return parse_metrics(result.stdout), json_logs(result.stderr)


def setup(sim: Simulator, tmp_path: Path, sessions: int = 5, **llamacloud: Any) -> tuple[str, Path]:
    pid = sim.add_project(sessions=sessions)
    config = write_config(
        tmp_path / "config.yaml",
        sim.base_url,
        [pid],
        llamacloud=llamacloud,
        state={"path": str(tmp_path / "state.db")},
    )
    return pid, config


def stops_since(sim: Simulator, pid: str, before: dict[str, int]) -> list[dict[str, Any]]:
    """The stop events each session made since ``before`` (its count of them then)."""
    return [
        stop
        for item in sim.sessions(pid)
        for stop in sim.history(pid, item["session_id"])[before.get(item["session_id"], 0) :]
    ]


def counts(sim: Simulator, pid: str) -> dict[str, int]:
    return {
        item["session_id"]: len(sim.history(pid, item["session_id"])) for item in sim.sessions(pid)
    }


def test_runs_between_polls_count_each_with_their_own_usage(sim: Simulator, tmp_path: Path) -> None:
    pid, config = setup(sim, tmp_path)
    samples, _ = once(config)  # the baseline
    assert value(samples, "llamacloud_chat_runs_total", project_id=pid) == 0
    before = counts(sim, pid)
    sids = [item["session_id"] for item in sim.sessions(pid)]
    sim.rerun(pid, sids[0], times=3)
    sim.rerun(pid, sids[1], times=40)  # enough runs that some skip an index
    new = sim.create_sessions(pid, 1)
    sim.rerun(pid, new[0], times=2)
    sim.clear_requests()
    samples, logs = once(config)
    made = stops_since(sim, pid, before)
    assert len(made) >= 45  # the new session may have run once when it was made
    assert value(samples, "llamacloud_chat_runs_total", project_id=pid) == len(made)
    assert value(samples, "llamacloud_chat_run_errors_total", project_id=pid) == sum(
        s["is_error"] for s in made
    )
    assert value(
        samples, "llamacloud_chat_tokens_total", project_id=pid, token_type="input"
    ) == sum(s["usage"]["total_input_tokens"] for s in made)
    assert value(samples, "llamacloud_chat_turns_total", project_id=pid) == sum(
        s["usage"]["turns"] for s in made
    )
    assert value(samples, "llamacloud_chat_run_duration_seconds_count", project_id=pid) == len(made)
    skipped: dict[str, int] = {}
    for s in made:
        for index_id in dict.fromkeys(s.get("skipped_index_ids") or ()):
            skipped[index_id] = skipped.get(index_id, 0) + 1
    shown = {
        labels["index_id"]: n
        for (name, frozen), n in samples.items()
        if name == "llamacloud_chat_index_skips_total"
        for labels in [dict(frozen)]
    }
    assert sum(shown.values()) == sum(skipped.values())
    assert value(samples, "llamacloud_chat_session_reads_pending", project_id=pid) == 0
    # One read per changed session, whatever the number of its runs.
    reads = [r for r in sim.requests if r.endpoint == "session"]
    assert sorted(r.session_id for r in reads) == sorted([sids[0], sids[1], new[0]])
    (line,) = [e for e in logs if e.get("event") == "poll_succeeded"]
    assert (line["reads"], line["read_runs"], line["reads_pending"]) == (3, len(made), 0)


def test_latest_counts_one_run_per_changed_session(sim: Simulator, tmp_path: Path) -> None:
    pid, config = setup(sim, tmp_path, runs="latest")
    once(config)
    sid = sim.sessions(pid)[0]["session_id"]
    sim.rerun(pid, sid, times=3)
    sim.clear_requests()
    samples, _ = once(config)
    assert value(samples, "llamacloud_chat_runs_total", project_id=pid) == 1
    assert not [r for r in sim.requests if r.endpoint == "session"]


def test_reads_beyond_the_budget_wait_and_nothing_is_lost(sim: Simulator, tmp_path: Path) -> None:
    pid, config = setup(sim, tmp_path, max_session_reads_per_poll=2)
    once(config)
    before = counts(sim, pid)
    for item in sim.sessions(pid):
        sim.rerun(pid, item["session_id"], times=2)
    pending = []
    for _ in range(3):
        samples, _ = once(config)
        pending.append(value(samples, "llamacloud_chat_session_reads_pending", project_id=pid))
    assert pending == [3, 1, 0]
    assert value(samples, "llamacloud_chat_runs_total", project_id=pid) == 10
    assert len(stops_since(sim, pid, before)) == 10


def test_a_failed_read_waits_a_deleted_session_drops_and_the_poll_succeeds(
    sim: Simulator, tmp_path: Path
) -> None:
    pid, config = setup(sim, tmp_path, sessions=3, max_retries=0)
    once(config)
    a, b, _c = (item["session_id"] for item in sim.sessions(pid))
    sim.rerun(pid, a, times=2)
    sim.rerun(pid, b, times=2)
    sim.fail_next(1, status=503, endpoint="session")
    samples, logs = once(config)
    assert value(samples, "llamacloud_up", project_id=pid) == 1
    assert value(samples, "llamacloud_chat_session_reads_pending", project_id=pid) == 1
    assert value(samples, "llamacloud_chat_runs_total", project_id=pid) == 2
    (line,) = [e for e in logs if e.get("event") == "poll_succeeded"]
    assert line["reads_failed"] == 1
    (waiting,) = [r.session_id for r in sim.requests if r.endpoint == "session" and r.status == 503]
    assert waiting in (a, b)
    sim.delete_session(pid, waiting)
    samples, logs = once(config)
    (line,) = [e for e in logs if e.get("event") == "poll_succeeded"]
    assert value(samples, "llamacloud_up", project_id=pid) == 1
    assert value(samples, "llamacloud_chat_session_reads_pending", project_id=pid) == 0
    assert line["reads_not_found"] == 1
    assert value(samples, "llamacloud_chat_runs_total", project_id=pid) == 2


def test_a_key_refused_for_histories_turns_the_project_to_latest(
    sim: Simulator, tmp_path: Path
) -> None:
    pid, config = setup(sim, tmp_path, sessions=2, max_retries=0)
    once(config)
    sid = sim.sessions(pid)[0]["session_id"]
    sim.rerun(pid, sid, times=3)
    sim.fail_next(1, status=403, endpoint="session")
    samples, logs = once(config)
    assert value(samples, "llamacloud_up", project_id=pid) == 1
    assert value(samples, "llamacloud_chat_runs_total", project_id=pid) == 1  # as latest
    (refused,) = [e for e in logs if e.get("event") == "session_reads_refused"]
    assert refused["project_id"] == pid and refused["status"] == 403
    assert "runs: latest" in refused["hint"]
