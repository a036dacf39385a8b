"""The web config file (exporter-toolkit's ``--web.config.file``): checks, TLS, basic auth."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest

import exporter.web.auth as basicauth
from exporter.store import Store
from exporter.web import MetricsServer, WebConfig, WebConfigError
from exporter.web.auth import AUTH_CACHE_SIZE, BCRYPT_QUEUE, AuthResult, BasicAuth
from exporter.web.config import parse_web_config
from exporter.web.server import WORKERS
from tests.helpers import admits, basic, wait_for
from tests.web.helpers import (
    ALICE_HASH,
    ALICE_PASSWORD,
    BOB_HASH,
    BOB_PASSWORD,
    USERS,
    hashed,
    load,
    problems,
)

HOLD = b"held until the test lets it go"


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
        assert threading.active_count() <= threads  # none started (idle workers may end)
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


# --- basic auth users -------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "hunter2",
        "$1$saltsalt$abcdefghijklmnopqrstuv",  # md5-crypt
        "$2b$10$tooShort",
        "$2x$10$" + "a" * 53,  # not a prefix bcrypt tools make
        "$2b$99$" + "a" * 53,  # no such cost
        pytest.param(ALICE_HASH + "hunter2", id="a-hash-and-more"),  # its salt is random
        12345,
        ["hunter2"],
        None,
    ],
)
def test_a_value_that_is_not_a_bcrypt_hash_is_never_echoed(tmp_path: Path, value: Any) -> None:
    with pytest.raises(WebConfigError) as info:
        load(tmp_path, {"basic_auth_users": {"alice": value}})
    (problem,) = info.value.problems
    assert problem.startswith("basic_auth_users.alice: not a bcrypt hash")
    for text in (str(info.value), repr(info.value)):
        assert "hunter2" not in text
        assert "tooShort" not in text
        assert "12345" not in text
        assert ALICE_HASH not in text


@pytest.mark.parametrize("prefix", ["$2a$", "$2b$", "$2y$"])
def test_every_bcrypt_prefix(tmp_path: Path, prefix: str) -> None:
    config = load(tmp_path, {"basic_auth_users": {"alice": prefix + ALICE_HASH[4:]}})
    assert admits(config, basic("alice", ALICE_PASSWORD))


def test_bad_user_names(tmp_path: Path) -> None:
    text = f"basic_auth_users:\n  42: '{ALICE_HASH}'\n  'a:b': '{ALICE_HASH}'\n  \"a\\tb\": x\n"
    assert problems(tmp_path, text) == [
        "basic_auth_users.42: a user name must be a string (quote it)",
        "basic_auth_users.a:b: a user name cannot hold a colon (HTTP basic auth)",
        "basic_auth_users.a\tb: a user name cannot hold control characters",
    ]
    assert problems(tmp_path, {"basic_auth_users": ["alice"]}) == [
        "basic_auth_users: must be a mapping of user names to bcrypt hashes"
    ]


# --- basic auth -------------------------------------------------------------------------


@pytest.fixture
def users(tmp_path: Path) -> WebConfig:
    return load(tmp_path, {"basic_auth_users": USERS})


@pytest.fixture
def checkpw_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bytes, bytes]]:
    """Every bcrypt.checkpw call, as (password, hash)."""
    calls: list[tuple[bytes, bytes]] = []
    real: Callable[[bytes, bytes], bool] = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append((password, hashed))
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    return calls


def test_right_and_wrong_passwords(users: WebConfig) -> None:
    assert admits(users, basic("alice", ALICE_PASSWORD))
    assert admits(users, basic("bob", BOB_PASSWORD))  # colons in the password
    assert not admits(users, basic("alice", "wrong"))
    assert not admits(users, basic("alice", BOB_PASSWORD))
    assert not admits(users, basic("alice", ""))
    assert not admits(users, basic("Alice", ALICE_PASSWORD))


def test_unknown_users_cost_a_bcrypt_check_and_never_pass(
    users: WebConfig, checkpw_calls: list[tuple[bytes, bytes]]
) -> None:
    assert not admits(users, basic("mallory", ALICE_PASSWORD))
    assert not admits(users, basic("", ALICE_PASSWORD))
    assert len(checkpw_calls) == 2
    # Against a hash of the configured cost that is none of the configured hashes.
    assert all(hashed.startswith(b"$2b$04$") for _, hashed in checkpw_calls)
    assert not {hashed for _, hashed in checkpw_calls} & {ALICE_HASH.encode(), BOB_HASH.encode()}


def test_a_wrong_password_costs_the_same_work_for_every_user_name(
    tmp_path: Path, checkpw_calls: list[tuple[bytes, bytes]]
) -> None:
    """bcrypt's work is 2^cost rounds; before, a wrong password for a user of cost 4 took 2^4,
    one for an unknown user those of a hash of the most common cost, so a 401's time told
    which users exist."""

    def work(password: bytes) -> int:
        return sum(2 ** int(hashed[4:6]) for p, hashed in checkpw_calls if p == password)

    costs = {"alice": 4, "bob": 5, "carol": 7}
    users = {
        u: bcrypt.hashpw(u.encode(), bcrypt.gensalt(rounds=c)).decode() for u, c in costs.items()
    }
    config = load(tmp_path, {"basic_auth_users": users})
    for user in ("alice", "bob", "carol", "mallory", "", "alice "):
        guess = f"{user} guessed wrong".encode()
        assert not admits(config, basic(user, guess.decode()))
        assert work(guess) == 2**7, user  # the highest configured cost, for everyone
    # A right password costs its own hash only: logins do not pay for the equal time.
    assert admits(config, basic("alice", "alice"))
    assert work(b"alice") == 2**4


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Basic",
        "Basic ",
        "Bearer " + base64.b64encode(b"alice:x").decode(),
        "Basicx " + base64.b64encode(f"alice:{ALICE_PASSWORD}".encode()).decode(),
        "Basic !!!not-base64!!!",
        "Basic " + base64.b64encode(f"alice:{ALICE_PASSWORD}".encode()).decode()[:-2],
        "Basic " + base64.b64encode(b"alice-without-colon").decode(),
        "Basic " + base64.b64encode(b"alice:\xff\xfe").decode(),
        "Basic " + base64.b64encode(b"\xffalice:x").decode(),
        "Basic \u00e9\u00e9\u00e9\u00e9",
        "Basic " + "A" * 10_000,
    ],
)
def test_malformed_headers(
    users: WebConfig, checkpw_calls: list[tuple[bytes, bytes]], header: str | None
) -> None:
    assert not admits(users, header)
    assert checkpw_calls == []


@pytest.mark.parametrize("scheme", ["Basic", "basic", "BASIC", "bAsIc"])
def test_the_scheme_is_case_insensitive(users: WebConfig, scheme: str) -> None:
    encoded = base64.b64encode(f"alice:{ALICE_PASSWORD}".encode()).decode()
    assert admits(users, f"{scheme} {encoded}")
    assert admits(users, f"  {scheme}   {encoded}  ")


def test_utf8_names_and_passwords(tmp_path: Path) -> None:
    hashed = bcrypt.hashpw("pässwörd".encode(), bcrypt.gensalt(rounds=4)).decode()
    config = load(tmp_path, {"basic_auth_users": {"zoë": hashed}})
    assert admits(config, basic("zoë", "pässwörd"))
    assert not admits(config, basic("zoe", "pässwörd"))


def test_long_passwords_are_cut_at_72_bytes_like_bcrypt(tmp_path: Path) -> None:
    hashed = bcrypt.hashpw(b"x" * 72, bcrypt.gensalt(rounds=4)).decode()
    config = load(tmp_path, {"basic_auth_users": {"alice": hashed}})
    assert admits(config, basic("alice", "x" * 72))
    assert admits(config, basic("alice", "x" * 100))
    assert not admits(config, basic("alice", "x" * 71))


def test_a_success_is_cached(users: WebConfig, checkpw_calls: list[tuple[bytes, bytes]]) -> None:
    header = basic("alice", ALICE_PASSWORD)
    assert admits(users, header)
    assert len(checkpw_calls) == 1
    for _ in range(5):
        assert admits(users, header)
    assert len(checkpw_calls) == 1
    # A different password for the same user is not a cache hit.
    assert not admits(users, basic("alice", ALICE_PASSWORD + "!"))
    assert len(checkpw_calls) == 2


def test_a_failure_is_remembered_too(
    users: WebConfig, checkpw_calls: list[tuple[bytes, bytes]]
) -> None:
    for _ in range(3):
        assert not admits(users, basic("alice", "wrong"))
        assert not admits(users, basic("mallory", "wrong"))
    assert len(checkpw_calls) == 2  # a guess sent again costs no bcrypt check
    assert admits(users, basic("alice", ALICE_PASSWORD))


def test_the_cache_belongs_to_one_config(
    tmp_path: Path, checkpw_calls: list[tuple[bytes, bytes]]
) -> None:
    header = basic("alice", ALICE_PASSWORD)
    assert admits(load(tmp_path, {"basic_auth_users": USERS}), header)
    assert admits(load(tmp_path, {"basic_auth_users": USERS}), header)
    assert len(checkpw_calls) == 2
    # After a reload with a new hash, the old password no longer opens the door.
    new = bcrypt.hashpw(b"new", bcrypt.gensalt(rounds=4)).decode()
    assert not admits(load(tmp_path, {"basic_auth_users": {"alice": new}}), header)


def test_the_cache_is_bounded_and_lru(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, checkpw_calls: list[tuple[bytes, bytes]]
) -> None:
    assert AUTH_CACHE_SIZE == 100
    monkeypatch.setattr(basicauth, "AUTH_CACHE_SIZE", 2)
    names = ("u1", "u2", "u3")
    hashes = {n: bcrypt.hashpw(n.encode(), bcrypt.gensalt(rounds=4)).decode() for n in names}
    config = load(tmp_path, {"basic_auth_users": hashes})

    def check(name: str) -> int:
        before = len(checkpw_calls)
        assert admits(config, basic(name, name))
        return len(checkpw_calls) - before

    assert [check("u1"), check("u2"), check("u1")] == [1, 1, 0]  # u1 is now the newest
    assert check("u3") == 1  # evicts u2, the least recently used
    assert [check("u1"), check("u3"), check("u2")] == [0, 0, 1]


def test_cache_keys_are_digests_not_passwords(users: WebConfig) -> None:
    assert admits(users, basic("alice", ALICE_PASSWORD))
    (key,) = users.basic_auth._checks.good._entries
    assert len(key) == 32
    assert ALICE_PASSWORD.encode() not in key


def test_checks_from_many_threads(
    users: WebConfig, checkpw_calls: list[tuple[bytes, bytes]]
) -> None:
    results: list[bool] = []
    lock = threading.Lock()
    headers = [basic("alice", ALICE_PASSWORD), basic("bob", BOB_PASSWORD), basic("bob", "no")]

    def work(header: str, expected: bool) -> None:
        for _ in range(10):
            ok = admits(users, header) is expected
            with lock:
                results.append(ok)

    threads = [
        threading.Thread(target=work, args=(h, i < 2))
        for _ in range(4)
        for i, h in enumerate(headers)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 120 and all(results)
    # Each password checked once: the others joined that check or found its answer remembered.
    assert sorted(password for password, _ in checkpw_calls) == sorted(
        [ALICE_PASSWORD.encode(), BOB_PASSWORD.encode(), b"no"]
    )
