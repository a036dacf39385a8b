"""Group commit of the state saves: polls that end together are saved in one transaction,
one project's failure costs only its own save, and nothing reads a tracker a poll changes."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from exporter.aggregate import SessionTracker
from exporter.client import ApiClient
from exporter.config import Config
from exporter.poller import Poller, in_thread
from exporter.saves import SaveBatch
from exporter.simulator import DEFAULT_API_KEY, Simulator
from exporter.store import SaveJob, StateFile, Store
from exporter.store.sqlitefile import CLOSE_TIMEOUT_SECONDS
from tests.helpers import project, session
from tests.store.helpers import locked_by_another_process

DEADLINE = 30.0


class Recording(StateFile):
    """A state file that records each batch it writes, fails the saves of ``failing``
    projects after their rows are written (so only a rollback undoes them), and holds a
    batch until ``release`` while ``hold`` is set."""

    def __init__(self, path: Path, **timeouts: float) -> None:
        self.batches: list[list[str]] = []
        self.failing: set[str] = set()
        self.hold = False
        self.entered = threading.Event()
        self.release = threading.Event()
        super().__init__(path, **timeouts)

    def save_many(self, jobs: Sequence[SaveJob]) -> list[BaseException | None]:
        self.batches.append([job.project_id for job in jobs])
        if self.hold:
            self.entered.set()
            assert self.release.wait(DEADLINE), "never released"
        return super().save_many(jobs)

    def _write(self, db: sqlite3.Connection, job: SaveJob) -> None:
        super()._write(db, job)
        if job.project_id in self.failing:
            raise ValueError("Out of range float values are not JSON compliant")


def setup(sim: Simulator, ids: list[str], concurrency: int = 4, **fields: Any) -> Config:
    for pid in ids:
        sim.set_sessions(pid, [session(f"{pid}-a"), session(f"{pid}-b")])
    projects = tuple(project(pid, base_url=sim.base_url, key=DEFAULT_API_KEY) for pid in ids)
    return Config(projects=projects, max_concurrency=concurrency, max_retries=0, **fields)


def run(test: Callable[[ApiClient], Awaitable[None]], state: StateFile) -> None:
    """``test`` with a client; then, whatever happened, ``state`` releases a batch it holds
    (a :class:`Recording`) and is closed."""

    async def main() -> None:
        client = ApiClient(max_retries=0)
        try:
            await asyncio.wait_for(test(client), DEADLINE)
        finally:
            client.close()

    try:
        asyncio.run(main())
    finally:
        if isinstance(state, Recording):
            state.release.set()
        state.close()


async def until(condition: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


def listings(sim: Simulator, pid: str) -> int:
    return sum(
        1 for r in sim.requests if r.path == "/api/v1/chat" and r.query.get("project_id") == pid
    )


def saved(path: Path) -> dict[str, set[str]]:
    """The sessions saved of each project, read beside the exporter's open state file."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT project_id, session_id FROM sessions").fetchall()
    db.close()
    out: dict[str, set[str]] = {}
    for pid, sid in rows:
        out.setdefault(pid, set()).add(sid)
    return out


def test_one_projects_failed_save_rolls_back_only_its_own_rows(
    sim: Simulator, tmp_path: Path
) -> None:
    path = tmp_path / "s.db"
    config = setup(sim, ["good", "bad"])
    state = Recording(path)
    store = Store()
    trackers: dict[str, SessionTracker] = {}

    async def test(client: ApiClient) -> None:
        # A linger longer than the test: a batch is written when no poll is under way.
        poller = Poller(config, store, client, state=state, save_linger=3600)
        assert await poller.poll_all_once()
        sim.set_sessions("good", [session("good-a", turns=2), session("good-c")])
        sim.set_sessions("bad", [session("bad-a", turns=2), session("bad-c")])
        state.failing = {"bad"}
        with capture_logs() as logs:
            assert await poller.poll_all_once()
        assert sorted(state.batches[-1]) == ["bad", "good"], "not one batch"
        failed = [e for e in logs if e["event"] == "state_save_failed"]
        assert [(e["project_id"], e["error"]) for e in failed] == [("bad", "ValueError")]
        assert store.state_save_failures == 1
        assert saved(path) == {
            "good": {"good-a", "good-b", "good-c"},  # b missed once is kept
            "bad": {"bad-a", "bad-b"},  # the first poll's, untouched by the second
        }
        # The next save of bad writes its whole state, the changes of the failed one too.
        state.failing = set()
        assert await poller.poll_all_once()
        assert store.state_save_failures == 1
        assert saved(path)["bad"] == {"bad-a", "bad-b", "bad-c"}
        trackers.update(poller._trackers)

    run(test, state)
    with StateFile(path) as again:
        loaded = again.load(None)
    for pid in ("good", "bad"):
        tracker = trackers[pid]
        assert sorted(loaded[pid].sessions or ()) == sorted(
            [*tracker.rows(), *tracker.grave_rows()]
        )


def test_the_next_poll_of_a_project_waits_for_its_pending_save(
    sim: Simulator, tmp_path: Path
) -> None:
    """A save reads the tracker its project's next listing changes: that listing begins only
    once the save is written. Other projects are polled meanwhile."""
    config = setup(sim, ["a", "b"])
    state = Recording(tmp_path / "s.db")
    store = Store()

    async def test(client: ApiClient) -> None:
        poller = Poller(config, store, client, state=state)
        a, b = config.projects
        state.hold = True
        first = asyncio.create_task(poller.poll(a))
        await until(state.entered.is_set, "the first save")
        before = listings(sim, "a")
        second = asyncio.create_task(poller.poll(a))
        other = asyncio.create_task(poller.poll(b))  # started after the second, polled first
        await until(lambda: store.get("b").polled, "b's poll")
        assert listings(sim, "a") == before, "a listing began while its save was pending"
        assert not first.done() and not second.done()
        state.release.set()
        assert await first and await second and await other
        assert listings(sim, "a") == before + 1

    run(test, state)


def test_a_lingering_save_holds_no_concurrency_slot(sim: Simulator, tmp_path: Path) -> None:
    """With one slot, the other project is polled while the first one's save is held."""
    config = setup(sim, ["a", "b"], concurrency=1, poll_interval_seconds=3600)
    state = Recording(tmp_path / "s.db")
    store = Store()

    async def test(client: ApiClient) -> None:
        poller = Poller(config, store, client, state=state)
        state.hold = True
        stop = asyncio.Event()
        task = asyncio.create_task(poller.run(stop))
        try:
            await until(state.entered.is_set, "a save")
            await until(lambda: store.get("a").polled and store.get("b").polled, "both polls")
        finally:
            state.release.set()
            stop.set()
            await task
        assert sorted(pid for batch in state.batches for pid in batch) == ["a", "b"]

    run(test, state)


def test_poll_all_once_returns_with_every_save_written(sim: Simulator, tmp_path: Path) -> None:
    ids = [f"p{i}" for i in range(12)]
    path = tmp_path / "s.db"
    config = setup(sim, ids, concurrency=3)
    state = Recording(path)

    async def test(client: ApiClient) -> None:
        poller = Poller(config, Store(), client, state=state)
        assert await poller.poll_all_once()

    run(test, state)
    assert sorted(pid for batch in state.batches for pid in batch) == sorted(ids)
    with StateFile(path) as again:
        loaded = again.load(ids)
    assert {pid: {row[0] for row in loaded[pid].sessions or ()} for pid in loaded} == {
        pid: {f"{pid}-a", f"{pid}-b"} for pid in ids
    }


@contextmanager
def never_answering() -> Iterator[str]:
    """A base URL whose server accepts connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def with_a_hanging_project(config: Config, url: str) -> Config:
    """``config`` and a project "hangs" at ``url`` (:func:`never_answering`), whose poll stays
    under way until the stop."""
    hanging = project("hangs", base_url=url, key=DEFAULT_API_KEY)
    return Config(
        projects=(*config.projects, hanging),
        max_concurrency=4,
        max_retries=0,
        poll_interval_seconds=3600,
        timeout_seconds=60,
    )


def test_shutdown_writes_the_saves_still_lingering(sim: Simulator, tmp_path: Path) -> None:
    """A poll under way (one that hangs) keeps another's save lingering; the stop writes it
    before the poller returns, so the state file closed after it holds it."""
    path = tmp_path / "s.db"
    config = setup(sim, ["a"], poll_interval_seconds=3600, timeout_seconds=60)
    state = StateFile(path)
    store = Store()

    async def test(client: ApiClient) -> None:
        with never_answering() as url:
            both = with_a_hanging_project(config, url)
            poller = Poller(both, store, client, state=state, save_linger=3600)
            stop = asyncio.Event()
            task = asyncio.create_task(poller.run(stop))
            await until(lambda: store.get("a").polled, "a's poll")
            assert saved(path).get("a") is None, "written before the stop"
            stop.set()
            await task
            assert not store.get("hangs").polled

    run(test, state)
    assert saved(path) == {"a": {"a-a", "a-b"}}


def test_shutdown_waits_for_a_locked_file_no_longer_than_close_does(
    sim: Simulator, tmp_path: Path
) -> None:
    """Another process holds the database: the lingering save waits its busy timeout, but
    the stop gives it CLOSE_TIMEOUT_SECONDS, then closes the file as close() does."""
    path = tmp_path / "s.db"
    config = setup(sim, ["a"], poll_interval_seconds=3600, timeout_seconds=60)
    state = StateFile(path, busy_timeout=3 * CLOSE_TIMEOUT_SECONDS)
    store = Store()
    took: list[float] = []

    async def test(client: ApiClient) -> None:
        with never_answering() as url:
            both = with_a_hanging_project(config, url)
            poller = Poller(both, store, client, state=state, save_linger=3600)
            stop = asyncio.Event()
            task = asyncio.create_task(poller.run(stop))
            await until(lambda: store.get("a").polled, "a's poll")
            with locked_by_another_process(path), capture_logs() as logs:
                started = time.monotonic()
                stop.set()
                await task
                state.close()  # as the daemon does next: at once, the file already closed
                took.append(time.monotonic() - started)
            assert [e for e in logs if e["event"] == "state_close_timeout"]

    run(test, state)
    assert CLOSE_TIMEOUT_SECONDS <= took[0] < CLOSE_TIMEOUT_SECONDS + 1.0


def test_saves_added_while_polls_are_under_way_are_written_together(tmp_path: Path) -> None:
    """No poll under way: nothing else can join, so the batch is written at once."""
    from exporter.aggregate import RunTotals, aggregate

    state = Recording(tmp_path / "s.db")
    failed: list[tuple[str, BaseException]] = []

    async def test() -> None:
        batch = SaveBatch(state, in_thread, lambda pid, exc: failed.append((pid, exc)), 3600)
        done = []
        with batch.polling(), batch.polling():
            for pid in ("x", "y", "z"):
                tracker = SessionTracker()
                result = aggregate([[session("s")]], tracker)
                done.append(batch.add(SaveJob(pid, RunTotals(), result, tracker)))
            await asyncio.sleep(0)
            assert state.batches == []
        await asyncio.wait_for(asyncio.gather(*done), DEADLINE)
        assert state.batches == [["x", "y", "z"]]
        await batch.wait("x")  # nothing pending: at once

    try:
        asyncio.run(test())
    finally:
        state.close()
    assert failed == []
