"""Soak: hours of polling with recurring API faults, compressed into minutes.

The real daemon (``python -m exporter``) polls a simulator process (its own process) that
evolves its data every half second and injects every recurring fault it has: 429s, random 5xx
and bursts of 503s, stalls past the exporter's timeout, truncated bodies, malformed items and
one project whose listing never ends. ``poll_interval_seconds`` is 0.5 s, so every minute of
the run stands for two hours of a production exporter polling once a minute.

Meanwhile this process scrapes ``/metrics`` as Prometheus does (gzip, OpenMetrics) every half
second and checks each answer parses with no NaN or Inf, reloads the config every ten seconds
(SIGHUP and ``POST /-/reload`` in turn, two valid configs that add and remove a project) and
opens bursts of hostile connections (idle ones, half-sent requests, responses never read) that
it abandons three seconds later, with a FIN or a reset.

The exporter is sampled from /proc every two seconds in a fixed cycle: a "quiet" sample a
second after the last hostile burst was closed, then a "busy" one while the next burst is
open. Flatness is judged on the quiet samples, where a leak cannot hide behind connections that
are legitimately open, after a 20 % warm-up: the first tenth after warm-up against the last.

    .venv/bin/python -m bench.soak --minutes 10
    .venv/bin/python -m bench.run --only soak           # 5 minutes (--quick: 1 minute)
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import http.client
import json
import math
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

if __package__ in (None, ""):  # run as ``python bench/soak.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    CLK_TCK,
    PAGE_BYTES,
    REPO_ROOT,
    BenchError,
    load_average,
    median,
    percentile,
    standalone,
    table,
    verdict,
)
from bench.peers import free_port, simulator_process, stop_process

DEFAULT_MINUTES = 5.0
QUICK_MINUTES = 1.0
PROJECTS = 8  # the simulator's; the last one's listing never ends
SESSIONS = 2000
SEED = 11
PAGE_SIZE = 100
MAX_PAGES = 50  # 20 pages make a regular project; the endless one fails at 50
POLL_INTERVAL = 0.5
PRODUCTION_INTERVAL = 60.0  # what one poll interval stands for
TIMEOUT_SECONDS = 1.0
MAX_RETRIES = 2
EVOLVE_EVERY = 0.5
FAULTS = {
    "--rate-limit-share": "0.01",
    "--rate-limit-retry-after": "1",
    "--server-error-share": "0.01",
    "--server-error-burst-every": "400",
    "--server-error-burst-length": "3",
    "--timeout-share": "0.003",
    "--timeout-seconds": "1.5",  # a bit above the exporter's timeout_seconds
    "--truncate-share": "0.005",
    "--malformed-share": "0.002",
}
SCRAPE_EVERY = 0.5
SCRAPE_TIMEOUT = 5.0
RELOAD_EVERY = 10.0
CYCLE = 4.0  # quiet sample, open a burst, busy sample 2 s later, close it 1 s later, 1 s rest
HOSTILE_KINDS = (
    "idle",
    "half request line",
    "half headers",
    "response never read",
    "half body",
)
HOSTILE_PER_KIND = 4
WARMUP_SHARE = 0.2
RSS_RATIO_TARGET = 1.10
COUNT_SLACK = 2  # threads and fds: last window's max at most the first window's max + this
STOP_SECONDS = 10.0
# The Accept header Prometheus sends: it prefers OpenMetrics.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
# A line that ends a traceback, as Python prints it.
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_.]+(Error|Exception|Exit|Interrupt)\b")
# Scrapes cycle through these (accept, accept-encoding): mostly as Prometheus asks.
SCRAPE_VARIANTS = (
    (PROMETHEUS_ACCEPT, "gzip"),
    (PROMETHEUS_ACCEPT, "gzip"),
    ("text/plain;version=0.0.4", "gzip"),
    (PROMETHEUS_ACCEPT, "identity"),
)


# ------------------------------------------------------------------ /proc


@dataclass(frozen=True)
class Sample:
    t: float  # seconds since the soak started
    quiet: bool  # no hostile connection open, the last burst closed a second ago
    rss: int
    threads: int
    fds: int
    cpu: float


def _sample(pid: int, t: float, quiet: bool) -> Sample:
    with open(f"/proc/{pid}/statm", "rb") as f:
        rss = int(f.read().split()[1]) * PAGE_BYTES
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    fields = data[data.rindex(b")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    threads = len(os.listdir(f"/proc/{pid}/task"))
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return Sample(t, quiet, rss, threads, fds, cpu)


# ------------------------------------------------------------------ shared tallies


@dataclass(frozen=True)
class Scrape:
    t: float  # seconds since the soak started
    ok: bool
    seconds: float
    connect: float  # seconds to connect (the server's accept queue), NaN if it failed before
    busy: bool  # a burst of hostile connections was being opened, open or closed meanwhile


@dataclass
class Tally:
    """What the threads of the soak count; every update holds ``lock``."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    scrapes: list[Scrape] = field(default_factory=list)
    scrape_failures: Counter[str] = field(default_factory=Counter)
    first_scrape_failure: str = ""
    non_finite: int = 0
    first_non_finite: str = ""
    success_stamps: dict[str, float] = field(default_factory=dict)
    polls_seen: int = 0  # llamacloud_last_successful_poll_timestamp_seconds moving
    last_up: dict[str, float] = field(default_factory=dict)
    api_requests: dict[str, float] = field(default_factory=dict)  # the exporter's counter
    reload_sent: Counter[str] = field(default_factory=Counter)
    reload_post_failures: int = 0
    first_reload_failure: str = ""
    project_mismatch: int = 0
    first_mismatch: str = ""
    hostile_opened: Counter[str] = field(default_factory=Counter)
    hostile_connect_failures: int = 0
    burst: bool = False  # from the first connect of a burst to the last close
    bursts: int = 0
    hostile_connect: list[float] = field(default_factory=list)  # seconds
    log_events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    log_lines: int = 0
    non_json: int = 0
    non_json_kept: list[str] = field(default_factory=list)  # the first few hundred
    exceptions: Counter[str] = field(default_factory=Counter)  # exception lines outside JSON
    tracebacks: int = 0


def _scrape_once(
    port: int, accept: str, encoding: str, timing: list[float]
) -> tuple[str, str, str]:
    """One scrape read raw: (content type, content encoding, decoded text); connect time to
    ``timing``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=SCRAPE_TIMEOUT)
    try:
        began = time.monotonic()
        conn.connect()
        timing.append(time.monotonic() - began)
        conn.request("GET", "/metrics", headers={"Accept": accept, "Accept-Encoding": encoding})
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise ValueError(f"status {resp.status}")
        ctype = resp.getheader("Content-Type", "")
        cenc = resp.getheader("Content-Encoding", "") or "identity"
    finally:
        conn.close()
    if cenc == "gzip":
        body = gzip.decompress(body)
    return ctype, cenc, body.decode("utf-8")


def _check_scrape(
    ctype: str, cenc: str, text: str, accept: str, encoding: str
) -> list[tuple[str, dict[str, str], float]]:
    """Parse a scrape as a Prometheus server would; every sample, or ValueError."""
    from prometheus_client.openmetrics.parser import (
        text_string_to_metric_families as openmetrics_families,
    )
    from prometheus_client.parser import text_string_to_metric_families as text_families

    if cenc != encoding:
        raise ValueError(f"asked for {encoding}, got Content-Encoding {cenc}")
    wants_openmetrics = accept.startswith("application/openmetrics-text")
    is_openmetrics = ctype.startswith("application/openmetrics-text")
    if wants_openmetrics != is_openmetrics:
        raise ValueError(f"asked for {accept.split(';')[0]}, got {ctype}")
    parse = openmetrics_families if is_openmetrics else text_families
    out = [(s.name, s.labels, s.value) for family in parse(text) for s in family.samples]
    if not out:
        raise ValueError("no samples")
    return out


def _scraper(port: int, tally: Tally, t0: float, stop: threading.Event) -> None:
    n = 0
    due = time.monotonic()
    while not stop.is_set():
        accept, encoding = SCRAPE_VARIANTS[n % len(SCRAPE_VARIANTS)]
        n += 1
        timing: list[float] = []
        with tally.lock:
            busy, bursts = tally.burst, tally.bursts
        began = time.monotonic()
        try:
            samples = _check_scrape(*_scrape_once(port, accept, encoding, timing), accept, encoding)
        except Exception as exc:  # any failure of the scrape is what we count
            elapsed = time.monotonic() - began
            reason = type(exc).__name__
            with tally.lock:
                busy = busy or tally.burst or tally.bursts != bursts
                connect = timing[0] if timing else math.nan
                tally.scrapes.append(Scrape(began - t0, False, elapsed, connect, busy))
                tally.scrape_failures[reason] += 1
                if not tally.first_scrape_failure:
                    tally.first_scrape_failure = f"{reason}: {exc}"[:300]
        else:
            elapsed = time.monotonic() - began
            bad = [(name, labels, v) for name, labels, v in samples if not math.isfinite(v)]
            with tally.lock:
                busy = busy or tally.burst or tally.bursts != bursts
                tally.scrapes.append(Scrape(began - t0, True, elapsed, timing[0], busy))
                if bad:
                    tally.non_finite += len(bad)
                    if not tally.first_non_finite:
                        tally.first_non_finite = f"{bad[0][0]}{bad[0][1]} = {bad[0][2]}"
                up: dict[str, float] = {}
                for name, labels, v in samples:
                    if name == "llamacloud_up":
                        up[labels.get("project_id", "")] = v
                    elif name == "llamacloud_api_requests_total":
                        tally.api_requests[labels.get("code", "")] = v
                    elif name == "llamacloud_last_successful_poll_timestamp_seconds":
                        pid = labels.get("project_id", "")
                        if pid in tally.success_stamps and tally.success_stamps[pid] != v:
                            tally.polls_seen += 1
                        tally.success_stamps[pid] = v
                tally.last_up = up
        due += SCRAPE_EVERY
        stop.wait(max(due - time.monotonic(), 0.0))


# ------------------------------------------------------------------ configs and reloads


def _config(
    base_url: str, api_key: str, projects: Sequence[tuple[str, str]], state: Path
) -> dict[str, Any]:
    return {
        "llamacloud": {
            "base_url": base_url,
            "api_key": api_key,
            "page_size": PAGE_SIZE,
            "timeout_seconds": TIMEOUT_SECONDS,
            "max_retries": MAX_RETRIES,
            "max_pages": MAX_PAGES,
        },
        "projects": [{"id": pid, "name": name} for pid, name in projects],
        "poll_interval_seconds": POLL_INTERVAL,
        "max_concurrency": 4,
        "state": {"path": str(state)},
    }


def _write(path: Path, config: dict[str, Any]) -> None:
    import yaml

    partial = path.with_suffix(".partial")
    partial.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    os.replace(partial, path)  # a reload never reads a half-written file


def _reloader(
    pid: int,
    port: int,
    path: Path,
    configs: Sequence[dict[str, Any]],
    tally: Tally,
    stop: threading.Event,
) -> None:
    """Every RELOAD_EVERY seconds: check the last one took, switch config, SIGHUP or POST."""
    n = 0
    while not stop.wait(RELOAD_EVERY):
        expected = {p["id"] for p in configs[n % 2]["projects"]}
        with tally.lock:
            seen = set(tally.last_up)
            if seen != expected:
                tally.project_mismatch += 1
                if not tally.first_mismatch:
                    tally.first_mismatch = (
                        f"after reload {n}: {len(seen)} projects in /metrics, "
                        f"{len(expected)} configured"
                    )
        n += 1
        _write(path, configs[n % 2])
        if n % 2:
            with tally.lock:
                tally.reload_sent["SIGHUP"] += 1
            os.kill(pid, signal.SIGHUP)
            continue
        with tally.lock:
            tally.reload_sent["POST /-/reload"] += 1
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            conn.request("POST", "/-/reload", body=b"")
            resp = conn.getresponse()
            text = resp.read().decode("utf-8", "replace").strip()
            if resp.status != 200:
                raise ValueError(f"status {resp.status}: {text}")
        except Exception as exc:
            with tally.lock:
                tally.reload_post_failures += 1
                if not tally.first_reload_failure:
                    tally.first_reload_failure = f"{type(exc).__name__}: {exc}"[:300]
        finally:
            conn.close()


# ------------------------------------------------------------------ hostile clients


def _open_hostile(port: int, tally: Tally) -> list[socket.socket]:
    """A burst of connections that never finish a request, or never read the answer."""
    opened: list[socket.socket] = []
    with tally.lock:
        tally.burst = True
        tally.bursts += 1
    for i in range(HOSTILE_PER_KIND * len(HOSTILE_KINDS)):
        kind = HOSTILE_KINDS[i % len(HOSTILE_KINDS)]
        try:
            began = time.monotonic()
            s = socket.create_connection(("127.0.0.1", port), timeout=2)
            with tally.lock:
                tally.hostile_connect.append(time.monotonic() - began)
            if kind == "half request line":
                s.sendall(b"GET /metr")
            elif kind == "half headers":
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept-Encoding: gz")
            elif kind == "response never read":
                s.sendall(
                    b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: "
                    + PROMETHEUS_ACCEPT.encode()
                    + b"\r\n\r\n"
                )
            elif kind == "half body":
                s.sendall(
                    b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n"
                    b"Content-Length: 65536\r\n\r\nnot all of it"
                )
        except OSError:
            with tally.lock:
                tally.hostile_connect_failures += 1
            continue
        opened.append(s)
        with tally.lock:
            tally.hostile_opened[kind] += 1
    return opened


def _abandon(socks: list[socket.socket], tally: Tally) -> None:
    """Close every other one with a reset (SO_LINGER 0), the rest with a FIN."""
    for i, s in enumerate(socks):
        with contextlib.suppress(OSError):
            if i % 2:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
    socks.clear()
    with tally.lock:
        tally.burst = False


# ------------------------------------------------------------------ the exporter's log


class LogReader:
    """Reads the exporter's JSON log as it grows, complete lines only."""

    def __init__(self, path: Path) -> None:
        self._file: IO[bytes] = open(path, "rb")  # noqa: SIM115 - closed by close()
        self._rest = b""

    def read(self, t: float, tally: Tally) -> None:
        data = self._rest + self._file.read()
        *lines, self._rest = data.split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", "replace")
            if not line.strip():
                continue
            tally.log_lines += 1
            if "Traceback" in line:
                tally.tracebacks += 1
            try:
                event = json.loads(line)
            except ValueError:
                event = None
            if isinstance(event, dict):
                tally.log_events.append((t, event))
                continue
            tally.non_json += 1
            if _EXCEPTION_LINE.match(line):
                tally.exceptions[line.strip()[:100]] += 1
            if len(tally.non_json_kept) < 300:
                tally.non_json_kept.append(line)

    def close(self) -> None:
        self._file.close()


# ------------------------------------------------------------------ the run


@dataclass
class Outcome:
    wall: float
    samples: list[Sample]
    tally: Tally
    endless: str
    configs: list[dict[str, Any]]
    died: int | None  # the exporter's exit code if it died during the run
    stop_code: int | None
    stop_seconds: float
    exit_log: str = ""


def _wait_ready(port: int, proc: subprocess.Popen[Any], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"exporter exited {proc.returncode} before it was ready")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", "/readyz")
            resp = conn.getresponse()
            resp.read()
            if resp.status == 200:
                return
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.2)
    raise BenchError(f"exporter not ready within {timeout:.0f} s")


def _soak(minutes: float, keep_log: Path | None) -> Outcome:
    from exporter.simulator import DEFAULT_API_KEY, Simulator

    ids = Simulator(projects=PROJECTS, sessions_per_project=0, seed=SEED).project_ids
    endless = ids[-1]
    sim_args = [
        "--seed",
        str(SEED),
        "--evolve-every",
        str(EVOLVE_EVERY),
        *(x for item in FAULTS.items() for x in item),
        "--endless-project",
        endless,
    ]
    duration = minutes * 60
    with (
        simulator_process(PROJECTS, SESSIONS, extra=sim_args) as sim,
        tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp,
    ):
        if list(sim.project_ids) != ids:
            raise BenchError("the simulator's project ids are not the ones its seed gives")
        names = [(pid, f"project-{i}") for i, pid in enumerate(ids)]
        state = Path(tmp) / "state.db"
        # A: every project; B: one regular project removed and another renamed.
        config_a = _config(sim.base_url, DEFAULT_API_KEY, names, state)
        config_b = _config(
            sim.base_url,
            DEFAULT_API_KEY,
            [(ids[0], "project-0-renamed"), *names[2:]],
            state,
        )
        configs = [config_a, config_b]
        config_path = Path(tmp) / "config.yaml"
        _write(config_path, config_a)
        log_path = Path(tmp) / "exporter.log"
        port = free_port()
        tally = Tally()
        samples: list[Sample] = []
        stop = threading.Event()
        threads: list[threading.Thread] = []
        hostile: list[socket.socket] = []
        died: int | None = None
        stop_code: int | None = None
        stop_seconds = math.nan
        wall = 0.0
        with open(log_path, "wb") as log_out:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "exporter",
                    "--config",
                    str(config_path),
                    "--web.listen-address",
                    f"127.0.0.1:{port}",
                    "--log.format",
                    "json",
                    "--web.enable-lifecycle",
                ],
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log_out,
                stderr=log_out,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        reader = LogReader(log_path)
        try:
            try:
                _wait_ready(port, proc)
            except BenchError as exc:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise BenchError(f"{exc}\nexporter log:\n{tail}") from None
            t0 = time.monotonic()
            end = t0 + duration
            threads = [
                threading.Thread(target=_scraper, args=(port, tally, t0, stop), daemon=True),
                threading.Thread(
                    target=_reloader,
                    args=(proc.pid, port, config_path, configs, tally, stop),
                    daemon=True,
                ),
            ]
            for thread in threads:
                thread.start()
            next_report = t0 + duration / 10

            def take(quiet: bool) -> bool:
                """A sample; False once the exporter is gone."""
                nonlocal died
                t = time.monotonic() - t0
                if proc.poll() is not None:
                    died = proc.returncode
                    stop.set()  # no more signals to a pid that is not ours any more
                    return False
                try:
                    samples.append(_sample(proc.pid, t, quiet))
                except OSError:
                    died = proc.wait(timeout=5)
                    stop.set()
                    return False
                with tally.lock:
                    reader.read(t, tally)
                return True

            cycle = t0
            while time.monotonic() < end:
                if not take(quiet=True):
                    break
                hostile = _open_hostile(port, tally)
                time.sleep(max(cycle + 2.0 - time.monotonic(), 0.0))
                if not take(quiet=False):
                    break
                time.sleep(max(cycle + 3.0 - time.monotonic(), 0.0))
                _abandon(hostile, tally)
                # The next quiet sample comes a second after the close, even if the cycle slipped.
                cycle = max(cycle + CYCLE, time.monotonic() + 1.0)
                time.sleep(max(cycle - time.monotonic(), 0.0))
                if time.monotonic() >= next_report:
                    done = (time.monotonic() - t0) / duration * 100
                    print(f"  {done:3.0f} % (load {load_average()})", file=sys.stderr)
                    next_report += duration / 10
            if died is None:
                take(quiet=True)
            wall = time.monotonic() - t0
            stop.set()
            for thread in threads:
                thread.join(timeout=SCRAPE_TIMEOUT + 65)
            if died is None:
                began = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                try:
                    stop_code = proc.wait(timeout=STOP_SECONDS)
                except subprocess.TimeoutExpired:
                    stop_code = None
                stop_seconds = time.monotonic() - began
            with tally.lock:
                reader.read(time.monotonic() - t0, tally)
            if keep_log is not None:
                shutil.copyfile(log_path, keep_log)
        finally:
            stop.set()
            _abandon(hostile, tally)
            stop_process(proc)
            reader.close()
            for thread in threads:
                thread.join(timeout=SCRAPE_TIMEOUT + 65)
        exit_log = ""
        if died is not None:
            exit_log = log_path.read_text(errors="replace")[-3000:]
    return Outcome(
        wall=wall,
        samples=samples,
        tally=tally,
        endless=endless,
        configs=configs,
        died=died,
        stop_code=stop_code,
        stop_seconds=stop_seconds,
        exit_log=exit_log,
    )


# ------------------------------------------------------------------ report


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f}"


def _int(values: Sequence[float]) -> str:
    return "" if not values else f"{median(values):.0f}"


def _max(values: Sequence[int]) -> str:
    return "" if not values else str(max(values))


def _simulated_hours(seconds: float) -> float:
    return seconds * PRODUCTION_INTERVAL / POLL_INTERVAL / 3600


Event = tuple[float, dict[str, Any]]  # seconds since the start, a JSON log event


def _polls(out: Outcome) -> tuple[list[Event], list[Event]]:
    """poll_succeeded and poll_failed events of the exporter's log."""
    events = out.tally.log_events
    ok = [(t, e) for t, e in events if e.get("event") == "poll_succeeded"]
    failed = [(t, e) for t, e in events if e.get("event") in ("poll_failed", "poll_failed_config")]
    return ok, failed


def _report(out: Outcome) -> list[tuple[str, bool, str]]:
    _over_time(out)
    outcome = _flatness(out)
    outcome += _activity(out)
    print()
    for name, met, detail in outcome:
        print(f"target: {name}: {verdict(met)}, {detail}")
    return outcome


def _over_time(out: Outcome) -> None:
    """One row per tenth of the run."""
    tally = out.tally
    samples = out.samples
    tenth = out.wall / 10
    polls_ok, polls_failed = _polls(out)

    def part(t: float) -> int:
        return min(int(t / tenth), 9) if tenth > 0 else 0

    print("\n### Over time\n")
    rows = []
    for i in range(10):
        these = [s for s in samples if part(s.t) == i]
        quiet = [s for s in these if s.quiet]
        busy = [s for s in these if not s.quiet]
        scrapes = [x for x in tally.scrapes if part(x.t) == i]
        ok = [x for x in scrapes if x.ok]
        cpu = ""
        if len(these) >= 2 and these[-1].t > these[0].t:
            cpu = f"{(these[-1].cpu - these[0].cpu) / (these[-1].t - these[0].t) * 100:.0f}"
        rows.append(
            [
                f"{i * tenth:.0f}-{(i + 1) * tenth:.0f} s" + (" (warm-up)" if i < 2 else ""),
                _mib(median([s.rss for s in these])) if these else "",
                f"{_int([s.threads for s in quiet])} / {_max([s.threads for s in quiet])}",
                _max([s.threads for s in busy]),
                f"{_int([s.fds for s in quiet])} / {_max([s.fds for s in quiet])}",
                _max([s.fds for s in busy]),
                cpu,
                str(sum(1 for t, _ in polls_ok if part(t) == i)),
                str(sum(1 for t, _ in polls_failed if part(t) == i)),
                f"{len(ok)} / {len(scrapes) - len(ok)}",
                f"{percentile([x.seconds for x in ok], 99) * 1000:.0f}" if ok else "",
            ]
        )
    print(
        table(
            [
                "part of the run",
                "RSS MiB",
                "threads quiet med / max",
                "threads busy max",
                "fds quiet med / max",
                "fds busy max",
                "CPU %",
                "polls ok",
                "polls failed",
                "scrapes ok / failed",
                "scrape p99 ms",
            ],
            rows,
        )
    )
    print(
        f"\nA sample every {CYCLE / 2:.0f} s from /proc/PID: quiet ones a second after a hostile "
        f"burst was closed, busy ones with a burst of "
        f"{HOSTILE_PER_KIND * len(HOSTILE_KINDS)} hostile connections open. RSS is the median "
        "of all samples; CPU is utime+stime of every thread over the part, in % of one core; "
        "polls are poll_succeeded / poll_failed events in the exporter's log (the endless "
        "project fails every poll by design)."
    )


def _flatness(out: Outcome) -> list[tuple[str, bool, str]]:
    """The first tenth after warm-up against the last tenth, quiet samples only."""
    samples = out.samples
    wall = out.wall
    tenth = wall / 10
    start = wall * WARMUP_SHARE
    first = [s for s in samples if s.quiet and start <= s.t < start + tenth]
    last = [s for s in samples if s.quiet and s.t >= wall - tenth]
    after = [s for s in samples if s.quiet and s.t >= start]
    print(
        f"\n### Flatness: quiet samples, {start:.0f}-{start + tenth:.0f} s against "
        f"{wall - tenth:.0f}-{wall:.0f} s ({len(first)} and {len(last)} samples; the first "
        f"{WARMUP_SHARE:.0%} is warm-up)\n"
    )
    outcome: list[tuple[str, bool, str]] = []
    rows = []
    if not first or not last:
        print("too few samples to judge flatness: run longer")
        outcome.append(("soak: flat RSS, threads and fds", False, "too few samples"))
    else:
        rss_first = median([s.rss for s in first])
        rss_last = median([s.rss for s in last])
        ratio = rss_last / rss_first
        met = ratio <= RSS_RATIO_TARGET
        rows.append(
            [
                "RSS MiB",
                _mib(rss_first),
                _mib(rss_last),
                f"{ratio:.2f}x",
                _mib(max(s.rss for s in first)),
                _mib(max(s.rss for s in last)),
                _mib(max(s.rss for s in samples)),
                f"median ratio <= {RSS_RATIO_TARGET:.2f}",
                verdict(met),
            ]
        )
        outcome.append(
            (
                f"soak: RSS flat (last/first median <= {RSS_RATIO_TARGET:.2f}x)",
                met,
                f"{ratio:.2f}x ({_mib(rss_first)} -> {_mib(rss_last)} MiB)",
            )
        )
        for label, attr in (("threads", "threads"), ("open fds", "fds")):
            head = [int(getattr(s, attr)) for s in first]
            tail = [int(getattr(s, attr)) for s in last]
            met = max(tail) <= max(head) + COUNT_SLACK
            rows.append(
                [
                    label,
                    f"{median(head):.0f}",
                    f"{median(tail):.0f}",
                    f"{median(tail) / median(head):.2f}x",
                    str(max(head)),
                    str(max(tail)),
                    str(max(int(getattr(s, attr)) for s in samples)),
                    f"last max <= first max + {COUNT_SLACK}",
                    verdict(met),
                ]
            )
            outcome.append(
                (
                    f"soak: {label} flat (last max <= first max + {COUNT_SLACK})",
                    met,
                    f"{max(head)} -> {max(tail)} (quiet samples; "
                    f"{max(int(getattr(s, attr)) for s in after)} at most after warm-up)",
                )
            )
        print(
            table(
                [
                    "measure",
                    "first median",
                    "last median",
                    "ratio",
                    "first max",
                    "last max",
                    "max of run (busy too)",
                    "target",
                    "status",
                ],
                rows,
            )
        )

    return outcome


def _activity(out: Outcome) -> list[tuple[str, bool, str]]:
    """What happened during the run, and the health targets."""
    tally = out.tally
    wall = out.wall
    tenth = wall / 10
    events = tally.log_events
    polls_ok, polls_failed = _polls(out)
    reasons: Counter[str] = Counter()
    endless_reasons: Counter[str] = Counter()
    for _, e in polls_failed:
        (endless_reasons if e.get("project_id") == out.endless else reasons)[
            str(e.get("reason"))
        ] += 1
    regular_ok = [e for _, e in polls_ok if e.get("project_id") != out.endless]
    per_project = Counter(str(e.get("project_id")) for e in regular_ok)
    tail_ok = {str(e.get("project_id")) for t, e in polls_ok if t >= wall - tenth}
    final = out.configs[sum(tally.reload_sent.values()) % 2]
    final_regular = [p["id"] for p in final["projects"] if p["id"] != out.endless]
    stalled = [pid for pid in final_regular if pid not in tail_ok]
    scrapes_ok = [x for x in tally.scrapes if x.ok]
    scrape_failed = len(tally.scrapes) - len(scrapes_ok)
    errors = [e for _, e in events if e.get("level") in ("error", "critical")]
    warnings = [e for _, e in events if e.get("level") == "warning"]
    error_kinds = Counter(str(e.get("event")) for e in errors)
    with_exception = [e for _, e in events if "exception" in e or "exc_info" in e]
    reloaded = sum(1 for _, e in events if e.get("event") == "config_reloaded")
    reload_failed = sum(1 for _, e in events if e.get("event") == "config_reload_failed")
    hours = _simulated_hours(wall)
    attempts = len(polls_ok) + len(polls_failed)
    per_project_attempts = attempts / PROJECTS if attempts else 0.0
    lat = [x.seconds for x in scrapes_ok]
    lat_busy = [x.seconds for x in scrapes_ok if x.busy]
    lat_quiet = [x.seconds for x in scrapes_ok if not x.busy]
    slow = [x for x in tally.scrapes if x.seconds > 0.5]
    connects = [x.connect for x in tally.scrapes if math.isfinite(x.connect)]

    def spread(values: Sequence[float]) -> str:
        if not values:
            return "none"
        return (
            f"median {median(values) * 1000:.1f}, p99 {percentile(values, 99) * 1000:.1f}, "
            f"max {max(values) * 1000:.1f} ({len(values)})"
        )

    def counts(c: Counter[str]) -> str:
        return ", ".join(f"{k} {v}" for k, v in c.most_common()) or "none"

    rows = [
        [
            "wall time",
            f"{wall:.0f} s = {hours:.1f} simulated hours "
            f"(poll_interval_seconds {POLL_INTERVAL} standing in for {PRODUCTION_INTERVAL:.0f}, "
            f"{PRODUCTION_INTERVAL / POLL_INTERVAL:.0f}x)",
        ],
        [
            "poll attempts",
            f"{attempts:,} ({per_project_attempts:,.0f} per project: "
            f"{per_project_attempts * PRODUCTION_INTERVAL / 3600:.1f} h of 60 s polls)",
        ],
        [
            "polls succeeded (log)",
            f"{len(polls_ok):,}; per regular project min {min(per_project.values(), default=0)}, "
            f"max {max(per_project.values(), default=0)} (project-1 is configured half the time)",
        ],
        ["successful polls seen moving in scrapes", f"{tally.polls_seen:,}"],
        ["polls failed, regular projects, by reason", counts(reasons)],
        ["polls failed, endless project, by reason", counts(endless_reasons)],
        [
            "scrapes",
            f"{len(tally.scrapes):,} done, {scrape_failed} failed"
            + (f" ({counts(tally.scrape_failures)})" if scrape_failed else ""),
        ],
        ["scrape latency ms", spread(lat)],
        ["scrape latency ms, during a hostile burst", spread(lat_busy)],
        ["scrape latency ms, between bursts", spread(lat_quiet)],
        [
            "scrapes slower than 0.5 s",
            f"{len(slow)}, of which {sum(1 for x in slow if x.connect > 0.5)} waited over 0.5 s "
            f"to connect (max connect {max(connects, default=0) * 1000:.0f} ms)",
        ],
        ["NaN or Inf sample values", str(tally.non_finite)],
        [
            "API requests by code (llamacloud_api_requests_total, last scrape)",
            ", ".join(f"{k} {v:,.0f}" for k, v in sorted(tally.api_requests.items())),
        ],
        [
            "reloads sent",
            f"{counts(tally.reload_sent)}; POST failures {tally.reload_post_failures}; "
            f"config_reloaded events {reloaded}, config_reload_failed {reload_failed}",
        ],
        [
            "project set in /metrics not the configured one, 10 s after a reload",
            str(tally.project_mismatch),
        ],
        [
            "hostile connections",
            f"{sum(tally.hostile_opened.values()):,} opened ({counts(tally.hostile_opened)}); "
            f"{tally.hostile_connect_failures} could not connect; connect ms "
            f"{spread(tally.hostile_connect)}",
        ],
        [
            "exporter log",
            f"{tally.log_lines:,} lines; error events: {counts(error_kinds)}; "
            f"{len(warnings):,} warnings; {len(with_exception)} with an exception; "
            f"{tally.non_json:,} not JSON; {tally.tracebacks} with 'Traceback'",
        ],
        [
            "exporter during the run",
            "alive throughout" if out.died is None else f"EXITED with code {out.died}",
        ],
        [
            "SIGTERM at the end",
            "not sent (the exporter had died)"
            if out.died is not None
            else f"exit code {out.stop_code} after {out.stop_seconds:.1f} s"
            if out.stop_code is not None
            else f"still running after {STOP_SECONDS:.0f} s (killed)",
        ],
    ]
    print("\n### Activity and health\n")
    print(table(["what", "value"], rows))
    if tally.first_scrape_failure:
        print(f"\nfirst failed scrape: {tally.first_scrape_failure}")
    if tally.first_non_finite:
        print(f"first non-finite value: {tally.first_non_finite}")
    if tally.first_reload_failure:
        print(f"first failed POST /-/reload: {tally.first_reload_failure}")
    if tally.first_mismatch:
        print(f"first project-set mismatch: {tally.first_mismatch}")
    if stalled:
        print(f"regular projects with no successful poll in the last tenth: {', '.join(stalled)}")
    if tally.non_json:
        _print_non_json(tally)
    shown = [e for e in errors if e not in with_exception] + with_exception
    if shown:
        print(f"\nError events and events with an exception ({len(shown)}; the first 5):\n")
    for e in shown[:5]:
        print(f"    {_brief(e)}")
    if out.exit_log:
        print(f"\nthe end of the exporter's log:\n{out.exit_log}")

    stopped_ok = out.died is None and out.stop_code == 0 and out.stop_seconds <= STOP_SECONDS
    return [
        (
            f"soak: the exporter stayed up and exits 0 on SIGTERM within {STOP_SECONDS:.0f} s",
            stopped_ok,
            "died during the run"
            if out.died is not None
            else f"exit code {out.stop_code} after {out.stop_seconds:.1f} s",
        ),
        (
            "soak: every scrape answered and parsed, no NaN or Inf",
            scrape_failed == 0 and tally.non_finite == 0 and bool(tally.scrapes),
            f"{len(tally.scrapes):,} scrapes, {scrape_failed} failed, "
            f"{tally.non_finite} non-finite values",
        ),
        (
            "soak: polling kept going (every regular project polled OK in the last tenth)",
            not stalled,
            f"{len(final_regular) - len(stalled)} of {len(final_regular)}",
        ),
        (
            "soak: no traceback in the exporter's log",
            tally.tracebacks == 0 and not with_exception,
            f"{tally.tracebacks} lines with 'Traceback', {len(with_exception)} events with "
            "an exception",
        ),
    ]


def _print_non_json(tally: Tally) -> None:
    """What the exporter wrote outside its JSON log: exception kinds and the first traceback."""
    lines = tally.non_json_kept
    banners = sum(1 for line in lines if line.startswith("Exception occurred during processing"))
    kinds = ", ".join(f"{k} x{v}" for k, v in tally.exceptions.most_common()) or "none"
    print(
        f"\nThe exporter wrote {tally.non_json:,} lines that are not JSON; exception lines "
        f"among them: {kinds}. The first traceback"
        + (
            f" ({banners} socketserver 'Exception occurred during processing of request'"
            f" banners in the first {len(lines)} lines)"
            if banners
            else ""
        )
        + ", threads may interleave their lines:\n"
    )
    start = next((i for i, line in enumerate(lines) if line.startswith("Traceback")), 0)
    for line in lines[start : start + 20]:
        print(f"    {line}")
        if _EXCEPTION_LINE.match(line):
            break


def _brief(event: dict[str, Any]) -> str:
    """A log event on one line: its fields, and an exception's type, value and last frame."""
    fields = {k: v for k, v in event.items() if k not in ("exception", "timestamp")}
    text = json.dumps(fields)
    for exc in event.get("exception") or []:
        if isinstance(exc, dict):
            frames = exc.get("frames") or [{}]
            last = frames[-1] if isinstance(frames[-1], dict) else {}
            text += (
                f"; {exc.get('exc_type')}: {exc.get('exc_value')} at "
                f"{last.get('filename')}:{last.get('lineno')} in {last.get('name')}"
            )
    return text[:600]


def run(
    *, quick: bool, rounds: int = 1, minutes: float | None = None, keep_log: Path | None = None
) -> list[tuple[str, bool, str]]:
    """One soak (``rounds`` is ignored: the run is long already)."""
    minutes = minutes if minutes is not None else QUICK_MINUTES if quick else DEFAULT_MINUTES
    wall = minutes * 60
    print(
        f"\n## Soak: {minutes:g} min of wall time = {_simulated_hours(wall):.1f} simulated hours "
        f"of polling with faults\n"
    )
    fault_text = ", ".join(f"{k.lstrip('-')} {v}" for k, v in FAULTS.items())
    print(
        f"Simulator: {PROJECTS} projects of {SESSIONS:,} sessions (one of them endless), evolving "
        f"every {EVOLVE_EVERY} s; {fault_text}. Exporter: poll_interval_seconds {POLL_INTERVAL}, "
        f"timeout_seconds {TIMEOUT_SECONDS}, max_retries {MAX_RETRIES}, page_size {PAGE_SIZE}, "
        f"max_pages {MAX_PAGES}, a state file. Scrapes every {SCRAPE_EVERY} s (OpenMetrics and "
        f"text, gzip and identity); a reload every {RELOAD_EVERY:.0f} s (SIGHUP and POST in "
        f"turn, one project removed and another renamed, then back); every {CYCLE:.0f} s "
        f"a burst of {HOSTILE_PER_KIND * len(HOSTILE_KINDS)} hostile connections "
        f"({', '.join(HOSTILE_KINDS)}), held 3 s, then closed (half with a reset)."
    )
    sys.stdout.flush()
    out = _soak(minutes, keep_log)
    return _report(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description="Soak the real exporter with faults, reloads and hostile clients; check "
        "that RSS, threads and open fds stay flat.",
    )
    parser.add_argument(
        "--minutes",
        type=float,
        default=DEFAULT_MINUTES,
        help=f"wall minutes (default {DEFAULT_MINUTES:g}; each is "
        f"{_simulated_hours(60):.0f} simulated hours)",
    )
    parser.add_argument(
        "--keep-log", type=Path, metavar="PATH", help="copy the exporter's log here at the end"
    )
    args = parser.parse_args(argv)
    if args.minutes * 60 < CYCLE * 10:
        parser.error(f"--minutes must give at least {CYCLE * 10:.0f} s")
    return standalone(
        "soak", "soak", argv, lambda: run(quick=False, minutes=args.minutes, keep_log=args.keep_log)
    )


if __name__ == "__main__":
    raise SystemExit(main())
