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
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from bench.children import start_exporter, start_simulator
from bench.common import BenchError, load_average, proc_cpu_seconds, rss_bytes
from bench.soak import traffic
from bench.soak.report import Sample, SoakRun, simulated_hours, soak_report
from bench.soak.traffic import LogReader, Tally
from bench.targets import Outcome, standalone

DEFAULT_MINUTES = 5.0
QUICK_MINUTES = 1.0


def _sample(pid: int, t: float, quiet: bool) -> Sample:
    threads = len(os.listdir(f"/proc/{pid}/task"))
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return Sample(t, quiet, rss_bytes(pid), threads, fds, proc_cpu_seconds(pid))


def _soak(minutes: float, keep_log: Path | None) -> SoakRun:
    from exporter.simulator import DEFAULT_API_KEY, Simulator

    ids = Simulator(
        projects=traffic.PROJECTS, sessions_per_project=0, seed=traffic.SEED
    ).project_ids
    endless = ids[-1]
    sim_args = ["--seed", str(traffic.SEED), "--evolve-every", str(traffic.EVOLVE_EVERY)]
    sim_args += [
        *(x for item in traffic.FAULTS.items() for x in item),
        "--endless-project",
        endless,
    ]
    duration = minutes * 60
    with contextlib.ExitStack() as stack:
        sim = start_simulator(stack, traffic.PROJECTS, traffic.SESSIONS, extra=sim_args)
        if sim.ready["project_ids"] != ids:
            raise BenchError("the simulator's project ids are not the ones its seed gives")
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-soak-")))
        names = [(pid, f"project-{i}") for i, pid in enumerate(ids)]
        # A: every project; B: one regular project removed and another renamed.
        configs = [
            traffic.config(sim.ready["base_url"], DEFAULT_API_KEY, projects, tmp / "state.db")
            for projects in (names, [(ids[0], "project-0-renamed"), *names[2:]])
        ]
        config_path = tmp / "config.yaml"
        traffic.write(config_path, configs[0])
        log_path = tmp / "exporter.log"
        flags = ("--log.format", "json", "--web.enable-lifecycle")
        exporter, port = start_exporter(stack, config_path, log_path, *flags, timeout=60)
        proc = exporter.proc
        out = SoakRun(Tally(), endless, configs, [])
        tally = out.tally
        stop = threading.Event()
        hostile: list[socket.socket] = []
        reader = LogReader(log_path)
        stack.callback(reader.close)
        t0 = time.monotonic()
        threads = [
            threading.Thread(target=traffic.scraper, args=(port, tally, t0, stop), daemon=True),
            threading.Thread(
                target=traffic.reloader,
                args=(proc.pid, port, config_path, configs, tally, stop),
                daemon=True,
            ),
        ]

        @stack.callback
        def _end() -> None:
            stop.set()
            traffic.abandon(hostile, tally)
            for thread in threads:
                if thread.is_alive():
                    thread.join(timeout=traffic.SCRAPE_TIMEOUT + 65)

        for thread in threads:
            thread.start()

        def take(quiet: bool) -> bool:
            """A sample; False once the exporter is gone."""
            t = time.monotonic() - t0
            try:
                if proc.poll() is not None:
                    raise OSError
                out.samples.append(_sample(proc.pid, t, quiet))
            except OSError:
                out.died = proc.wait(timeout=5)
                stop.set()  # no more signals to a pid that is not ours any more
                return False
            with tally.lock:
                reader.read(t, tally)
            return True

        end = t0 + duration
        next_report = t0 + duration / 10
        cycle = t0
        while time.monotonic() < end:
            if not take(quiet=True):
                break
            hostile = traffic.open_hostile(port, tally)
            time.sleep(max(cycle + 2.0 - time.monotonic(), 0.0))
            if not take(quiet=False):
                break
            time.sleep(max(cycle + 3.0 - time.monotonic(), 0.0))
            traffic.abandon(hostile, tally)
            # The next quiet sample comes a second after the close, even if the cycle slipped.
            cycle = max(cycle + traffic.CYCLE, time.monotonic() + 1.0)
            time.sleep(max(cycle - time.monotonic(), 0.0))
            if time.monotonic() >= next_report:
                done = (time.monotonic() - t0) / duration * 100
                print(f"  {done:3.0f} % (load {load_average()})", file=sys.stderr)
                next_report += duration / 10
        if out.died is None:
            take(quiet=True)
        out.wall = time.monotonic() - t0
        _end()
        if out.died is None:
            began = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                out.stop_code = proc.wait(timeout=traffic.STOP_SECONDS)
            out.stop_seconds = time.monotonic() - began
        with tally.lock:
            reader.read(time.monotonic() - t0, tally)
        if keep_log is not None:
            shutil.copyfile(log_path, keep_log)
        if out.died is not None:
            out.exit_log = exporter.tail()
    return out


def run(*, quick: bool, minutes: float | None = None, keep_log: Path | None = None) -> Outcome:
    """One soak of ``minutes`` (default 5, quick 1)."""
    minutes = minutes if minutes is not None else QUICK_MINUTES if quick else DEFAULT_MINUTES
    wall = minutes * 60
    print(
        f"\n## Soak: {minutes:g} min of wall time = {simulated_hours(wall):.1f} simulated hours "
        f"of polling with faults\n"
    )
    print(traffic.settings_text())
    sys.stdout.flush()
    return soak_report(_soak(minutes, keep_log))


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
        f"{simulated_hours(60):.0f} simulated hours)",
    )
    parser.add_argument(
        "--keep-log", type=Path, metavar="PATH", help="copy the exporter's log here at the end"
    )
    args = parser.parse_args(argv)
    if args.minutes * 60 < traffic.CYCLE * 10:
        parser.error(f"--minutes must give at least {traffic.CYCLE * 10:.0f} s")
    return standalone(
        "soak", "soak", argv, lambda: run(quick=False, minutes=args.minutes, keep_log=args.keep_log)
    )
