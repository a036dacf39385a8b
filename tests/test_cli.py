"""cli: the command line: --version, --check-config, --once, --demo and the shard flags, and
the daemon's start (its state file, its loops), as a user runs them."""

from __future__ import annotations

import asyncio
import json
import resource
import signal
import sqlite3
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from exporter import __version__
from exporter.simulator import Simulator
from exporter.store import StateFile
from tests.helpers import (
    REPO,
    free_port,
    parse_metrics,
    run_cli,
    session,
    value,
    wait_for,
    write_config,
)


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"llamacloud-exporter {__version__}"


def test_check_config_lists_every_problem_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("projects:\n  - id: a\n  - name: b\npoll_interval: 5\n")
    result = run_cli("--check-config", "--config", str(bad), env={"LLAMA_CLOUD_API_KEY": "llx-k"})
    assert result.returncode == 2
    assert "projects[1].id: required" in result.stderr
    assert "poll_interval: unknown key (did you mean poll_interval_seconds?)" in result.stderr


def test_check_config_refuses_what_re2_cannot_run_and_names_the_key(tmp_path: Path) -> None:
    bad = write_config(
        tmp_path / "bad.yaml",
        "http://127.0.0.1:1",
        ["a"],
        discovery={"include": "^prod(?=-eu)"},
        detail={
            "error_classes": [
                {"name": "timeout", "match": "(?i)timed? ?out"},
                {"name": "repeated", "match": r"(\w+) \1"},
            ]
        },
    )
    result = run_cli("--check-config", "--config", str(bad))
    assert result.returncode == 2
    assert (
        "discovery.include: invalid regular expression (RE2 syntax, as in Prometheus): "
        "invalid perl operator: (?=" in result.stderr
    )
    assert (
        "detail.error_classes[1].match: invalid regular expression (RE2 syntax, as in "
        "Prometheus): invalid escape sequence: \\1" in result.stderr
    )
    assert "re2.cc" not in result.stderr  # RE2's own log stays quiet


def test_check_config_accepts_a_good_file(tmp_path: Path) -> None:
    good = write_config(tmp_path / "good.yaml", "http://127.0.0.1:1", ["a", "b"])
    result = run_cli("--check-config", "--config", str(good))
    assert result.returncode == 0, result.stderr
    assert "valid (2 projects)" in result.stdout


def test_config_is_required_and_listen_address_is_checked(tmp_path: Path) -> None:
    assert run_cli().returncode == 2
    good = write_config(tmp_path / "good.yaml", "http://127.0.0.1:1", ["a"])
    result = run_cli("--check-config", "--config", str(good), "--web.listen-address", "nope")
    assert result.returncode == 2
    assert "--web.listen-address: must be HOST:PORT" in result.stderr


def test_once_prints_metrics_and_fails_when_a_project_fails(sim: Simulator, tmp_path: Path) -> None:
    sim.set_sessions("good", [session("a"), session("b", job=None)])
    config = write_config(tmp_path / "c.yaml", sim.base_url, ["good"])
    result = run_cli("--once", "--config", str(config))
    assert result.returncode == 0, result.stderr
    samples = parse_metrics(result.stdout)
    assert value(samples, "llamacloud_chat_sessions", project_id="good", status="ok") == 1
    assert value(samples, "llamacloud_up", project_id="good") == 1
    assert "poll_succeeded" in result.stderr  # logs go to stderr, metrics to stdout

    config = write_config(tmp_path / "c.yaml", sim.base_url, ["good", "missing"])
    result = run_cli("--once", "--config", str(config))
    assert result.returncode == 1
    samples = parse_metrics(result.stdout)
    assert value(samples, "llamacloud_up", project_id="missing") == 0
    assert (
        value(samples, "llamacloud_poll_errors_total", project_id="missing", reason="not_found")
        == 1
    )
    assert "missing" in result.stderr and "poll_failed_config" in result.stderr


def test_the_key_never_appears_in_output(sim: Simulator, tmp_path: Path) -> None:
    secret = "llx-super-secret-777"
    sim.add_project("locked", api_key="llx-other")
    config = tmp_path / "c.yaml"
    config.write_text(
        f"llamacloud:\n  base_url: {sim.base_url}\n  api_key: {secret}\n  max_retries: 0\n"
        "projects:\n  - id: locked\n"
    )
    for fmt in ("json", "console"):
        result = run_cli(
            "--once", "--config", str(config), "--log.format", fmt, "--log.level", "debug"
        )
        assert result.returncode == 1
        assert secret not in result.stdout + result.stderr
        assert "poll_failed_config" in result.stderr


def test_a_bad_state_path_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    config = write_config(
        tmp_path / "c.yaml", "http://127.0.0.1:1", ["a"], state={"path": str(blocker / "x.db")}
    )
    result = run_cli("--once", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr.startswith("state.path: cannot use")


def test_check_config_checks_the_state_path(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    config = write_config(
        tmp_path / "c.yaml", "http://127.0.0.1:1", ["a"], state={"path": str(blocker / "x.db")}
    )
    result = run_cli("--check-config", "--config", str(config))
    assert result.returncode == 2
    assert "state.path:" in result.stderr
    assert not (blocker / "x.db").exists()
    fine = write_config(
        tmp_path / "c.yaml", "http://127.0.0.1:1", ["a"], state={"path": str(tmp_path / "s/x.db")}
    )
    assert run_cli("--check-config", "--config", str(fine)).returncode == 0
    assert not (tmp_path / "s").exists()  # checking creates nothing


def test_a_key_pasted_as_a_key_file_is_never_printed(tmp_path: Path) -> None:
    key = "llx-Wd3fG5hJ7kL9zX1cV3bN5mQ7wE9rT1yU"
    config = tmp_path / "c.yaml"
    config.write_text(f"llamacloud:\n  api_key_file: {key}\nprojects:\n  - id: a\n")
    for args in (("--check-config",), ("--once",), ()):
        result = run_cli(*args, "--config", str(config), "--log.format", "json")
        assert result.returncode == 2
        assert "llamacloud.api_key_file: cannot read the key file" in result.stderr
        assert key[4:12] not in result.stdout + result.stderr


def test_an_unusable_state_file_is_moved_aside_and_said(sim: Simulator, tmp_path: Path) -> None:
    sim.set_sessions("good", [session("a")])
    state = tmp_path / "state.db"
    state.write_bytes(b"")  # 0 bytes: not a silent reset
    config = write_config(tmp_path / "c.yaml", sim.base_url, ["good"], state={"path": str(state)})
    result = run_cli("--once", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "was unusable (empty file (0 bytes)); moved to" in result.stderr
    assert [p.name for p in tmp_path.glob("state.db.unusable-*")]


def test_demo_refuses_a_config_instead_of_ignoring_it(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", "http://127.0.0.1:1", ["p"])
    done = run_cli("--demo", "--config", str(config))
    assert done.returncode == 2
    assert "--demo" in done.stderr and "--config" in done.stderr


def test_sighup_never_ends_the_demo(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "demo.log"
    with log.open("w") as out:
        demo = subprocess.Popen(
            [
                *(sys.executable, "-m", "exporter", "--demo", "--log.format", "json"),
                *("--web.listen-address", f"127.0.0.1:{port}"),
            ],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}/healthz"
        wait_for(lambda: httpx.get(url, timeout=2).status_code == 200, 30, "the demo")
        demo.send_signal(signal.SIGHUP)

        def handled() -> bool:
            """Said once the signal is handled; its default action would end the process."""
            assert demo.poll() is None, "SIGHUP ended the demo"
            return "config_reload_unavailable" in log.read_text()

        wait_for(handled, 30, "SIGHUP handled")
        assert demo.poll() is None
        assert httpx.get(url, timeout=2).status_code == 200
    finally:
        demo.terminate()
        demo.wait(15)


def test_a_loop_that_ends_on_its_own_is_started_again() -> None:
    """Discovery's loop runs under a supervisor: raising, or returning before the stop, is
    followed by a new start; only the stop ends it."""
    import asyncio

    from exporter.cli import _supervised

    starts = 0

    async def flaky(stop: asyncio.Event) -> None:
        nonlocal starts
        starts += 1
        if starts == 1:
            raise RuntimeError("a bug")
        if starts == 2:
            return  # ended without a stop
        stop.set()

    async def run() -> None:
        await asyncio.wait_for(_supervised("test", flaky, asyncio.Event(), pause=0.001), 30)

    asyncio.run(run())
    assert starts == 3


def test_the_daemon_exits_non_zero_when_its_polls_end(tmp_path: Path) -> None:
    """Polls that stop for any reason but SIGTERM take the process down (exit 1): a process
    that serves numbers nobody polls any more would keep up at 1."""
    import pytest

    from exporter.cli import api_connections, run_daemon
    from exporter.config import load_config
    from exporter.openfiles import prepare
    from exporter.poller import Poller

    async def broken(self: Poller, stop: object) -> None:
        raise RuntimeError("the schedule broke")

    with Simulator(projects=0) as sim, pytest.MonkeyPatch.context() as mp:
        mp.setattr(Poller, "run", broken)
        config = load_config(write_config(tmp_path / "c.yaml", sim.base_url, ["p"]))
        budget = prepare(api_connections(config), config.max_concurrency)
        assert run_daemon(config.with_listen_address("127.0.0.1:0"), budget) == 1


@pytest.mark.parametrize("name", ["state.db.lock", "state.db"])
def test_a_planted_link_at_the_state_file_stops_the_start(
    sim: Simulator, tmp_path: Path, name: str
) -> None:
    """The exporter writes no file through a link planted in its state directory: it says
    which path and exits 2, and the file the link points to is left as it was."""
    sim.set_sessions("good", [session("a")])
    directory = tmp_path / "state"
    directory.mkdir()
    state = directory / "state.db"
    config = write_config(tmp_path / "c.yaml", sim.base_url, ["good"], state={"path": str(state)})
    target = tmp_path / "target.db"
    if name == "state.db":
        # Another state file: opening it through the link would write it.
        other = write_config(
            tmp_path / "o.yaml", sim.base_url, ["good"], state={"path": str(target)}
        )
        assert run_cli("--once", "--config", str(other)).returncode == 0
    else:
        assert run_cli("--once", "--config", str(config)).returncode == 0
        target.write_bytes(b"someone else's file\n" * 50)
    original = target.read_bytes()
    planted = directory / name
    planted.unlink(missing_ok=True)
    planted.symlink_to(target)
    for mode in ("--check-config", "--once", None):  # None: the daemon
        result = run_cli(*([mode] if mode else []), "--config", str(config))
        assert result.returncode == 2, (mode, result.stderr)
        assert f"{planted} is a symbolic link" in result.stderr, mode
        assert target.read_bytes() == original, mode


FULL_DISK = """
import os, resource, sys
# As on a full disk: no write may grow a file (Python ignores SIGXFSZ, so writes get EFBIG).
resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))
os.execv(sys.executable, [sys.executable, "-m", "exporter", *sys.argv[1:]])
"""


def test_a_restart_on_a_full_disk_serves_the_saved_counters_and_saves_once_there_is_room(
    sim: Simulator, tmp_path: Path
) -> None:
    """No crash loop: the exporter starts with what the state file holds, counts every save
    that fails, and writes the whole state again once the disk has room."""
    sim.set_sessions("p", [session("a"), session("b")])
    state = tmp_path / "state" / "state.db"
    config = write_config(tmp_path / "c.yaml", sim.base_url, ["p"], state={"path": str(state)})
    assert run_cli("--once", "--config", str(config)).returncode == 0  # the baseline
    sim.set_sessions("p", [session("a", turns=5), session("b")])
    once = run_cli("--once", "--config", str(config))
    assert value(parse_metrics(once.stdout), "llamacloud_chat_runs_total", project_id="p") == 1

    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    args = ("--config", str(config), "--web.listen-address", f"127.0.0.1:{port}")
    proc = subprocess.Popen(
        [sys.executable, "-c", FULL_DISK, *args, "--log.format", "json"],
        cwd=REPO,
        stdout=subprocess.PIPE,  # a pipe: a log file could not grow either
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = proc.stdout
    assert output is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(output), daemon=True)
    reader.start()

    def metric(name: str, **labels: str) -> float | None:
        assert proc.poll() is None, f"the exporter exited {proc.returncode}: {''.join(lines)}"
        return value(parse_metrics(httpx.get(url, timeout=5).text), name, **labels)

    def events(name: str) -> list[dict[str, object]]:
        logged = [json.loads(line) for line in list(lines) if line.startswith("{")]
        return [event for event in logged if event.get("event") == name]

    try:
        wait_for(
            lambda: (metric("llamacloud_state_save_failures_total") or 0) >= 2, 30, "failed saves"
        )
        assert metric("llamacloud_chat_runs_total", project_id="p") == 1  # the saved counter
        assert any("serving the counters saved in it" in line for line in lines)
        assert events("state_file_read_only")[0]["path"] == str(state)
        failed = events("state_save_failed")[0]
        assert failed["error"] == "StateUnwritable"
        assert str(failed["message"]).startswith(f"cannot write {state}")

        sim.set_sessions("p", [session("a", turns=5), session("b", turns=6)])  # counted live
        wait_for(lambda: metric("llamacloud_chat_runs_total", project_id="p") == 2, 30, "a run")
        infinite = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, infinite)  # room again

        def saved_runs() -> object:
            with sqlite3.connect(f"file:{state}?mode=ro", uri=True) as db:
                row = db.execute("SELECT data FROM totals WHERE project_id = 'p'").fetchone()
            db.close()
            return json.loads(row[0])["runs"] == 2

        wait_for(saved_runs, 30, "the saved counters")
        assert events("state_file_writable")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(10)
        output.close()
    with StateFile(state) as again:
        saved = again.load(["p"])["p"]
    assert saved.totals.runs == 2
    assert {row[0] for row in saved.sessions or ()} == {"a", "b"}


def test_shard_flags(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("projects: [{id: p, api_key: llx-k}]\nsharding: {total: 3}\n")
    ok = run_cli("--config", str(config), "--check-config", "--shard", "1/4")
    assert ok.returncode == 0, ok.stderr
    assert "shard 1/4" in ok.stdout
    pod = {"HOSTNAME": "llamacloud-exporter-2"}
    ok = run_cli("--config", str(config), "--check-config", "--shard.from-hostname", env=pod)
    assert "shard 2/3" in ok.stdout, ok.stderr  # the total from sharding.total
    ok = run_cli(
        *("--config", str(config), "--check-config", "--shard.from-hostname"),
        *("--shard.total", "5"),
        env=pod,
    )
    assert "shard 2/5" in ok.stdout, ok.stderr
    cases = [
        (("--shard", "4/4"), {}, "INDEX must be from 0 to 3"),
        (("--shard", "0/1000000000"), {}, "TOTAL must be from 1 to 10000"),
        (("--shard", ""), {}, "is not INDEX/TOTAL"),  # an unset ${SHARD}: not every project
        (("--shard.total", "2"), {}, "--shard.total goes with --shard.from-hostname"),
        (("--shard.from-hostname", "--shard.total", "2"), pod, "ordinal 2, but there are only 2"),
        (("--shard.from-hostname",), {"HOSTNAME": "laptop"}, "does not end in -<ordinal>"),
    ]
    with ThreadPoolExecutor(len(cases)) as pool:  # one process each, side by side
        results = pool.map(
            lambda case: run_cli("--config", str(config), "--check-config", *case[0], env=case[1]),
            cases,
        )
        for (args, _, problem), bad in zip(cases, results, strict=True):
            assert bad.returncode == 2 and problem in bad.stderr, (args, bad.stderr)
    both = run_cli("--config", str(config), "--shard", "0/2", "--shard.from-hostname")
    assert both.returncode == 2 and "not allowed with" in both.stderr
