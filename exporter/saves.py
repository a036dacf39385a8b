"""Group commit: the state saves of polls that end close together, in one transaction.

A transaction costs about as much as the rows of a small project's save, so each poll's
save waits up to ``LINGER_SECONDS`` for the saves of polls that end meanwhile (less when no
poll is under way that could add one), then they are written together on a worker thread,
each project in a savepoint of its own (:meth:`~exporter.store.StateFile.save_many`). The
poll itself does not wait for the write: its concurrency slot is free as soon as its save is
added. A save reads its project's tracker when it is written, so the project's next poll (and
anything that drops or replaces its tracker) waits for it first (:meth:`SaveBatch.wait`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator, Sequence

from .store import SaveJob, StateFile

# Polls of small projects end about 10 ms apart at max_concurrency 4 (history reads
# included), so a batch holds about five saves, which halves what their transactions cost;
# still short against any poll interval, and against what a crash could lose (the next
# start counts it again from the saved baseline).
LINGER_SECONDS = 0.05

_Errors = list[BaseException | None]
# ``poller.in_thread``: runs a function on a worker thread and awaits its result.
_Runner = Callable[[Callable[[Sequence[SaveJob]], _Errors], Sequence[SaveJob]], Awaitable[_Errors]]


class SaveBatch:
    """The saves waiting to be written and the one write under way, on one event loop.

    ``failed(project_id, error)`` is called for each save that failed, once its batch is
    written; a save's future (:meth:`add`) is set either way, never with an exception.
    """

    def __init__(
        self,
        state: StateFile,
        run: _Runner,
        failed: Callable[[str, BaseException], None],
        linger: float = LINGER_SECONDS,
    ) -> None:
        self._state = state
        self._run = run
        self._failed = failed
        self._linger = linger
        self._queue: list[tuple[SaveJob, asyncio.Future[None]]] = []
        self._pending: dict[str, asyncio.Future[None]] = {}  # by project, until written
        self._timer: asyncio.TimerHandle | None = None
        self._writing: asyncio.Task[None] | None = None
        self._polls = 0  # polls under way, which may yet add a save

    @contextlib.contextmanager
    def polling(self) -> Iterator[None]:
        """Around a poll: while none is under way, no save can join a batch, so it is
        written at once."""
        self._polls += 1
        try:
            yield
        finally:
            self._polls -= 1
            if self._polls == 0:
                self._start()

    def add(self, job: SaveJob) -> asyncio.Future[None]:
        """Queue a save; the future is done once it is written (or failed)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        assert job.project_id not in self._pending, "its last save is still pending"
        self._queue.append((job, done))
        self._pending[job.project_id] = done
        if self._polls == 0:
            self._start()
        elif self._timer is None:
            self._timer = loop.call_later(self._linger, self._lingered)
        return done

    async def wait(self, project_id: str) -> None:
        """Until the project's pending save, if any, is written (or failed). Cancelling the
        wait leaves the save alone."""
        done = self._pending.get(project_id)
        if done is not None and not done.done():
            await asyncio.shield(done)  # only an event loop going away cancels it

    async def flush(self) -> None:
        """Write every save queued, now, and wait for them."""
        while self._queue or self._writing is not None:
            self._start()
            if self._writing is not None:
                await asyncio.wait([self._writing])

    def _settled(self, job: SaveJob, done: asyncio.Future[None]) -> None:
        if self._pending.get(job.project_id) is done:
            del self._pending[job.project_id]

    def _lingered(self) -> None:
        self._timer = None
        self._start()  # when a write is under way, it starts the next one as it ends

    def _start(self) -> None:
        if self._writing is not None or not self._queue:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._queue = self._queue, []
        self._writing = asyncio.get_running_loop().create_task(self._write(batch))

    async def _write(self, batch: list[tuple[SaveJob, asyncio.Future[None]]]) -> None:
        jobs = [job for job, _ in batch]
        try:
            errors = await self._run(self._state.save_many, jobs)
        except asyncio.CancelledError:
            # The event loop is going away; what the thread wrote is for the next start.
            for job, done in batch:
                self._settled(job, done)
                done.cancel()
            raise
        except BaseException as exc:
            errors = [exc] * len(jobs)
        finally:
            self._writing = None
        for job, done in batch:
            self._settled(job, done)
            if not done.done():
                done.set_result(None)
        for job, error in zip(jobs, errors, strict=True):
            if error is not None:
                self._failed(job.project_id, error)
        # Saves that came during the write: at once when they have lingered (the timer
        # fired meanwhile) or no poll is under way, else when the timer fires.
        if self._queue and (self._timer is None or self._polls == 0):
            self._start()
