"""Poll every project on its own schedule, at most ``max_concurrency`` at a time."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import random
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import structlog

from .aggregate import Listing, PollResult, SessionTracker
from .client import ApiClient, PollError, Stopped
from .config import Config, ProjectConfig
from .histories import Reads, count_as_latest, read_pending
from .saves import LINGER_SECONDS, SaveBatch
from .store import SaveJob, StateFile, Store
from .store.sqlitefile import CLOSE_TIMEOUT_SECONDS

log = structlog.get_logger("exporter.poller")

_T = TypeVar("_T")

JITTER = 0.05  # each wait is the interval give or take 5 %, so projects drift apart
LOOP_RESTART_SECONDS = 1.0  # a project's loop that died starts again after this long


class Poller:
    def __init__(
        self,
        config: Config,
        store: Store,
        client: ApiClient,
        *,
        state: StateFile | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
        save_linger: float = LINGER_SECONDS,
    ) -> None:
        """``save_linger``: how long a save waits for others to be written with
        (:mod:`.saves`)."""
        self._config = config
        self._store = store
        self._client = client
        self._state = state
        self._clock = clock
        self._monotonic = monotonic
        self._rand = rand
        self._trackers: dict[str, SessionTracker] = {}
        self._projects: dict[str, ProjectConfig] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        # Projects whose key the API refused for session histories (401, 403): counted as
        # ``runs: latest`` until their config changes or the exporter restarts.
        self._refused: set[str] = set()
        self._stop: asyncio.Event | None = None
        self._lanes = _Lanes(config.max_concurrency)
        # Saves of polls that end close together are written in one transaction.
        self._saves = (
            None if state is None else SaveBatch(state, in_thread, self._save_failed, save_linger)
        )
        store.set_error_classes(config.detail.class_names)
        store.max_index_series = config.detail.max_index_series
        # With discovery, projects saved but not (yet) listed are kept until the first
        # discovery says which remain: one that comes back takes its saved state.
        ids = None if config.discovery is not None else (p.id for p in config.projects)
        self._saved = state.load(ids) if state is not None else {}
        for project in config.projects:
            self._add(project)

    def _add(self, project: ProjectConfig) -> None:
        entry = self._saved.pop(project.id, None)
        self._store.add_project(project, entry.totals if entry else None)
        self._trackers[project.id] = (
            SessionTracker(entry.sessions, entry.listing) if entry else SessionTracker()
        )
        self._projects[project.id] = project

    def saved_ids(self) -> set[str]:
        """Projects with saved state that are not polled (yet): with discovery, those the
        discoveries since the start have not given this replica."""
        return set(self._saved)

    async def forget_saved(self, project_ids: Iterable[str]) -> None:
        """Drop the saved state of projects that will not be polled."""
        for pid in list(project_ids):
            if self._saved.pop(pid, None) is not None:
                await self._forget_saved(pid)

    async def poll_all_once(self) -> bool:
        """Poll every project once (``--once``); True when all of them succeeded. Returns
        once every save they made is written."""
        results = await asyncio.gather(*(self._poll_limited(p) for p in self._config.projects))
        return all(results)

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop`` is set; each project runs its own loop."""
        self._stop = stop
        for pid in self._projects:
            self._start(pid)
        try:
            await stop.wait()
        finally:
            tasks = list(self._tasks.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._flush_saves()

    async def _flush_saves(self) -> None:
        """At shutdown: write the saves still lingering, waiting no longer than
        ``StateFile.close`` does for a save under way. Past that, the file is closed as
        ``close`` does then: writes still waiting for their turn give up, the one under way
        is left to the end of the process."""
        if self._saves is None or self._state is None:
            return
        try:
            await asyncio.wait_for(self._saves.flush(), CLOSE_TIMEOUT_SECONDS)
        except asyncio.TimeoutError:
            self._state.close(timeout=0.0)

    def _start(self, project_id: str) -> None:
        assert self._stop is not None
        task = asyncio.create_task(self._loop(project_id, self._stop))
        self._tasks[project_id] = task
        task.add_done_callback(lambda done: self._ended(project_id, done))

    def _ended(self, project_id: str, task: asyncio.Task[None]) -> None:
        """A project's loop ends only when it is cancelled: one that died of anything else
        is started again (the project shows as down meanwhile), so no project is left
        unpolled with ``up`` at 1."""
        if task.cancelled() or self._stop is None or self._stop.is_set():
            return
        if self._tasks.get(project_id) is not task:
            return  # the project left, or its loop was replaced
        log.error("poll_loop_died", project_id=project_id, exc_info=task.exception())
        with contextlib.suppress(Exception):
            self._store.record_failure(project_id, "internal", duration=0.0, finished=self._clock())

        def restart() -> None:
            if self._tasks.get(project_id) is task and not (self._stop and self._stop.is_set()):
                self._start(project_id)

        asyncio.get_running_loop().call_later(LOOP_RESTART_SECONDS, restart)

    async def apply(self, config: Config) -> list[str]:
        """Switch to a reloaded config: projects come and go, changed ones keep their counters.

        Returns the keys that changed but only take effect after a restart.
        """
        old = self._config
        self._store.set_error_classes(config.detail.class_names)
        self._store.max_index_series = config.detail.max_index_series
        wanted = {p.id: p for p in config.projects}
        for pid in [pid for pid in self._projects if pid not in wanted]:
            task = self._tasks.pop(pid, None)
            if task is not None:
                task.cancel()
            del self._projects[pid]
            del self._trackers[pid]
            self._refused.discard(pid)
            self._store.remove_project(pid)
            await self._forget_saved(pid)
        for pid, project in wanted.items():
            if pid not in self._projects:
                await self._saved_now(pid)  # a save of it before it left reads its tracker
                if pid not in self._saved:
                    await self._forget_saved(pid)  # one that left and came back starts anew
                self._add(project)
                if self._stop is not None:
                    self._start(pid)
            elif project != self._projects[pid]:
                self._projects[pid] = project
                self._refused.discard(pid)
                self._store.update_info(project)
        if config.max_concurrency != old.max_concurrency:
            self._lanes = _Lanes(config.max_concurrency)
            # The lanes' share of the client's connections follows them; polls still under
            # way in the old lanes wait for a connection rather than open one more.
            change = concurrent_polls(config.max_concurrency) - concurrent_polls(
                old.max_concurrency
            )
            self._client.resize(self._client.max_connections + change)
        self._config = config
        fixed = (
            ("web.listen_address", old.listen_address, config.listen_address),
            ("state.path", old.state_path, config.state_path),
            ("llamacloud.timeout_seconds", old.timeout_seconds, config.timeout_seconds),
            ("llamacloud.max_retries", old.max_retries, config.max_retries),
            (
                "llamacloud.max_requests_per_second",
                old.max_requests_per_second,
                config.max_requests_per_second,
            ),
        )
        return [key for key, before, after in fixed if before != after]

    async def _forget_saved(self, project_id: str) -> None:
        """Drop a project's saved state, best effort: a locked state file must not leave a
        reload half applied, and the next start drops projects the config no longer has."""
        if self._state is None:
            return
        await self._saved_now(project_id)  # else its pending save would write it back
        try:
            await in_thread(self._state.forget, project_id)
        except Exception as exc:
            log.warning("state_forget_failed", project_id=project_id, error=type(exc).__name__)

    async def _loop(self, project_id: str, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            started = loop.time()
            try:
                await self._poll_limited(self._projects[project_id])
            except Exception as exc:  # a bug outside the listing: the loop goes on, and says so
                log.error("poll_loop_error", project_id=project_id, exc_info=exc)
                with contextlib.suppress(Exception):
                    self._store.record_failure(
                        project_id,
                        "internal",
                        duration=loop.time() - started,
                        finished=self._clock(),
                    )
            interval = self._config.poll_interval_seconds
            wait = interval * (1 + JITTER * (2 * self._rand() - 1))
            delay = max(started + wait - loop.time(), 0.0)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)

    async def _poll_limited(self, project: ProjectConfig) -> bool:
        """A poll in its lane; its save is written after the lane is free for another."""
        await self._saved_now(project.id)
        state = self._store.get(project.id)
        failing = state.polled and not state.up
        async with self._lanes.failing if failing else self._lanes.healthy:
            ok = await self._poll(project)
        await self._saved_now(project.id)
        return ok

    async def poll(self, project: ProjectConfig) -> bool:
        """One complete listing of a project, then the changed sessions' histories; the store
        changes only at the end, once. Returns once its state is saved."""
        await self._saved_now(project.id)
        ok = await self._poll(project)
        await self._saved_now(project.id)
        return ok

    async def _saved_now(self, project_id: str) -> None:
        """Until the project's pending save is written: it reads the project's tracker."""
        if self._saves is not None:
            await self._saves.wait(project_id)

    async def _poll(self, project: ProjectConfig) -> bool:
        """A poll once the project's last save is written (both callers wait for it first)."""
        if self._saves is None:
            return await self._poll_saving(project)
        with self._saves.polling():
            return await self._poll_saving(project)

    async def _poll_saving(self, project: ProjectConfig) -> bool:
        """:meth:`poll`, which adds its save to the batch rather than waiting for it."""
        started = self._monotonic()
        try:
            # One worker thread for the listing and the reads: a hop to the event loop and
            # back between them would cost a thread and a wake-up per poll.
            result, pages, items, duration, finished, reads = await in_thread(
                self._list_and_read, project, started
            )
        except PollError as exc:
            self._failed(
                project, exc.reason, str(exc), started, exc.pages, exc.status, exc.incremental
            )
            return False
        except Stopped:
            raise asyncio.CancelledError() from None
        except Exception as exc:  # a bug must cost one poll, never the daemon
            self._failed(project, "internal", type(exc).__name__, started, 0, None, False)
            log.error("poll_internal_error", project_id=project.id, exc_info=exc)
            return False
        tracker = self._trackers[project.id]
        # The listing and what its reads counted, as one new state (one exposition render).
        state = self._store.record_success(
            project.id,
            result,
            duration=duration,
            finished=finished,
            pages=pages,
            reads_pending=len(tracker.pending),
            read_runs=None if reads is None else reads.totals,
            read_invalid=0 if reads is None else reads.invalid,
        )
        if self._saves is not None:
            # Written with the saves of the polls that end meanwhile, on a daemon thread:
            # SIGTERM never waits for a locked state file.
            read = () if reads is None else tuple(reads.sessions)
            self._saves.add(SaveJob(project.id, state.totals, result, tracker, read))
        if result.order_change == "incremental":
            log.info(
                "listing_incremental",
                project_id=project.id,
                message="the API lists this project newest first: polls now read only what "
                "changed, with a full listing every llamacloud.full_listing_every polls",
            )
        elif result.order_change == "full":
            log.warning(
                "listing_full",
                project_id=project.id,
                message="the API listed this project out of newest-first order (beyond "
                "llamacloud.incremental_overlap_seconds): back to full listings until one "
                "shows the order again",
            )
        log.info(
            "poll_succeeded",
            project_id=project.id,
            pages=pages,
            incremental=result.incremental,
            missed=result.missed,
            items=items,
            sessions=result.snapshot.sessions,
            new_runs=result.new_runs.runs + (reads.runs if reads else 0),
            new_errors=result.new_runs.errors + (reads.totals.errors if reads else 0),
            **_read_fields(reads, len(tracker.pending)),
            invalid_items=result.snapshot.invalid_items,
            baseline=result.baseline,
            duration_seconds=round(duration, 3),
        )
        return True

    def _save_failed(self, project_id: str, exc: BaseException) -> None:
        self._store.count_state_save_failure()
        log.error(
            "state_save_failed",
            project_id=project_id,
            error=type(exc).__name__,
            message=str(exc)[:200],
            hint="counters are not being saved; the next successful save writes the "
            "project's whole state",
        )

    def _exact(self, project: ProjectConfig) -> bool:
        """Whether the project's runs are counted from session histories now."""
        return (
            project.runs == "exact"
            and self._config.max_session_reads_per_poll > 0
            and project.id not in self._refused
        )

    def _list_and_read(
        self, project: ProjectConfig, started: float
    ) -> tuple[PollResult, int, int, float, float, Reads | None]:
        """The listing (:meth:`_list`), its duration and end, then the histories it left to
        read (:meth:`_read_histories`); on a worker thread."""
        result, pages, items = self._list(project)
        duration, finished = self._monotonic() - started, self._clock()
        reads = self._read_histories(project, self._trackers[project.id])
        return result, pages, items, duration, finished, reads

    def _read_histories(self, project: ProjectConfig, tracker: SessionTracker) -> Reads | None:
        """After a listing: read the changed sessions' histories within the budget, or count
        them as ``latest`` does where histories are not read (any more). A failure here costs
        the reads, never the poll."""
        if not tracker.pending:
            return None
        config = self._config
        try:
            if not self._exact(project):
                return count_as_latest(tracker, config.detail)
            reads = read_pending(
                self._client,
                project,
                tracker,
                config.max_session_reads_per_poll,
                config.max_response_bytes,
                config.detail,
            )
        except Stopped:
            raise
        except Exception as exc:  # a bug must cost the reads, never the daemon
            log.error("session_reads_internal_error", project_id=project.id, exc_info=exc)
            return None
        if reads.refused is not None:
            self._refused.add(project.id)
            log.error(
                "session_reads_refused",
                project_id=project.id,
                status=reads.refused,
                hint="the API key may list this project's sessions but not read their "
                "histories: runs are counted as llamacloud.runs: latest (a session that ran "
                "twice between two polls counts once) until the config changes or the "
                "exporter restarts; give the key read access, or set runs: latest",
            )
            latest = count_as_latest(tracker, config.detail)
            reads.totals = reads.totals + latest.totals
            reads.sessions += latest.sessions
            reads.runs += latest.runs
            reads.counted_as_latest += latest.counted_as_latest
        return reads

    def _list(self, project: ProjectConfig) -> tuple[PollResult, int, int]:
        """Fetch and aggregate every page; runs in a worker thread, off the event loop."""
        config = self._config
        tracker = self._trackers[project.id]
        cutoff = tracker.plan(
            auto=project.listing == "auto",
            full_every=config.full_listing_every,
            overlap=config.incremental_overlap_seconds,
            now=self._clock(),
        )
        # Each project at its own point of the full-listing cycle: a thousand projects started
        # together must not all read every page at the same poll.
        phase = zlib.crc32(project.id.encode("utf-8", "replace")) % config.full_listing_every
        listing = Listing(
            tracker,
            cutoff,
            config.incremental_overlap_seconds,
            config.detail,
            phase,
            exact=self._exact(project),
        )
        pages = items = 0
        listed = self._client.pages(
            project, config.max_pages, config.max_response_bytes, reuse=listing.reuse
        )
        try:
            for page in listed:
                pages += 1
                if page.items is None:  # the same body as in the last listing: taken unread
                    if page.stop:
                        break
                    continue
                items += len(page.items)
                if listing.add(page.items, page.key, page.token):
                    break  # an incremental listing reached what the last poll saw
            return listing.finish(), pages, items
        except PollError as exc:
            tracker.rollback()
            exc.pages = pages
            exc.incremental = listing.incremental
            raise
        except BaseException:
            tracker.rollback()
            raise
        finally:
            listed.close()

    def _failed(
        self,
        project: ProjectConfig,
        reason: str,
        message: str,
        started: float,
        pages: int,
        status: int | None,
        incremental: bool,
    ) -> None:
        duration = self._monotonic() - started
        self._store.record_failure(
            project.id,
            reason,
            duration=duration,
            finished=self._clock(),
            pages=pages,
            incremental=incremental,
        )
        fields = {
            "project_id": project.id,
            "reason": reason,
            "error": message,
            "pages": pages,
            "duration_seconds": round(duration, 3),
        }
        if status in (401, 403):
            log.error(
                "poll_failed_config",
                hint="the API key is invalid or not allowed for this project: check "
                + (project.key_source or "this project's api_key in the config"),
                status=status,
                **fields,
            )
        elif status == 404:
            log.error(
                "poll_failed_config",
                hint="the project was not found: check this project's id, organization_id "
                "and base_url (North America or EU region) in the config",
                status=status,
                **fields,
            )
        elif status == 429:
            log.warning(
                "poll_failed",
                hint="the API is rate limiting this exporter's requests: space them out with "
                "llamacloud.max_requests_per_second, lower max_concurrency or raise "
                "poll_interval_seconds",
                status=status,
                **fields,
            )
        else:
            log.warning("poll_failed", status=status, **fields)


def _read_fields(reads: Reads | None, pending: int) -> dict[str, int]:
    """The poll log line's account of history reads (none without exact counting)."""
    if reads is None:
        return {"reads_pending": pending} if pending else {}
    return {
        "reads": len(reads.sessions),
        "read_runs": reads.runs,
        "reads_not_found": reads.not_found,
        "reads_failed": reads.failed,
        "counted_as_latest": reads.counted_as_latest,
        "reads_pending": pending,
    }


def concurrent_polls(max_concurrency: int) -> int:
    """The most polls under way at once: every slot of both :class:`_Lanes`."""
    return 2 * max_concurrency


class _Lanes:
    """Two pools of ``max_concurrency`` slots: one for projects whose last poll succeeded
    (or that have not been polled yet), one for projects whose last poll failed.

    A failing project may hold its slot for a whole request deadline times every retry; in
    a lane of its own it can never take the slot a healthy project needs, so however many
    projects hang, the others are polled on time. Both together hold
    :func:`concurrent_polls` slots, which is what the API client's pool is sized to.
    """

    def __init__(self, size: int) -> None:
        self.healthy = asyncio.Semaphore(size)
        self.failing = asyncio.Semaphore(size)


class _Workers:
    """Daemon threads kept between hops: a hop takes an idle one, or starts one when none is
    idle, so a hop never waits for another, and pays no thread start when one is idle. A
    worker idle for ``idle_seconds`` ends; nothing waits for a worker at shutdown.

    A job returns what hands its result over; the worker counts itself idle before calling
    that, so the hop that follows a result finds it idle. A job is queued only for a worker
    counted idle; a new worker is given its first job, so a thread that cannot start leaves
    nothing queued behind it.
    """

    def __init__(self, idle_seconds: float = 30.0) -> None:
        self._idle_seconds = idle_seconds
        self._lock = threading.Lock()
        # queue.Queue, not SimpleQueue: a get() whose item another worker took still ends
        # at its timeout.
        self._jobs: queue.Queue[Callable[[], Callable[[], None]]] = queue.Queue()
        self._idle = 0  # workers waiting for a job, less the jobs queued for them

    def submit(self, job: Callable[[], Callable[[], None]]) -> None:
        with self._lock:
            if self._idle > 0:
                self._idle -= 1
                self._jobs.put(job)
                return
        thread = threading.Thread(target=self._work, args=(job,), name="llamacloud-poll")
        thread.daemon = True
        thread.start()

    def _work(self, job: Callable[[], Callable[[], None]] | None) -> None:
        while True:
            if job is None:
                try:
                    job = self._jobs.get(timeout=self._idle_seconds)
                except queue.Empty:
                    with self._lock:
                        if self._jobs.empty():  # no job is queued for this worker: it ends
                            self._idle -= 1
                            return
                    continue
            hand_over = job()
            job = None
            with self._lock:
                self._idle += 1
            hand_over()
            del hand_over


_WORKERS = _Workers()


async def in_thread(fn: Callable[..., _T], *args: Any) -> _T:
    """Run ``fn`` on a daemon thread (kept between calls, :class:`_Workers`) and await its
    result.

    Unlike ``asyncio.to_thread``, nothing waits for the thread at shutdown: a listing
    blocked on a slow request must not hold up SIGTERM for the length of a timeout.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[_T] = loop.create_future()

    def settle(result: _T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> Callable[[], None]:
        try:
            result, error = fn(*args), None
        except BaseException as exc:
            result, error = None, exc

        def hand_over() -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
                loop.call_soon_threadsafe(settle, result, error)

        return hand_over

    _WORKERS.submit(run)
    return await future
