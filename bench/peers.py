"""Child processes: one-shot children, the simulator and exporter children driven over a pipe
(peers), and the project ids they share.

Split from ``bench.common``, which keeps /proc readings, statistics, tables and synthetic
sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import IO, Any

from bench.common import REPO_ROOT, BenchError, peak_rss_bytes, proc_cpu_seconds, rss_bytes

# ------------------------------------------------------------------ project ids
#
# Since b303ab8 the exporter starts each project at its own point (phase) of the full-listing
# cycle, from a hash of its id, so projects started together take their periodic full listings
# at different polls. The benchmarks that count polls (bench.capacity, bench.incremental) give
# their simulated projects ids that all have phase 0 instead: every project's periodic full
# listing falls on the same poll, the one after ``full_listing_every`` polls since the first,
# as before b303ab8. That is the worst case (every project listing in full in one interval),
# and it keeps a steady-state cycle either all incremental or all full listings.

FULL_LISTING_EVERY = 10  # llamacloud.full_listing_every's default; the exporter children keep it


def listing_phase(project_id: str, full_every: int = FULL_LISTING_EVERY) -> int:
    """The polls a project's first (baseline) listing counts as since a full listing.

    Mirrors ``Poller._list`` in exporter/poller.py, which computes it inline (there is no
    function to import): change the two together.
    """
    return zlib.crc32(project_id.encode("utf-8", "replace")) % full_every


def same_phase_ids(seed: int, count: int, full_every: int = FULL_LISTING_EVERY) -> list[str]:
    """``count`` distinct UUID4 project ids drawn from ``seed`` (the same ones for a seed), all of
    phase 0 (:func:`listing_phase`); about ``full_every`` draws per id kept."""
    rng = random.Random(f"{seed}:project-ids")
    ids: dict[str, None] = {}
    while len(ids) < count:
        project_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        if listing_phase(project_id, full_every) == 0:
            ids[project_id] = None
    return list(ids)


# ------------------------------------------------------------------ child processes


def run_child(kind: str, params: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run ``python -m bench.run --child KIND PARAMS`` in a fresh interpreter; its JSON result.

    ``subprocess.run`` kills the child when the timeout passes, so none outlives the run.
    """
    cmd = [sys.executable, "-m", "bench.run", "--child", kind, json.dumps(params)]
    try:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"child {kind} did not finish within {timeout:.0f} s") from exc
    if proc.returncode != 0:
        raise BenchError(f"child {kind} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    lines = proc.stdout.strip().splitlines()
    if not lines:
        raise BenchError(f"child {kind} printed no result:\n{proc.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM, then SIGKILL after 10 s; only this process, by its own id."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def _tail(log: IO[bytes]) -> str:
    log.seek(0)
    return log.read().decode("utf-8", "replace")[-3000:]


class _Lines:
    """A child's stdout, line by line, with a deadline (a reader thread feeds a queue)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._proc = proc
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        with contextlib.suppress(ValueError, OSError):
            for text in self._proc.stdout:
                self._queue.put(text)
        self._queue.put(None)

    def next(self, deadline: float) -> str | None:
        """The next line; None when the child closed its stdout; BenchError past the deadline."""
        try:
            return self._queue.get(timeout=max(deadline - time.monotonic(), 0.01))
        except queue.Empty:
            raise BenchError("timed out waiting for a child process") from None


@dataclass(frozen=True)
class SimulatorProcess:
    pid: int
    base_url: str
    project_ids: tuple[str, ...]


@contextlib.contextmanager
def simulator_process(
    projects: int, sessions: int, startup_timeout: float = 120.0, extra: Sequence[str] = ()
) -> Iterator[SimulatorProcess]:
    """``python -m exporter.simulator`` in its own process, frozen data, on a free loopback port.

    ``extra`` is appended to its command line (a later ``--evolve-every`` wins, faults, ...).
    """
    cmd = [
        sys.executable,
        "-m",
        "exporter.simulator",
        "--listen",
        "127.0.0.1:0",
        "--projects",
        str(projects),
        "--sessions",
        str(sessions),
        "--evolve-every",
        "0",
        *extra,
    ]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=log, text=True, bufsize=1
        )
        try:
            lines = _Lines(proc)
            base_url = ""
            ids: list[str] = []
            deadline = time.monotonic() + startup_timeout
            while len(ids) < projects or not base_url:
                try:
                    text = lines.next(deadline)
                except BenchError:
                    raise BenchError(
                        f"simulator did not start within {startup_timeout:.0f} s:\n{_tail(log)}"
                    ) from None
                if text is None:
                    raise BenchError(f"simulator exited {proc.wait()}:\n{_tail(log)}")
                if text.startswith("simulator listening on "):
                    base_url = text.split()[-1]
                elif text.startswith("project "):
                    ids.append(text.split()[1])
            yield SimulatorProcess(proc.pid, base_url, tuple(ids))
        finally:
            stop_process(proc)


@contextlib.contextmanager
def serving_child(
    kind: str, params: dict[str, Any], startup_timeout: float = 900.0
) -> Iterator[dict[str, Any]]:
    """A ``--child`` that prints one JSON line once it serves, then runs until stdin closes."""
    with contextlib.ExitStack() as stack:
        peer = Peer(kind, f"child {kind}", params, stack)
        yield peer.receive(startup_timeout)
        peer.close(30)


# ------------------------------------------------------------------ peers: children on a pipe
#
# A benchmark that changes its simulator between polls, and polls on command, drives each in a
# process of its own (``bench.run --child KIND``, role ``simulator`` or ``exporter``): one JSON
# line in, one JSON line out. Each process's CPU is then its own, read from /proc, and the
# exporter's child measures its polls with ``time.process_time()`` (every thread).


def reply(data: dict[str, Any]) -> None:
    """A peer child's answer: one JSON line on stdout."""
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


def commands() -> Iterator[dict[str, Any]]:
    """A peer child's commands, a JSON line each, until the parent closes its stdin."""
    for line in sys.stdin:
        if line.strip():
            yield json.loads(line)


class Peer:
    """A child (``bench.run --child KIND``) answering one JSON line per command.

    Its stderr goes to a temporary file, whose tail any error shows. ``stack`` stops it: stdin
    closed (the child ends its loop and exits), then SIGTERM/SIGKILL if it lingers.
    """

    def __init__(
        self, kind: str, name: str, params: dict[str, Any], stack: contextlib.ExitStack
    ) -> None:
        self.name = name
        self.ready: dict[str, Any] = {}  # its first line, for those that print one when ready
        log = stack.enter_context(tempfile.TemporaryFile())  # noqa: SIM115 (closed by stack)
        cmd = [sys.executable, "-m", "bench.run", "--child", kind, json.dumps(params)]
        self.proc = subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            bufsize=1,
        )
        self._log = log
        self._lines = _Lines(self.proc)
        stack.callback(self._stop)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, **command: Any) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(command) + "\n")
            self.proc.stdin.flush()
        except OSError:
            raise BenchError(
                f"{self.name} exited {self.proc.poll()}:\n{_tail(self._log)}"
            ) from None

    def receive(self, timeout: float) -> dict[str, Any]:
        try:
            text = self._lines.next(time.monotonic() + timeout)
        except BenchError:
            raise BenchError(
                f"{self.name} did not answer within {timeout:.0f} s:\n{_tail(self._log)}"
            ) from None
        if text is None:
            raise BenchError(f"{self.name} exited {self.proc.wait()}:\n{_tail(self._log)}")
        result: dict[str, Any] = json.loads(text)
        return result

    def call(self, timeout: float, **command: Any) -> dict[str, Any]:
        self.send(**command)
        return self.receive(timeout)

    def close(self, timeout: float) -> None:
        """Close stdin and wait for the child to exit; BenchError unless it exits 0."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        if self.proc.wait(timeout=timeout) != 0:
            raise BenchError(f"{self.name} exited {self.proc.returncode}:\n{_tail(self._log)}")

    def _stop(self) -> None:
        """Close stdin (the child ends its loop and exits), then SIGTERM/SIGKILL if it lingers."""
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=15)
        stop_process(self.proc)


def serve_simulator(params: dict[str, Any]) -> dict[str, Any]:
    """Role ``simulator``: a Simulator (newest first, frozen clock) in this process, changed on
    command, so its CPU is never the exporter's.

    ``params``: ``seed``; ``groups``, {name: [projects, sessions each]}, added in that order,
    with ids from :func:`same_phase_ids` (every project's periodic full listing at the same
    poll: the worst case); ``pool_size`` sessions per project that re-runs
    are drawn from, sampled from its whole listing (``pool`` ``"listing"``) or newly created
    (``"created"``: decoding millions of sessions to pick a few would take minutes); and
    ``latency`` per request. Commands: ``advance`` (``reruns`` re-runs and ``creates`` new
    sessions in every project, or in those of ``group``) and ``latency`` (``seconds``).
    """
    from exporter.simulator import Simulator

    rss_before = rss_bytes()
    began = time.perf_counter()
    sim = Simulator(projects=0, seed=params["seed"], order="newest-first")
    ids = iter(same_phase_ids(params["seed"], sum(p for p, _ in params["groups"].values())))
    groups = {
        name: [sim.add_project(next(ids), sessions=sessions) for _ in range(projects)]
        for name, (projects, sessions) in params["groups"].items()
    }
    built = time.perf_counter() - began
    picks = random.Random(f"{params['seed']}:picks")
    pools: dict[str, list[str]] = {}
    for pid in sim.project_ids:
        if params["pool"] == "listing":  # any session of the project may re-run
            ids = [item["session_id"] for item in sim.sessions(pid)]
            pools[pid] = picks.sample(ids, min(params["pool_size"], len(ids)))
        else:
            pools[pid] = sim.create_sessions(pid, params["pool_size"])
    sim.latency = params.get("latency", 0.0)
    url = sim.start()
    reply(
        {
            "base_url": url,
            "project_ids": sim.project_ids,
            "groups": groups,
            "build_seconds": built,
            "ready_seconds": time.perf_counter() - began,
            "rss": rss_bytes(),
            "rss_before": rss_before,
        }
    )
    try:
        for command in commands():
            if command["op"] == "advance":
                for pid in groups[command["group"]] if "group" in command else sim.project_ids:
                    for sid in picks.sample(pools[pid], command["reruns"]):
                        sim.rerun(pid, sid)
                    pools[pid].extend(sim.create_sessions(pid, command["creates"]))
            elif command["op"] == "latency":
                sim.latency = command["seconds"]
            else:
                raise ValueError(command)
            reply({"rss": rss_bytes(), "requests": sim.request_count})
    finally:
        sim.stop()
    return {"requests": sim.request_count}


async def serve_exporter(
    params: dict[str, Any],
    describe: Callable[[list[Any]], dict[str, Any]],
    *,
    exposition: bool = False,
) -> dict[str, Any]:
    """Role ``exporter``: the daemon's wiring (``cli._components``: Store, ApiClient, Poller)
    over ``project_ids``, all on one simulator at ``base_url``.

    A ``cycle`` command polls every project once as the daemon does (``Poller.poll_all_once``)
    and answers its wall time, CPU, requests, projects up, errors and memory, plus
    ``describe(states)`` of the projects' states; ``concurrency`` sets max_concurrency as a
    reload does. With ``exposition`` the ``/metrics`` app is built too, without its HTTP
    server: its exposition cache renders and compresses a project when its poll ends, as in
    the daemon, and that is part of what a poll costs.
    """
    from exporter.cli import _components
    from exporter.config import Config, ProjectConfig, Secret
    from exporter.logs import configure_logging
    from exporter.simulator import DEFAULT_API_KEY
    from exporter.web.app import make_app

    configure_logging("info", "json")  # as in production; the lines go to a temporary file
    projects = tuple(
        ProjectConfig(
            id=pid,
            name=f"bench-{n}",
            organization_id="",
            base_url=params["base_url"],
            page_size=params["page_size"],
            api_key=Secret(DEFAULT_API_KEY),
            listing=params["mode"],
        )
        for n, pid in enumerate(params["project_ids"])
    )
    config = Config(projects=projects, max_pages=10**6, max_concurrency=params["max_concurrency"])
    store, poller, client, targets = _components(config, None)
    app = make_app(store) if exposition else None
    loop = asyncio.get_running_loop()
    reply({"ready": True, "rss": rss_bytes(), "full_listing_every": config.full_listing_every})
    try:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            command = json.loads(line)
            if command["op"] == "concurrency":
                config = replace(config, max_concurrency=command["value"])
                await targets.reload(config)
                reply({"max_concurrency": config.max_concurrency})
                continue
            if command["op"] != "cycle":
                raise ValueError(command)
            before = store.api_requests()
            wall0, cpu0 = time.perf_counter(), time.process_time()
            ok = await poller.poll_all_once()
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            after = store.api_requests()
            states = [store.get(p.id) for p in projects]
            reply(
                {
                    "ok": ok,
                    "wall": wall,
                    "cpu": cpu,
                    "requests": sum(after.values()) - sum(before.values()),
                    "codes": {
                        k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)
                    },
                    "up": sum(s.up for s in states),
                    "errors": sorted({s.last_error for s in states if s.last_error}),
                    **describe(states),
                    "rss": rss_bytes(),
                    "peak_rss": peak_rss_bytes(),
                }
            )
    finally:
        client.close()
        del app
    return {"peak_rss": peak_rss_bytes()}


def exporter_peer(
    kind: str,
    stack: contextlib.ExitStack,
    name: str,
    *,
    mode: str,
    base_url: str,
    project_ids: Sequence[str],
    page_size: int,
    max_concurrency: int,
) -> Peer:
    """A child of role ``exporter`` (:func:`serve_exporter`), once it is ready; BenchError
    unless it keeps the default ``full_listing_every`` (:data:`FULL_LISTING_EVERY`)."""
    params = {
        "role": "exporter",
        "mode": mode,
        "base_url": base_url,
        "project_ids": list(project_ids),
        "page_size": page_size,
        "max_concurrency": max_concurrency,
    }
    peer = Peer(kind, name, params, stack)
    peer.ready = peer.receive(120)
    every = peer.ready["full_listing_every"]
    if every != FULL_LISTING_EVERY:  # the project ids' phases and the polls counted assume it
        raise BenchError(f"{name}: full_listing_every is {every}, not {FULL_LISTING_EVERY}")
    return peer


def poll_cycle(exporter: Peer, sim_pid: int, timeout: float) -> dict[str, Any]:
    """One ``cycle`` of an exporter child, with its simulator's CPU over it (``sim_cpu``);
    BenchError unless every project's poll succeeded."""
    sim_cpu = proc_cpu_seconds(sim_pid)
    result = exporter.call(timeout, op="cycle")
    result["sim_cpu"] = proc_cpu_seconds(sim_pid) - sim_cpu
    if not result["ok"]:
        raise BenchError(f"{exporter.name}: a poll failed: {', '.join(result['errors'])}")
    return result


def free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
