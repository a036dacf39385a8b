"""The command line: ``python -m exporter.simulator`` (``main``) and its option parsers."""

from __future__ import annotations

import argparse
import contextlib
import math
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from .core import ORDERS
from .faults import FaultConfig
from .model import MAX_RUNS_PER_STEP
from .projects import ORGANIZATION_ID
from .server import DEFAULT_API_KEY, ENDPOINTS


def _parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--listen must be HOST:PORT, got {value!r}")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def _share(text: str) -> float:
    """An argparse type for a share: a number from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 1, got {text!r}")
    return value


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {text!r}")
        return value

    return parse


def _seconds(text: str) -> float:
    """An argparse type for a duration: a finite number of seconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not 0.0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def _add_fault_options(parser: argparse.ArgumentParser) -> None:
    defaults = FaultConfig()
    group = parser.add_argument_group(
        "recurring faults",
        "Injected into GET /api/v1/chat (and GET /api/v1/chat/{session_id} or GET /api/v2/projects "
        "with --fault-endpoint), drawn "
        "from an RNG seeded by --seed, so the same seed and request order give the same faults. "
        "All are off by default. Per request they are checked in this order: a burst 503, a 429, "
        "a random 5xx.",
    )
    group.add_argument(
        "--rate-limit-share",
        type=_share,
        default=defaults.rate_limit_share,
        metavar="F",
        help="share of chat requests answered 429 with Retry-After, 0..1 (default: 0)",
    )
    group.add_argument(
        "--rate-limit-retry-after",
        type=_int_at_least(0),
        default=defaults.rate_limit_retry_after,
        metavar="SECONDS",
        help="Retry-After value sent with those 429s (default: %(default)s)",
    )
    group.add_argument(
        "--server-error-share",
        type=_share,
        default=defaults.server_error_share,
        metavar="F",
        help="share of chat requests answered 500, 502 or 503 (drawn at random), 0..1 (default: 0)",
    )
    group.add_argument(
        "--server-error-burst-every",
        type=_int_at_least(0),
        default=defaults.server_error_burst_every,
        metavar="N",
        help="every N-th chat request starts a burst of 503s; 0 disables bursts (default: 0)",
    )
    group.add_argument(
        "--server-error-burst-length",
        type=_int_at_least(1),
        default=defaults.server_error_burst_length,
        metavar="L",
        help="consecutive 503s per burst, the starting request included (default: %(default)s)",
    )
    group.add_argument(
        "--timeout-share",
        type=_share,
        default=defaults.timeout_share,
        metavar="F",
        help="share of chat requests that stall --timeout-seconds, then answer normally, 0..1 "
        "(default: 0)",
    )
    group.add_argument(
        "--timeout-seconds",
        type=_seconds,
        default=defaults.timeout_seconds,
        metavar="SECONDS",
        help="how long a stalled request stalls; make it longer than the client's timeout "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--truncate-share",
        type=_share,
        default=defaults.truncate_share,
        metavar="F",
        help="share of 200 answers cut in half, leaving invalid JSON, 0..1 (default: 0)",
    )
    group.add_argument(
        "--malformed-share",
        type=_share,
        default=defaults.malformed_share,
        metavar="F",
        help="share of listed items replaced by a malformed one (not an object, no session_id, "
        "a token count that is a string or negative, job_metadata not an object), 0..1 "
        "(default: 0)",
    )
    group.add_argument(
        "--malformed-history-share",
        type=_share,
        default=defaults.malformed_history_share,
        metavar="F",
        help="share of session histories (GET /api/v1/chat/{session_id}) served with events of "
        "types the SDK does not know and, half of them, one stop event of the wrong shape, 0..1 "
        "(default: 0)",
    )
    group.add_argument(
        "--endless-project",
        action="append",
        default=[],
        metavar="ID",
        help="make this project's listing never end; repeatable. Project ids are fixed by "
        "--seed and --projects and printed at start",
    )
    group.add_argument(
        "--fault-endpoint",
        action="append",
        choices=ENDPOINTS,
        default=None,
        metavar="NAME",
        help="an endpoint the request-level faults above strike: chat (GET /api/v1/chat), "
        "session (GET /api/v1/chat/{session_id}) or projects (GET /api/v2/projects); repeatable "
        "(default: chat)",
    )


def _fault_config(args: argparse.Namespace) -> FaultConfig:
    return FaultConfig(
        rate_limit_share=args.rate_limit_share,
        rate_limit_retry_after=args.rate_limit_retry_after,
        server_error_share=args.server_error_share,
        server_error_burst_every=args.server_error_burst_every,
        server_error_burst_length=args.server_error_burst_length,
        timeout_share=args.timeout_share,
        timeout_seconds=args.timeout_seconds,
        truncate_share=args.truncate_share,
        malformed_share=args.malformed_share,
        malformed_history_share=args.malformed_history_share,
        endless_projects=tuple(args.endless_project),
        endpoints=tuple(args.fault_endpoint or ("chat",)),
    )


def main(argv: list[str] | None = None) -> int:
    """Run the simulator until SIGINT or SIGTERM."""
    # Looked up on the package when called, so replacing ``exporter.simulator.Simulator``
    # (as tests do) reaches this command line too.
    from . import Simulator

    parser = argparse.ArgumentParser(
        prog="python -m exporter.simulator",
        description=(
            "Serve a simulated LlamaCloud chat API (GET /api/v1/chat, and each session's history "
            "at GET /api/v1/chat/{session_id}) with synthetic, evolving "
            "projects, listed by GET /api/v2/projects?organization_id=" + ORGANIZATION_ID + ". "
            "Prints 'simulator listening on URL', one 'project ID' line per project and "
            "'organization ID', then serves until interrupted."
        ),
    )
    parser.add_argument(
        "--listen",
        default="127.0.0.1:0",
        metavar="HOST:PORT",
        help="address to bind; port 0 picks a free port (default: %(default)s)",
    )
    parser.add_argument("--projects", type=int, default=3, help="number of projects (default: 3)")
    parser.add_argument(
        "--sessions", type=int, default=50, help="initial sessions per project (default: 50)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the data and of the faults (default: 0)"
    )
    parser.add_argument(
        "--evolve-every",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="evolve the data this often; 0 freezes it (default: 5)",
    )
    parser.add_argument(
        "--error-share",
        type=float,
        default=0.1,
        metavar="F",
        help="share of runs that fail, 0..1 (default: 0.1)",
    )
    parser.add_argument(
        "--burst",
        type=_share,
        default=0.0,
        metavar="P",
        help="chance that a session which runs again while the data evolves runs once more, "
        f"drawn again after each extra run (at most {MAX_RUNS_PER_STEP} runs a step), so "
        "several runs fall between two listings, 0..1 (default: 0)",
    )
    parser.add_argument(
        "--latency",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="delay added to every request (default: 0)",
    )
    parser.add_argument(
        "--api-key",
        default=DEFAULT_API_KEY,
        metavar="KEY",
        help="bearer key accepted for every project (default: %(default)s)",
    )
    parser.add_argument(
        "--order",
        choices=ORDERS,
        default="newest-first",
        help="listing order: newest-first by last_updated_at (sessions that run again or appear "
        "during a paged listing shift it, as offset tokens allow) or created, in creation order "
        "(default: %(default)s)",
    )
    _add_fault_options(parser)
    args = parser.parse_args(argv)
    try:
        host, port = _parse_listen(args.listen)
        if args.latency < 0:
            raise ValueError("--latency must not be negative")
        simulator = Simulator(
            projects=args.projects,
            sessions_per_project=args.sessions,
            seed=args.seed,
            error_share=args.error_share,
            evolve_every=args.evolve_every if args.evolve_every > 0 else None,
            api_key=args.api_key,
            faults=_fault_config(args),
            order=args.order,
            burst=args.burst,
        )
        unknown = [p for p in args.endless_project if p not in simulator.project_ids]
        if unknown:
            raise ValueError(f"--endless-project: no such project: {', '.join(unknown)}")
    except ValueError as err:
        parser.error(str(err))
    simulator.latency = args.latency

    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    previous: dict[signal.Signals, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Outside the main thread signal() raises ValueError: the caller handles signals then.
        with contextlib.suppress(ValueError):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        try:
            url = simulator.start(host, port)
        except OSError as err:
            print(f"simulator: cannot listen on {args.listen}: {err}", file=sys.stderr)
            return 1
        print(f"simulator listening on {url}")
        for project_id in simulator.project_ids:
            print(f"project {project_id}")
        print(f"organization {simulator.organization_id}")
        sys.stdout.flush()
        while not done.wait(1.0):
            pass
        return 0
    finally:
        simulator.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
