"""Child processes: one way to start them, read what they print with a deadline, and stop them.

Every benchmark's other processes are a :class:`Child`: a one-shot measurement in a fresh
interpreter (:func:`run_child`), a peer answering one JSON line per command over its stdin and
stdout (``python -m bench.run --child MODULE PARAMS``, whose side is :func:`reply` and
:func:`commands`), the simulator (:func:`start_simulator`) and the real daemon
(:func:`start_exporter`). Each is stopped by the ``ExitStack`` it was started on, by its own
id: stdin closed (a peer ends its loop), then SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from bench.common import REPO_ROOT, BenchError


class Child:
    """A process with its stderr (with ``log``: all its output) in a file whose tail every
    error shows, and its stdout read line by line by a thread, so reads can have deadlines."""

    def __init__(
        self,
        stack: contextlib.ExitStack,
        name: str,
        cmd: Sequence[str],
        *,
        stdin: bool = True,
        log: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.ready: dict[str, Any] = {}  # the first line, for children that print one when ready
        self._log: IO[bytes] = (
            open(log, "w+b")  # noqa: SIM115 - closed when the child is stopped
            if log is not None
            else tempfile.TemporaryFile()  # noqa: SIM115 - closed when the child is stopped
        )
        self.proc = subprocess.Popen(
            list(cmd),
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=self._log if log is not None else subprocess.PIPE,
            stderr=self._log,
            text=True,
            bufsize=1,
            env=env,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        if log is None:
            threading.Thread(target=self._read, daemon=True).start()
        stack.callback(self._stop)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with contextlib.suppress(ValueError, OSError):
            for text in self.proc.stdout:
                self._lines.put(text)
        self._lines.put(None)

    def tail(self, size: int = 3000) -> str:
        """The end of what the child wrote to its log (read without moving the child's offset)."""
        fd = self._log.fileno()
        end = os.fstat(fd).st_size
        return os.pread(fd, size, max(end - size, 0)).decode("utf-8", "replace")

    def line(self, deadline: float) -> str | None:
        """The next line of stdout; None once the child closed it; BenchError past the deadline."""
        try:
            return self._lines.get(timeout=max(deadline - time.monotonic(), 0.01))
        except queue.Empty:
            raise BenchError(f"{self.name} did not answer in time:\n{self.tail()}") from None

    def receive(self, timeout: float) -> dict[str, Any]:
        """The next line, a JSON object; BenchError if the child exits or is late first."""
        text = self.line(time.monotonic() + timeout)
        if text is None:
            raise BenchError(f"{self.name} exited {self.proc.wait()}:\n{self.tail()}")
        result: dict[str, Any] = json.loads(text)
        return result

    def send(self, **command: Any) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(command) + "\n")
            self.proc.stdin.flush()
        except OSError:
            raise BenchError(f"{self.name} exited {self.proc.poll()}:\n{self.tail()}") from None

    def call(self, timeout: float, **command: Any) -> dict[str, Any]:
        self.send(**command)
        return self.receive(timeout)

    def close(self, timeout: float) -> None:
        """Close stdin and wait for the child to exit; BenchError unless it exits 0."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        if self.proc.wait(timeout=timeout) != 0:
            raise BenchError(f"{self.name} exited {self.proc.returncode}:\n{self.tail()}")

    def _stop(self) -> None:
        proc = self.proc
        if proc.stdin is not None:  # a peer: stdin closed ends its loop
            with contextlib.suppress(OSError):
                proc.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=15)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if proc.stdout is not None:
            with contextlib.suppress(OSError):
                proc.stdout.close()
        self._log.close()


# ------------------------------------------------------------------ bench children


def peer(stack: contextlib.ExitStack, module: str, name: str, params: dict[str, Any]) -> Child:
    """``python -m bench.run --child MODULE PARAMS``: ``bench.MODULE.child(params)`` runs in a
    fresh interpreter, so no state, garbage or warm cache is carried between measurements."""
    cmd = [sys.executable, "-m", "bench.run", "--child", module, json.dumps(params)]
    return Child(stack, name, cmd)


def run_child(module: str, params: dict[str, Any], timeout: float) -> dict[str, Any]:
    """A one-shot measurement in a fresh interpreter: the JSON line it prints."""
    with contextlib.ExitStack() as stack:
        child = peer(stack, module, f"child {module}", params)
        result = child.receive(timeout)
        child.close(30)
    return result


def reply(data: dict[str, Any]) -> None:
    """A peer's answer: one JSON line on stdout."""
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


def commands() -> Iterator[dict[str, Any]]:
    """A peer's commands, a JSON line each, until the parent closes its stdin."""
    for line in sys.stdin:
        if line.strip():
            yield json.loads(line)


# ------------------------------------------------------------------ the simulator and the daemon


def start_simulator(
    stack: contextlib.ExitStack,
    projects: int,
    sessions: int,
    extra: Sequence[str] = (),
    timeout: float = 120.0,
) -> Child:
    """``python -m exporter.simulator`` on a free loopback port, its data frozen unless ``extra``
    says otherwise (a later ``--evolve-every`` wins, faults, ...); ``ready`` holds its
    ``base_url`` and ``project_ids``."""
    cmd = [sys.executable, "-m", "exporter.simulator", "--listen", "127.0.0.1:0"]
    cmd += ["--projects", str(projects), "--sessions", str(sessions), "--evolve-every", "0"]
    sim = Child(stack, "simulator", [*cmd, *extra], stdin=False)
    ids: list[str] = []
    deadline = time.monotonic() + timeout
    while len(ids) < projects or "base_url" not in sim.ready:
        text = sim.line(deadline)
        if text is None:
            raise BenchError(f"simulator exited {sim.proc.wait()}:\n{sim.tail()}")
        if text.startswith("simulator listening on "):
            sim.ready["base_url"] = text.split()[-1]
        elif text.startswith("project "):
            ids.append(text.split()[1])
    sim.ready["project_ids"] = ids
    return sim


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, str]:
    """One GET on loopback: (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")
    finally:
        conn.close()


def start_exporter(
    stack: contextlib.ExitStack, config: Path, log: Path, *flags: str, timeout: float = 120.0
) -> tuple[Child, int]:
    """The real daemon (``python -m exporter``) on a free loopback port, its output in ``log``;
    returned with its port once ``/readyz`` answers 200."""
    port = free_port()
    cmd = [sys.executable, "-m", "exporter", "--config", str(config)]
    cmd += ["--web.listen-address", f"127.0.0.1:{port}", *flags]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    exporter = Child(stack, "exporter", cmd, stdin=False, log=log, env=env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if exporter.proc.poll() is not None:
            raise BenchError(
                f"exporter exited {exporter.proc.returncode} before it was ready\n"
                f"exporter log:\n{exporter.tail()}"
            )
        with contextlib.suppress(OSError):
            if http_get(port, "/readyz", timeout=2)[0] == 200:
                return exporter, port
        time.sleep(0.2)
    raise BenchError(f"exporter not ready within {timeout:.0f} s\nexporter log:\n{exporter.tail()}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
