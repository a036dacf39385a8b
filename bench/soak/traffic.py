"""The soak's settings and the load it puts on the exporter: scrapes, reloads, hostile clients.

Each runs on a thread of its own (or in the sampling loop, for the hostile bursts) and counts
what happened in one :class:`Tally`; the exporter's JSON log is read into it as it grows.
"""

from __future__ import annotations

import contextlib
import gzip
import http.client
import json
import math
import os
import re
import signal
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

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
STOP_SECONDS = 10.0
# The Accept header Prometheus sends: it prefers OpenMetrics.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
# What each hostile kind sends before it goes quiet.
HOSTILE_SENDS = {
    "idle": b"",
    "half request line": b"GET /metr",
    "half headers": b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept-Encoding: gz",
    "response never read": b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: "
    + PROMETHEUS_ACCEPT.encode()
    + b"\r\n\r\n",
    "half body": b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 65536\r\n\r\nnot all of it",
}
# A line that ends a traceback, as Python prints it.
EXCEPTION_LINE = re.compile(r"^[A-Za-z_.]+(Error|Exception|Exit|Interrupt)\b")
# Scrapes cycle through these (accept, accept-encoding): mostly as Prometheus asks.
SCRAPE_VARIANTS = (
    (PROMETHEUS_ACCEPT, "gzip"),
    (PROMETHEUS_ACCEPT, "gzip"),
    ("text/plain;version=0.0.4", "gzip"),
    (PROMETHEUS_ACCEPT, "identity"),
)


def settings_text() -> str:
    """The soak's settings as its output states them."""
    fault_text = ", ".join(f"{k.lstrip('-')} {v}" for k, v in FAULTS.items())
    return (
        f"Simulator: {PROJECTS} projects of {SESSIONS:,} sessions (one of them endless), evolving "
        f"every {EVOLVE_EVERY} s; {fault_text}. Exporter: poll_interval_seconds {POLL_INTERVAL}, "
        f"timeout_seconds {TIMEOUT_SECONDS}, max_retries {MAX_RETRIES}, page_size {PAGE_SIZE}, "
        f"max_pages {MAX_PAGES}, a state file. Scrapes every {SCRAPE_EVERY} s (OpenMetrics and "
        f"text, gzip and identity); a reload every {RELOAD_EVERY:.0f} s (SIGHUP and POST in "
        f"turn, one project removed and another renamed, then back); every {CYCLE:.0f} s "
        f"a burst of {HOSTILE_PER_KIND * len(HOSTILE_KINDS)} hostile connections "
        f"({', '.join(HOSTILE_KINDS)}), held 3 s, then closed (half with a reset)."
    )


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
    non_finite: int = 0
    success_stamps: dict[str, float] = field(default_factory=dict)
    polls_seen: int = 0  # llamacloud_last_successful_poll_timestamp_seconds moving
    last_up: dict[str, float] = field(default_factory=dict)
    api_requests: dict[str, float] = field(default_factory=dict)  # the exporter's counter
    reload_sent: Counter[str] = field(default_factory=Counter)
    reload_post_failures: int = 0
    project_mismatch: int = 0
    # The first of each kind of trouble, as the report names it: "first failed scrape", ...
    first: dict[str, str] = field(default_factory=dict)
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


# ------------------------------------------------------------------ scrapes


def _scrape_once(
    port: int, accept: str, encoding: str, timing: list[float]
) -> list[tuple[str, dict[str, str], float]]:
    """One scrape read raw and parsed as a Prometheus server would: every sample, or an
    exception; the time to connect goes to ``timing``."""
    from prometheus_client.openmetrics.parser import (
        text_string_to_metric_families as openmetrics_families,
    )
    from prometheus_client.parser import text_string_to_metric_families as text_families

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
    if cenc != encoding:
        raise ValueError(f"asked for {encoding}, got Content-Encoding {cenc}")
    text = (gzip.decompress(body) if cenc == "gzip" else body).decode("utf-8")
    is_openmetrics = ctype.startswith("application/openmetrics-text")
    if accept.startswith("application/openmetrics-text") != is_openmetrics:
        raise ValueError(f"asked for {accept.split(';')[0]}, got {ctype}")
    parse = openmetrics_families if is_openmetrics else text_families
    out = [(s.name, s.labels, s.value) for family in parse(text) for s in family.samples]
    if not out:
        raise ValueError("no samples")
    return out


def _record(tally: Tally, samples: list[tuple[str, dict[str, str], float]]) -> None:
    """What a good scrape shows: non-finite values, the projects up, the request counter, and
    successful polls (their timestamps moving). Holds ``tally.lock``."""
    bad = [(name, labels, v) for name, labels, v in samples if not math.isfinite(v)]
    if bad:
        tally.non_finite += len(bad)
        tally.first.setdefault("first non-finite value", f"{bad[0][0]}{bad[0][1]} = {bad[0][2]}")
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


def scraper(port: int, tally: Tally, t0: float, stop: threading.Event) -> None:
    """Scrape every SCRAPE_EVERY seconds, as Prometheus does, until ``stop``."""
    n = 0
    due = time.monotonic()
    while not stop.is_set():
        accept, encoding = SCRAPE_VARIANTS[n % len(SCRAPE_VARIANTS)]
        n += 1
        timing: list[float] = []
        with tally.lock:
            busy, bursts = tally.burst, tally.bursts
        began = time.monotonic()
        failure: Exception | None = None
        try:
            samples = _scrape_once(port, accept, encoding, timing)
        except Exception as exc:  # any failure of the scrape is what we count
            failure = exc
        elapsed = time.monotonic() - began
        with tally.lock:
            busy = busy or tally.burst or tally.bursts != bursts
            connect = timing[0] if timing else math.nan
            tally.scrapes.append(Scrape(began - t0, failure is None, elapsed, connect, busy))
            if failure is None:
                _record(tally, samples)
            else:
                reason = type(failure).__name__
                tally.scrape_failures[reason] += 1
                tally.first.setdefault("first failed scrape", f"{reason}: {failure}"[:300])
        due += SCRAPE_EVERY
        stop.wait(max(due - time.monotonic(), 0.0))


# ------------------------------------------------------------------ configs and reloads


def config(
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


def write(path: Path, config: dict[str, Any]) -> None:
    import yaml

    partial = path.with_suffix(".partial")
    partial.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    os.replace(partial, path)  # a reload never reads a half-written file


def reloader(
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
                tally.first.setdefault(
                    "first project-set mismatch",
                    f"after reload {n}: {len(seen)} projects in /metrics, "
                    f"{len(expected)} configured",
                )
        n += 1
        write(path, configs[n % 2])
        how = "SIGHUP" if n % 2 else "POST /-/reload"
        with tally.lock:
            tally.reload_sent[how] += 1
        if n % 2:
            os.kill(pid, signal.SIGHUP)
            continue
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
                failure = f"{type(exc).__name__}: {exc}"[:300]
                tally.first.setdefault("first failed POST /-/reload", failure)
        finally:
            conn.close()


# ------------------------------------------------------------------ hostile clients


def open_hostile(port: int, tally: Tally) -> list[socket.socket]:
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
            if HOSTILE_SENDS[kind]:
                s.sendall(HOSTILE_SENDS[kind])
        except OSError:
            with tally.lock:
                tally.hostile_connect_failures += 1
            continue
        opened.append(s)
        with tally.lock:
            tally.hostile_opened[kind] += 1
    return opened


def abandon(socks: list[socket.socket], tally: Tally) -> None:
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
            if EXCEPTION_LINE.match(line):
                tally.exceptions[line.strip()[:100]] += 1
            if len(tally.non_json_kept) < 300:
                tally.non_json_kept.append(line)

    def close(self) -> None:
        self._file.close()
