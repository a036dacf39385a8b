"""Command line: the daemon, ``--once``, ``--check-config`` and ``--demo``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import structlog
from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from . import __version__, heap
from .client import ApiClient
from .config import (
    DEFAULT_LISTEN_ADDRESS,
    Config,
    ConfigError,
    ProjectConfig,
    Secret,
    load_config,
    parse_shard,
    shard_from_hostname,
    split_listen_address,
)
from .logs import LEVELS, configure_logging, dropped_lines
from .metrics import StoreCollector
from .openfiles import Budget, OpenFileLimitError, prepare
from .poller import Poller, concurrent_polls, in_thread
from .store import StateError, StateFile, Store, check_state_path
from .targets import Targets, replica_config
from .web import Limits, MetricsServer, WebConfig, WebConfigError, load_web_config

log = structlog.get_logger("exporter")

DEMO_PROJECTS = ("production", "staging", "research")
# Above the simulated 10 % of failed runs, so the error budget panels show a burn that alerts
# on nothing; research has none, as a project without an objective shows no line.
DEMO_OBJECTIVES = (0.2, 0.15, None)
DEMO_POLL_INTERVAL = 5.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llamacloud-exporter",
        description="Prometheus exporter for LlamaCloud chat sessions.",
    )
    parser.add_argument("--config", metavar="PATH", help="YAML config file")
    parser.add_argument(
        "--web.listen-address",
        dest="listen_address",
        metavar="HOST:PORT",
        help=f"address to serve /metrics on (overrides web.listen_address; "
        f"default {DEFAULT_LISTEN_ADDRESS})",
    )
    parser.add_argument(
        "--web.config.file",
        dest="web_config",
        metavar="PATH",
        help="TLS and basic auth for every endpoint, in the Prometheus exporter-toolkit web "
        "config format (re-read on reload)",
    )
    parser.add_argument(
        "--web.enable-lifecycle",
        dest="enable_lifecycle",
        action="store_true",
        help="allow POST /-/reload to reload the config (SIGHUP always does)",
    )
    shard = parser.add_mutually_exclusive_group()
    shard.add_argument(
        "--shard",
        metavar="I/N",
        help="poll only shard I of N (from 0): the projects jump consistent hashing gives it "
        "(overrides sharding:)",
    )
    shard.add_argument(
        "--shard.from-hostname",
        dest="shard_from_hostname",
        action="store_true",
        help="take the shard index from the host name's StatefulSet ordinal "
        "(llamacloud-exporter-2 is shard 2); the total from --shard.total or sharding.total",
    )
    parser.add_argument(
        "--shard.total",
        dest="shard_total",
        type=int,
        metavar="N",
        help="how many shards there are, with --shard.from-hostname",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--check-config",
        action="store_true",
        help="validate the config, print every problem and exit (0 valid, 2 invalid)",
    )
    mode.add_argument(
        "--once",
        action="store_true",
        help="poll every project once, print the metrics and exit (1 if a project failed)",
    )
    mode.add_argument(
        "--demo",
        action="store_true",
        help="run against a built-in simulated LlamaCloud API: no API key or config needed",
    )
    parser.add_argument("--log.level", dest="log_level", choices=LEVELS, default="info")
    parser.add_argument(
        "--log.format",
        dest="log_format",
        choices=("json", "console"),
        default=None,
        help="default: console on a terminal, json otherwise",
    )
    parser.add_argument("--version", action="version", version=f"llamacloud-exporter {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    web: WebConfig | None = None
    if args.web_config:
        try:
            web = load_web_config(args.web_config)
        except WebConfigError as exc:
            return _invalid(f"{args.web_config}: invalid web configuration", exc.problems)
    if args.demo:
        if args.config:
            print(
                "llamacloud-exporter: error: --demo runs against a built-in simulator and "
                "takes no --config; drop one of them",
                file=sys.stderr,
            )
            return 2
        return run_demo(args.listen_address, web)
    if not args.config:
        parser.print_usage(sys.stderr)
        print("llamacloud-exporter: error: --config PATH is required (or --demo)", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config)
        if args.listen_address:
            config = config.with_listen_address(args.listen_address)
    except ConfigError as exc:
        return _invalid(f"{args.config}: invalid configuration", exc.problems)
    try:
        config = with_cli_shard(config, args)
    except ValueError as exc:
        print(f"llamacloud-exporter: error: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        state_problem = check_state_path(config.state_path) if config.state_path else None
        if state_problem:
            return _invalid(f"{args.config}: invalid configuration", [state_problem])
        print(f"{args.config}: configuration is valid ({_describe(config)})")
        if web is not None:
            print(f"{args.web_config}: web configuration is valid ({web.describe()})")
        return 0
    budget = open_file_budget(config)
    if budget is None:
        return 2
    state: StateFile | None = None
    if config.state_path:
        try:
            state = StateFile(config.state_path)
        except StateError as exc:
            print(f"state.path: cannot use {config.state_path}: {exc}", file=sys.stderr)
            return 2
        if state.moved_aside:
            moved_to, reason = state.moved_aside
            print(
                f"state.path: {config.state_path} was unusable ({reason}); moved to {moved_to}, "
                "starting from a fresh baseline",
                file=sys.stderr,
            )
        if state.read_only:
            print(
                f"state.path: {state.read_only}; serving the counters saved in it, and every "
                "save tries again (failures count in llamacloud_state_save_failures_total)",
                file=sys.stderr,
            )
    if args.once:
        return asyncio.run(run_once(config, state))

    def reread() -> tuple[Config, WebConfig | None]:
        fresh = load_config(args.config)
        if args.listen_address:
            fresh = fresh.with_listen_address(args.listen_address)
        try:
            fresh = with_cli_shard(fresh, args)
        except ValueError as exc:
            raise ConfigError([str(exc)]) from None
        return fresh, load_web_config(args.web_config) if args.web_config else None

    return run_daemon(
        config, budget, state, reread=reread, http_reload=args.enable_lifecycle, web=web
    )


def _invalid(header: str, problems: list[str]) -> int:
    """Say what is wrong with a file, a problem a line, and give the exit code (2)."""
    print(header, file=sys.stderr)
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    return 2


def with_cli_shard(config: Config, args: argparse.Namespace) -> Config:
    """``config`` on the shard the command line names, if it names one; ValueError says
    what is wrong with the flags."""
    if args.shard_total is not None and not args.shard_from_hostname:
        raise ValueError("--shard.total goes with --shard.from-hostname (or use --shard I/N)")
    if args.shard is not None:  # "" too: an unset variable must not mean "every project"
        return config.with_shard(parse_shard(args.shard))
    if args.shard_from_hostname:
        total = args.shard_total if args.shard_total is not None else config.shard.total
        if args.shard_total is None and total == 1:
            raise ValueError("--shard.from-hostname needs --shard.total N (or sharding.total)")
        hostname = os.environ.get("HOSTNAME") or socket.gethostname()
        return config.with_shard(shard_from_hostname(hostname, total))
    return config


def _listen_error(exc: OSError) -> str:
    """Why the web server cannot listen, in a user's words."""
    if exc.errno == errno.EADDRINUSE:
        return "the address is already in use (another exporter, or another program, listens there)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "no network interface of this host has that address"
    if exc.errno == errno.EACCES:
        return "permission denied (a port below 1024 needs privileges)"
    if isinstance(exc, socket.gaierror):
        return "the host name cannot be resolved"
    return exc.strerror or type(exc).__name__


def count_projects(count: int) -> str:
    """``1 project``, ``2 projects``."""
    return f"{count} project{'' if count == 1 else 's'}"


def _describe(config: Config) -> str:
    parts = [count_projects(len(config.projects))]
    if config.discovery is not None:
        parts.append("and discovery")
    if config.shard.total > 1:
        parts.append(f"shard {config.shard}")
    return " ".join(parts)


def api_connections(config: Config) -> int:
    """The most requests to the API under way at once, which the client's pool is sized to
    (so no request waits for a connection): one per poll the poller can run, and one for
    discovery, which lists one page at a time. A reload resizes it (``Poller.apply``)."""
    return concurrent_polls(config.max_concurrency) + 1


def open_file_budget(config: Config) -> Budget | None:
    """Raise the open-file limit and share it out; None (the error said) when it is too low."""
    try:
        return prepare(api_connections(config), config.max_concurrency)
    except OpenFileLimitError as exc:
        print(f"llamacloud-exporter: error: {exc}", file=sys.stderr)
        return None


def _components(
    config: Config, state: StateFile | None
) -> tuple[Store, Poller, ApiClient, Targets]:
    store = Store()
    store.dropped_log_lines = dropped_lines
    client = ApiClient(
        timeout=config.timeout_seconds,
        max_retries=config.max_retries,
        on_request=store.count_request,
        max_requests_per_second=config.max_requests_per_second,
        max_connections=api_connections(config),
        headers=config.api_headers,
    )
    heap.tune()
    poller = Poller(replica_config(config), store, client, state=state)
    return store, poller, client, Targets.for_poller(config, store, client, poller)


def _registry(store: Store) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store))
    return registry


async def run_once(config: Config, state: StateFile | None = None) -> int:
    store, poller, client, targets = _components(config, state)
    try:
        discovered = await targets.discover()
        ok = await poller.poll_all_once() and discovered
    finally:
        client.close()
        if state:
            state.close()
    sys.stdout.write(generate_latest(_registry(store)).decode())
    sys.stdout.flush()
    return 0 if ok else 1


def run_daemon(
    config: Config,
    budget: Budget,
    state: StateFile | None = None,
    on_ready: str | None = None,
    reread: Callable[[], tuple[Config, WebConfig | None]] | None = None,
    http_reload: bool = False,
    web: WebConfig | None = None,
) -> int:
    store, poller, client, targets = _components(config, state)
    host, port = split_listen_address(config.listen_address)
    try:
        limits = Limits(max_connections=budget.web_connections)
        server = MetricsServer(host, port, store, limits, web=web)
    except OSError as exc:
        where = "--web.listen-address HOST:PORT"
        if reread is not None:  # not --demo: the config has a say too
            where += " (or web.listen_address in the config)"
        log.error(
            "listen_failed",
            address=config.listen_address,
            error=_listen_error(exc),
            hint=f"choose another address with {where}",
        )
        if state:
            state.close()
        return 1
    server.start()
    shown_host = "localhost" if host in ("0.0.0.0", "::", "") else host
    url = f"{server.scheme}://{shown_host}:{server.port}/metrics"
    log.info(
        "exporter_started",
        version=__version__,
        listen_address=f"{host}:{server.port}",
        web=web.describe() if web is not None else "plain HTTP, no auth",
        projects=len(config.projects),
        discovery=config.discovery is not None,
        shard=str(config.shard),
        poll_interval_seconds=config.poll_interval_seconds,
        state_file=config.state_path,
        open_file_limit=budget.limit,
        api_connections=budget.api_connections,
        web_connections=server.max_connections,
    )
    if on_ready:
        print(on_ready.format(url=url), flush=True)
    store.record_reload(True, time.time())
    try:
        asyncio.run(_serve(poller, targets, client, store, server, reread, http_reload, budget))
    except Exception as exc:
        # The polls ended for a reason other than a stop: a process that serves numbers no
        # longer polled would keep up at 1. Exit non-zero, so a supervisor restarts it.
        log.error("exporter_failed", exc_info=exc)
        return 1
    finally:
        server.stop()
        if state:
            state.close()
    log.info("exporter_stopped")
    return 0


async def _serve(
    poller: Poller,
    targets: Targets,
    client: ApiClient,
    store: Store,
    server: MetricsServer,
    reread: Callable[[], tuple[Config, WebConfig | None]] | None,
    http_reload: bool,
    budget: Budget,
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_loop_exception)
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if reread is not None:
        reload = _reloader(targets, store, server, reread, budget)
        reloads: set[asyncio.Task[tuple[bool, str]]] = set()

        def on_sighup() -> None:
            task = loop.create_task(reload())
            reloads.add(task)  # a task nobody references may be collected half way
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, on_sighup)
        if http_reload:
            server.reload = lambda: asyncio.run_coroutine_threadsafe(reload(), loop).result(60)
    else:  # --demo: nothing to read again, and SIGHUP must not end the process
        loop.add_signal_handler(
            signal.SIGHUP, lambda: log.warning("config_reload_unavailable", reason="--demo")
        )
    discovering = asyncio.create_task(_supervised("discovery", targets.run, stop))
    try:
        await poller.run(stop)
    finally:
        server.reload = None
        client.close()
        discovering.cancel()
        await asyncio.gather(discovering, return_exceptions=True)


async def _supervised(
    name: str,
    run: Callable[[asyncio.Event], Coroutine[Any, Any, None]],
    stop: asyncio.Event,
    pause: float = 1.0,
) -> None:
    """``run(stop)`` until ``stop``; started again, after a pause that doubles up to a minute,
    if it ever ends or raises on its own (a loop that dies must not leave its work undone)."""
    while not stop.is_set():
        try:
            await run(stop)
        except Exception as exc:
            log.error("loop_died", loop=name, restart_in_seconds=pause, exc_info=exc)
        else:
            if stop.is_set():
                return
            log.error("loop_died", loop=name, restart_in_seconds=pause)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=pause)
        pause = min(pause * 2, 60.0)


def _reloader(
    targets: Targets,
    store: Store,
    server: MetricsServer,
    reread: Callable[[], tuple[Config, WebConfig | None]],
    budget: Budget,
) -> Callable[[], Coroutine[Any, Any, tuple[bool, str]]]:
    """SIGHUP and POST /-/reload: read the config and the web config again (a renewed
    certificate is picked up); a bad one of either changes nothing, nor does a
    ``max_concurrency`` the open-file limit cannot hold."""
    lock = asyncio.Lock()

    def failed(answer: str, **fields: Any) -> tuple[bool, str]:
        store.record_reload(False, time.time())
        log.error("config_reload_failed", **fields)
        return False, answer

    async def reload() -> tuple[bool, str]:
        async with lock:
            try:
                # Off the event loop: a large file must not delay the polls' scheduling.
                config, web = await in_thread(reread)
            except ConfigError as exc:  # a WebConfigError too
                what = "web configuration" if isinstance(exc, WebConfigError) else "configuration"
                return failed(
                    f"invalid {what}, nothing changed:\n" + "\n".join(exc.problems),
                    problems=exc.problems,
                )
            except Exception as exc:  # whatever went wrong, the old config stays in force
                name = type(exc).__name__
                return failed(f"reload failed ({name}), nothing changed", error=name)
            wanted = api_connections(config)
            if wanted > budget.api_room:
                problem = (
                    f"max_concurrency: {config.max_concurrency} needs {wanted} connections to "
                    f"the API; the open-file limit ({budget.limit}) leaves {budget.api_room} "
                    f"beside the web server's {budget.web_connections}: raise the limit "
                    "(ulimit -n) and restart"
                )
                return failed(
                    f"invalid configuration, nothing changed:\n{problem}", problems=[problem]
                )
            try:
                restart = await targets.reload(config)
            except Exception as exc:
                name = type(exc).__name__
                return failed(f"reload failed half way ({name})", error=name, exc_info=exc)
            if web is not None:
                web.carry_over(server.web)  # unchanged users: remembered passwords stay
            server.web = web
            store.record_reload(True, time.time())
            log.info(
                "config_reloaded",
                projects=len(config.projects),
                needs_restart=restart,
                web=web.describe() if web is not None else "plain HTTP, no auth",
            )
            message = f"configuration reloaded ({count_projects(len(config.projects))})"
            if restart:
                message += "; restart to apply: " + ", ".join(restart)
            return True, message

    return reload


def _loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """asyncio's own errors, logged without its default reprs (a task's exception repr may
    hold the bytes of a whole config file)."""
    exc = context.get("exception")
    log.error(
        "event_loop_error",
        message=str(context.get("message", ""))[:200],
        exc_info=exc if isinstance(exc, BaseException) else None,
    )


def run_demo(listen_address: str | None, web: WebConfig | None = None) -> int:
    from .simulator import DEFAULT_API_KEY, FaultConfig, Simulator

    sim = Simulator(
        projects=len(DEMO_PROJECTS),
        sessions_per_project=300,
        seed=42,
        evolve_every=DEMO_POLL_INTERVAL,
        # A few 429s and malformed items, so the failure metrics have something to show.
        faults=FaultConfig(rate_limit_share=0.02, malformed_share=0.003),
        order="newest-first",
        # A session that runs again often runs several times between two polls.
        burst=0.6,
    )
    base_url = sim.start()
    try:
        projects = tuple(
            ProjectConfig(
                id=pid,
                name=name,
                organization_id="",
                base_url=base_url,
                page_size=100,
                api_key=Secret(DEFAULT_API_KEY),
                key_source="the demo's built-in key",
                error_ratio_objective=objective,
            )
            for pid, name, objective in zip(
                sim.project_ids, DEMO_PROJECTS, DEMO_OBJECTIVES, strict=True
            )
        )
        config = Config(projects=projects, poll_interval_seconds=DEMO_POLL_INTERVAL)
        if listen_address:
            try:
                config = config.with_listen_address(listen_address)
            except ConfigError as exc:
                for problem in exc.problems:
                    print(problem, file=sys.stderr)
                return 2
        log.info("demo_simulator_started", base_url=base_url, projects=len(projects))
        budget = open_file_budget(config)
        if budget is None:
            return 2
        return run_daemon(
            config,
            budget,
            None,
            on_ready="llamacloud-exporter demo: metrics at {url} (simulated LlamaCloud API; "
            "Ctrl-C to stop)",
            web=web,
        )
    finally:
        sim.stop()
