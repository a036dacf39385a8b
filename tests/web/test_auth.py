"""Basic auth under load: one bcrypt check at a time in arrival order, a bounded queue,
requests that wait for bcrypt without holding a worker thread, and what a reload keeps. Real
bcrypt throughout; ``checkpw`` is only watched (and, to make a check "still running", held
until the test lets it go)."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import bcrypt
import httpx
import pytest

import exporter.web.auth as basicauth
from exporter.store import Store
from exporter.web import MetricsServer
from exporter.web.auth import BCRYPT_QUEUE, AuthResult, BasicAuth
from exporter.web.config import parse_web_config
from exporter.web.server import WORKERS
from tests.helpers import admits, wait_for

HOLD = b"held until the test lets it go"


def hashed(password: str, cost: int = 4) -> bytes:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=cost))


def basic(user: str, password: str | bytes) -> str:
    raw = password if isinstance(password, bytes) else password.encode()
    return "Basic " + base64.b64encode(user.encode() + b":" + raw).decode()


@dataclass
class Bcrypt:
    """Every ``bcrypt.checkpw`` call as (password, hash), in the order they ran; a call for
    the password ``HOLD`` runs only once ``release()`` is called."""

    calls: list[tuple[bytes, bytes]] = field(default_factory=list)
    running: int = 0
    most_at_once: int = 0
    released: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def release(self) -> None:
        self.released.set()

    def holding(self) -> bool:
        with self.lock:
            return any(password == HOLD for password, _ in self.calls)

    def work(self, password: bytes) -> int:
        """bcrypt rounds run for ``password``: 2^cost a check."""
        return sum(2 ** int(h[4:6]) for p, h in self.calls if p == password)


@pytest.fixture
def checkpw(monkeypatch: pytest.MonkeyPatch) -> Iterator[Bcrypt]:
    watch = Bcrypt()
    real: Callable[[bytes, bytes], bool] = bcrypt.checkpw

    def watched(password: bytes, hashed: bytes) -> bool:
        with watch.lock:
            watch.calls.append((password, hashed))
            watch.running += 1
            watch.most_at_once = max(watch.most_at_once, watch.running)
        try:
            if password == HOLD:
                assert watch.released.wait(30), "the held check was never released"
            return real(password, hashed)
        finally:
            with watch.lock:
                watch.running -= 1

    monkeypatch.setattr(bcrypt, "checkpw", watched)
    try:
        yield watch
    finally:
        watch.release()  # never leave the process's bcrypt thread held
        wait_for(lambda: len(basicauth._LANE) == 0, 30, "the bcrypt queue to empty")


def hold(auth: BasicAuth, watch: Bcrypt, user: str = "alice") -> None:
    """Start a check that runs until ``watch.release()``."""
    auth.start(basic(user, HOLD))
    wait_for(watch.holding, 10, "the held check to start")


def test_checks_run_one_at_a_time_in_the_order_they_came(checkpw: Bcrypt) -> None:
    auth = BasicAuth({"alice": hashed("right")})
    hold(auth, checkpw)
    wrong = [auth.start(basic("alice", f"wrong {i}")) for i in range(6)]
    right = auth.start(basic("alice", "right"))  # after the six guesses, not refused
    assert len(basicauth._LANE) == 8 and not right.done()
    checkpw.release()
    assert right.result(10) is AuthResult.GRANTED
    assert all(f.result(10) is AuthResult.DENIED for f in wrong)
    order = [password for password, _ in checkpw.calls]
    assert order == [HOLD, *(f"wrong {i}".encode() for i in range(6)), b"right"]
    assert checkpw.most_at_once == 1


def test_a_full_queue_refuses_at_once_and_remembered_answers_need_no_place(
    checkpw: Bcrypt,
) -> None:
    auth = BasicAuth({"alice": hashed("right"), "bob": hashed("bob's")})
    assert auth.check(basic("bob", "bob's")) is AuthResult.GRANTED
    assert auth.check(basic("bob", "typo")) is AuthResult.DENIED
    hold(auth, checkpw)
    queued = [auth.start(basic("alice", f"wrong {i}")) for i in range(BCRYPT_QUEUE - 1)]
    assert len(basicauth._LANE) == BCRYPT_QUEUE
    for user in ("alice", "mallory"):  # known or not, the same answer
        refused = auth.start(basic(user, "one more"))
        assert refused.done() and refused.result() is AuthResult.BUSY
    remembered = auth.start(basic("bob", "bob's"))
    assert remembered.done() and remembered.result() is AuthResult.GRANTED
    failed = auth.start(basic("bob", "typo"))
    assert failed.done() and failed.result() is AuthResult.DENIED
    checkpw.release()
    assert all(f.result(10) is AuthResult.DENIED for f in queued)
    # A refused check was never run, so it is not remembered: it is checked when it comes again.
    assert b"one more" not in {p for p, _ in checkpw.calls}
    assert auth.check(basic("alice", "one more")) is AuthResult.DENIED


def test_a_repeated_guess_costs_one_bcrypt_check_queued_or_remembered(checkpw: Bcrypt) -> None:
    auth = BasicAuth({"alice": hashed("right")})
    hold(auth, checkpw)
    same = [auth.start(basic("alice", "guess")) for _ in range(5)]
    assert len({id(f) for f in same}) == 1  # one check, joined by the other four
    assert len(basicauth._LANE) == 2
    checkpw.release()
    assert same[0].result(10) is AuthResult.DENIED
    for _ in range(5):
        assert auth.check(basic("alice", "guess")) is AuthResult.DENIED
    assert [p for p, _ in checkpw.calls].count(b"guess") == 1


def test_a_request_waits_at_most_bcrypt_wait(
    checkpw: Bcrypt, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(basicauth, "BCRYPT_WAIT", 0.2)
    auth = BasicAuth({"alice": hashed("right")})
    hold(auth, checkpw)
    assert auth.check(basic("alice", "right")) is AuthResult.BUSY
    assert asyncio.run(auth.check_async(basic("alice", "right"))) is AuthResult.BUSY
    checkpw.release()
    # The check kept its place and ran; its answer is remembered, not run again.
    wait_for(lambda: len(basicauth._LANE) == 0, 10, "the queue to empty")
    assert auth.check(basic("alice", "right")) is AuthResult.GRANTED
    assert [p for p, _ in checkpw.calls].count(b"right") == 1


def test_a_check_awaited_on_an_event_loop_holds_no_thread(checkpw: Bcrypt) -> None:
    auth = BasicAuth({"alice": hashed("right")})
    hold(auth, checkpw)

    async def many() -> list[AuthResult]:
        threads = threading.active_count()
        waiting = [
            asyncio.ensure_future(auth.check_async(basic("alice", f"{i}"))) for i in range(10)
        ]
        await asyncio.sleep(0)
        assert threading.active_count() == threads
        checkpw.release()
        return await asyncio.gather(*waiting)

    assert asyncio.run(many()) == [AuthResult.DENIED] * 10


def test_a_reload_with_the_same_users_keeps_what_was_remembered(checkpw: Bcrypt) -> None:
    users = {"alice": hashed("right").decode(), "bob": hashed("bob's").decode()}
    old = parse_web_config({"basic_auth_users": users})
    assert admits(old, basic("alice", "right"))
    assert not admits(old, basic("bob", "typo"))
    same = parse_web_config({"basic_auth_users": users})
    same.carry_over(old)
    assert admits(same, basic("alice", "right"))
    assert not admits(same, basic("bob", "typo"))
    assert len(checkpw.calls) == 2  # both answered from what the old config remembered
    # A new hash for bob: nothing is carried over, alice's password is checked again.
    changed = parse_web_config({"basic_auth_users": {**users, "bob": hashed("new").decode()}})
    changed.carry_over(same)
    assert admits(changed, basic("alice", "right"))
    assert not admits(changed, basic("bob", "bob's"))
    assert admits(changed, basic("bob", "new"))
    assert len(checkpw.calls) == 5
    changed.carry_over(None)  # a reload from no web config
    assert admits(changed, basic("bob", "new"))


def test_requests_waiting_for_bcrypt_hold_no_worker_and_one_more_gets_503(
    checkpw: Bcrypt,
) -> None:
    """A full queue is more requests than the server has worker threads: had they waited on
    the workers, no remembered password would be answered until bcrypt was free."""
    users = {"alice": hashed("right").decode(), "bob": hashed("bob's").decode()}
    web = parse_web_config({"basic_auth_users": users})
    server = MetricsServer("127.0.0.1", 0, Store(), web=web)
    server.start()
    url = f"http://127.0.0.1:{server.port}"
    assert BCRYPT_QUEUE > WORKERS
    try:
        with httpx.Client(base_url=url, auth=("bob", "bob's"), timeout=10) as bob:
            assert bob.get("/metrics").status_code == 200  # remembered from now on
            with concurrent.futures.ThreadPoolExecutor(BCRYPT_QUEUE) as pool:

                def login(password: str | bytes) -> concurrent.futures.Future[httpx.Response]:
                    return pool.submit(httpx.get, url + "/healthz", auth=("alice", password))

                waiting = [login(HOLD)]
                wait_for(checkpw.holding, 10, "the held check to start")
                waiting += [login(f"wrong {i}") for i in range(BCRYPT_QUEUE - 1)]
                wait_for(lambda: len(basicauth._LANE) == BCRYPT_QUEUE, 10, "a full queue")
                assert bob.get("/metrics").status_code == 200
                assert bob.get("/healthz").status_code == 200
                for user in ("alice", "mallory"):
                    refused = httpx.get(url + "/healthz", auth=(user, "one more"), timeout=10)
                    assert refused.status_code == 503
                    assert refused.headers["retry-after"] == "1"
                    assert "www-authenticate" not in refused.headers
                checkpw.release()
                assert [f.result(30).status_code for f in waiting] == [401] * BCRYPT_QUEUE
        assert checkpw.most_at_once == 1
    finally:
        server.stop()
