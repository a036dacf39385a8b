"""Session histories, ``GET /api/v1/chat/{session_id}``, read over real HTTP on loopback the way
the exporter reads them: every run's events, one stop event per run, the newest one what the
listing's ``job_metadata`` shows."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx
import pytest

import exporter.simulator as simulator_module
from exporter.simulator import (
    CHAT_PATH,
    DEFAULT_API_KEY,
    MALFORMED_STOP_KINDS,
    MAX_RUNS_PER_STEP,
    FaultConfig,
    Simulator,
    main,
)
from tests.helpers import session

AUTH = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}
START = datetime(2026, 3, 1)
EVENT_TYPES = {
    "user_input",
    "thinking",
    "thinking_delta",
    "tool_call",
    "tool_result",
    "text",
    "text_delta",
    "stop",
}


@pytest.fixture
def sim() -> Iterator[Simulator]:
    keys = {"own-key-project": "llx-own"}
    with Simulator(
        projects=2, sessions_per_project=80, seed=5, clock_start=START, api_keys=keys
    ) as simulator:
        simulator.add_project("org-project", organization_id="org-a", sessions=5)
        yield simulator


@pytest.fixture
def client(sim: Simulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.base_url, headers=AUTH, timeout=10) as c:
        yield c


def read(client: httpx.Client, project_id: str, session_id: str, **params: str) -> httpx.Response:
    return client.get(
        f"{CHAT_PATH}/{quote(session_id, safe='')}", params={"project_id": project_id, **params}
    )


def listed(client: httpx.Client, project_id: str) -> list[dict[str, Any]]:
    """Every session of the project as the listing serves it."""
    response = client.get(CHAT_PATH, params={"project_id": project_id, "page_size": 1000})
    assert response.status_code == 200
    body = response.json()
    assert "next_page_token" not in body
    items: list[dict[str, Any]] = body["items"]
    return items


def stops(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    return [event for event in response.json()["events"] if event["type"] == "stop"]


def assert_shows(stop: dict[str, Any], job_metadata: dict[str, Any]) -> None:
    """The stop event reports the run that ``job_metadata`` describes."""
    flag = job_metadata.get("is_error")
    failed = flag if flag is not None else bool(job_metadata.get("error"))
    assert stop["is_error"] is failed
    assert stop.get("error") == job_metadata.get("error")
    usage = ("duration_ms", "total_input_tokens", "total_output_tokens", "turns")
    assert stop["usage"] == {key: job_metadata[key] for key in usage}


def first_with_runs(sim: Simulator, project_id: str) -> str:
    return next(s["session_id"] for s in sim.sessions(project_id) if s["job_metadata"])


# ------------------------------------------------------------------------------ shape


def test_a_history_is_the_listed_session_plus_its_events(
    sim: Simulator, client: httpx.Client
) -> None:
    sim.step(5)
    pid = sim.project_ids[0]
    never_run = 0
    for item in listed(client, pid):
        response = read(client, pid, item["session_id"])
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        body = response.json()
        events = body.pop("events")
        assert body == item  # the listing's fields, exactly as listed now
        assert {event["type"] for event in events} <= EVENT_TYPES
        ends = [event for event in events if event["type"] == "stop"]
        assert ends == sim.history(pid, item["session_id"])
        if item["job_metadata"] is None:
            assert events == []
            never_run += 1
            continue
        assert_shows(ends[-1], item["job_metadata"])
        # Each run: the user's question first, its stop event last.
        assert events[0]["type"] == "user_input"
        assert events[-1]["type"] == "stop"
        starts = [i for i, event in enumerate(events) if event["type"] == "user_input"]
        assert [events[i - 1]["type"] for i in starts[1:]] == ["stop"] * (len(starts) - 1)
        assert len(starts) == len(ends)
    assert never_run


def test_events_carry_what_the_sdk_models(sim: Simulator, client: httpx.Client) -> None:
    """Over a project's histories: every kind of event, streamed text that adds up, tool
    results answering their calls, page screenshots, and a few skipped indexes."""
    pid = sim.project_ids[0]
    for item in sim.sessions(pid)[:30]:
        sim.rerun(pid, item["session_id"], times=3)
    events = [
        e
        for item in listed(client, pid)
        for e in read(client, pid, item["session_id"]).json()["events"]
    ]
    assert {event["type"] for event in events} == EVENT_TYPES
    calls = {e["call_id"]: e["name"] for e in events if e["type"] == "tool_call"}
    results = [e for e in events if e["type"] == "tool_result"]
    assert all(calls[e["call_id"]] == e["name"] for e in results)
    attachments = [e["image_attachment"] for e in results if "image_attachment" in e]
    assert attachments and all(set(a) == {"attachment_name", "source_id"} for a in attachments)
    for kind in ("text", "thinking"):
        pieces: list[str] = []
        for event in events:
            if event["type"] == f"{kind}_delta":
                pieces.append(event["content"])
            elif event["type"] == kind:
                assert "".join(pieces) == event["content"]
                pieces = []
    ends = [e for e in events if e["type"] == "stop"]
    skipped = [e for e in ends if "skipped_index_ids" in e]
    assert 0 < len(skipped) < len(ends) * 0.2  # a small share of runs
    assert all(
        e["skipped_index_ids"] and len(set(e["skipped_index_ids"])) == len(e["skipped_index_ids"])
        for e in skipped
    )


def test_skipped_indexes_are_bound_ones_or_indexes_the_session_is_not_bound_to() -> None:
    with (
        Simulator(projects=1, sessions_per_project=400, seed=2, clock_start=START) as sim,
        httpx.Client(base_url=sim.base_url, headers=AUTH, timeout=10) as client,
    ):
        pid = sim.project_ids[0]
        pool = {i for item in sim.sessions(pid) for i in item["index_ids"] or ()}
        bound_skips = unbound_skips = 0
        for item in listed(client, pid):
            for stop in stops(read(client, pid, item["session_id"])):
                for index_id in stop.get("skipped_index_ids", ()):
                    assert index_id in pool
                    if index_id in (item["index_ids"] or ()):
                        bound_skips += 1
                    else:
                        unbound_skips += 1
        assert bound_skips and unbound_skips


def test_a_history_reads_the_same_every_time_and_for_the_same_seed() -> None:
    bodies = []
    for _ in range(2):
        with (
            Simulator(
                projects=1, sessions_per_project=20, seed=9, clock_start=START, burst=0.5
            ) as sim,
            httpx.Client(base_url=sim.base_url, headers=AUTH, timeout=10) as client,
        ):
            sim.step(3)
            pid = sim.project_ids[0]
            ids = [item["session_id"] for item in sim.sessions(pid)]
            first = [read(client, pid, sid).content for sid in ids]
            assert [read(client, pid, sid).content for sid in ids] == first
            bodies.append(first)
    assert bodies[0] == bodies[1]


# --------------------------------------------------------------------- auth and errors


def test_history_reads_are_checked_as_the_listing_is(sim: Simulator, client: httpx.Client) -> None:
    pid = sim.project_ids[0]
    sid = first_with_runs(sim, pid)
    path = f"{CHAT_PATH}/{sid}"
    unknown = client.get(
        path, params={"project_id": pid}, headers={"Authorization": "Bearer llx-nope"}
    )
    assert (unknown.status_code, unknown.json()) == (401, {"detail": "Invalid API key"})
    assert unknown.headers["www-authenticate"] == "Bearer"
    anonymous = httpx.get(sim.base_url + path, params={"project_id": pid}, timeout=10)
    assert (anonymous.status_code, anonymous.json()) == (401, {"detail": "Not authenticated"})
    missing = client.get(path)
    assert missing.status_code == 422
    assert missing.json()["detail"][0]["loc"] == ["query", "project_id"]
    nowhere = read(client, "no-such-project", sid)
    assert (nowhere.status_code, nowhere.json()) == (
        404,
        {"detail": "Project no-such-project not found"},
    )
    # A key scoped to another project opens this one's sessions no more than its listing.
    other = read(client, pid, sid)
    scoped = client.get(
        path, params={"project_id": pid}, headers={"Authorization": "Bearer llx-own"}
    )
    assert other.status_code == 200
    assert (scoped.status_code, scoped.json()) == (
        403,
        {"detail": "API key does not have access to this project"},
    )
    own = sim.sessions("own-key-project")[0]["session_id"]
    assert read(client, "own-key-project", own).status_code == 403
    with httpx.Client(
        base_url=sim.base_url, headers={"Authorization": "Bearer llx-own"}, timeout=10
    ) as owner:
        assert read(owner, "own-key-project", own).status_code == 200
    # organization_id is checked as the listing checks it.
    org_sid = sim.sessions("org-project")[0]["session_id"]
    assert read(client, "org-project", org_sid, organization_id="org-a").status_code == 200
    assert read(client, "org-project", org_sid, organization_id="org-b").json() == {
        "detail": "Project org-project not found in organization"
    }


def test_an_unknown_session_is_404(sim: Simulator, client: httpx.Client) -> None:
    pid = sim.project_ids[0]
    response = read(client, pid, "ses-nope")
    assert (response.status_code, response.json()) == (
        404,
        {"detail": "Session ses-nope not found"},
    )
    # A session of another project is not this project's.
    elsewhere = sim.sessions(sim.project_ids[1])[0]["session_id"]
    assert read(client, pid, elsewhere).json() == {"detail": f"Session {elsewhere} not found"}
    assert client.get(f"{CHAT_PATH}/a/b", params={"project_id": pid}).json() == {
        "detail": "Not Found"
    }
    assert client.post(f"{CHAT_PATH}/{elsewhere}", params={"project_id": pid}).status_code == 405


def test_a_deleted_session_is_404_and_its_id_comes_back_fresh(
    sim: Simulator, client: httpx.Client
) -> None:
    pid = sim.project_ids[0]
    sid = first_with_runs(sim, pid)
    sim.rerun(pid, sid, times=4)
    assert len(stops(read(client, pid, sid))) == 5
    sim.delete_session(pid, sid)
    gone = read(client, pid, sid)
    assert (gone.status_code, gone.json()) == (404, {"detail": f"Session {sid} not found"})
    with pytest.raises(KeyError):
        sim.history(pid, sid)
    assert sim.create_sessions(pid, ids=[sid]) == [sid]
    fresh = stops(read(client, pid, sid))
    assert len(fresh) <= 1  # a new session: never run, or run once
    assert fresh == sim.history(pid, sid)
    item = next(i for i in listed(client, pid) if i["session_id"] == sid)
    if item["job_metadata"] is None:
        assert fresh == []
    else:
        assert_shows(fresh[-1], item["job_metadata"])
    sim.rerun(pid, sid)
    assert len(stops(read(client, pid, sid))) == len(fresh) + 1


def test_ids_of_new_sessions_are_checked(sim: Simulator) -> None:
    pid = sim.project_ids[0]
    listed_id = sim.sessions(pid)[0]["session_id"]
    with pytest.raises(ValueError, match="exists"):
        sim.create_sessions(pid, ids=[listed_id])
    with pytest.raises(ValueError, match="distinct"):
        sim.create_sessions(pid, ids=["ses-x", "ses-x"])
    with pytest.raises(ValueError, match="number of ids"):
        sim.create_sessions(pid, 3, ids=["ses-y"])
    assert sim.create_sessions(pid, 2, ids=["ses-y", "ses/z"]) == ["ses-y", "ses/z"]
    assert {"ses-y", "ses/z"} <= {item["session_id"] for item in sim.sessions(pid)}


def test_a_session_id_is_read_percent_encoded(sim: Simulator, client: httpx.Client) -> None:
    pid = sim.project_ids[0]
    sim.create_sessions(pid, ids=["ses/odd id"])
    sim.rerun(pid, "ses/odd id")
    body = read(client, pid, "ses/odd id").json()
    assert body["session_id"] == "ses/odd id"
    assert len([e for e in body["events"] if e["type"] == "stop"]) >= 1


# ------------------------------------------------------------------------- several runs


def test_rerun_times_appends_that_many_runs(sim: Simulator, client: httpx.Client) -> None:
    pid = sim.project_ids[0]
    sid = first_with_runs(sim, pid)
    before = read(client, pid, sid).json()
    sim.rerun(pid, sid, times=3)
    after = read(client, pid, sid).json()
    assert len([e for e in after["events"] if e["type"] == "stop"]) == 4
    # The history only grows: what was read before is read again, then three more runs.
    assert after["events"][: len(before["events"])] == before["events"]
    assert after["last_updated_at"] > before["last_updated_at"]
    item = next(i for i in listed(client, pid) if i["session_id"] == sid)
    assert item == {key: value for key, value in after.items() if key != "events"}
    assert_shows(stops(read(client, pid, sid))[-1], item["job_metadata"])
    assert len(sim.history(pid, sid)) == 4
    with pytest.raises(ValueError, match="times"):
        sim.rerun(pid, sid, times=0)


def test_a_session_that_never_ran_gets_its_first_runs(sim: Simulator, client: httpx.Client) -> None:
    pid = sim.project_ids[0]
    sid = next(s["session_id"] for s in sim.sessions(pid) if s["job_metadata"] is None)
    assert read(client, pid, sid).json()["events"] == []
    sim.rerun(pid, sid, times=2)
    body = read(client, pid, sid).json()
    assert len([e for e in body["events"] if e["type"] == "stop"]) == 2
    # The generated title comes from the first message.
    assert body["events"][0] == {"type": "user_input", "content": body["generated_title"]}


@pytest.mark.parametrize("order", ["created", "newest-first"])
def test_burst_runs_sessions_several_times_a_step(order: str) -> None:
    counts: dict[float, list[int]] = {}
    for burst in (0.0, 0.8):
        with (
            Simulator(
                projects=1,
                sessions_per_project=300,
                seed=4,
                burst=burst,
                order=order,
                clock_start=START,
            ) as sim,
            httpx.Client(base_url=sim.base_url, headers=AUTH, timeout=10) as client,
        ):
            pid = sim.project_ids[0]
            before = {item["session_id"]: item["job_metadata"] for item in listed(client, pid)}
            sim.step()
            changed = [
                item
                for item in listed(client, pid)
                if item["session_id"] in before
                and item["job_metadata"] != before[item["session_id"]]
            ]
            assert changed
            counts[burst] = []
            for item in changed:
                ends = stops(read(client, pid, item["session_id"]))
                assert ends == sim.history(pid, item["session_id"])
                assert_shows(ends[-1], item["job_metadata"])
                runs = len(ends) - (before[item["session_id"]] is not None)
                counts[burst].append(runs)
    assert set(counts[0.0]) == {1}  # one run per re-run, as before bursts
    assert max(counts[0.8]) > 2
    assert max(counts[0.8]) <= MAX_RUNS_PER_STEP


def test_burst_leaves_new_sessions_and_the_default_data_alone() -> None:
    def data(burst: float) -> list[Any]:
        sim = Simulator(projects=1, sessions_per_project=50, seed=8, burst=burst, clock_start=START)
        return sim.sessions(sim.project_ids[0])

    assert data(0.0) == data(0.9)  # bursts happen when the data evolves, not at start
    with pytest.raises(ValueError, match="burst"):
        Simulator(burst=1.5)


# ------------------------------------------------------------------------- set_sessions


def test_set_sessions_get_one_run_each_and_reruns_append(
    sim: Simulator, client: httpx.Client
) -> None:
    items = [
        session("s1"),
        session("s2", is_error=None, error="quota exceeded"),
        session("s3", job=None),
        {"session_id": "s4", "last_updated_at": "2026-04-23T08:00:00Z", "shared_access": "query"},
    ]
    sim.set_sessions("golden", items)
    s1 = stops(read(client, "golden", "s1"))
    assert s1 == [
        {
            "type": "stop",
            "is_error": False,
            "usage": {
                "duration_ms": 1500,
                "total_input_tokens": 100,
                "total_output_tokens": 20,
                "turns": 2,
            },
        }
    ]
    s2 = stops(read(client, "golden", "s2"))
    # No is_error but an error text: the run failed, as the exporter reads it.
    assert [(s["is_error"], s["error"]) for s in s2] == [(True, "quota exceeded")]
    assert stops(read(client, "golden", "s3")) == []
    assert stops(read(client, "golden", "s4")) == []
    sim.rerun("golden", "s1", times=2)
    assert stops(read(client, "golden", "s1"))[0] == s1[0]
    assert len(sim.history("golden", "s1")) == 3
    # Setting the sessions again starts their histories afresh.
    sim.set_sessions("golden", items)
    assert stops(read(client, "golden", "s1")) == s1


# ------------------------------------------------------------------------------- faults


def test_one_shot_faults_strike_history_reads_by_name(sim: Simulator, client: httpx.Client) -> None:
    pid = sim.project_ids[0]
    sid = first_with_runs(sim, pid)
    sim.fail_next(2, status=500, detail="boom", endpoint="session")
    assert listed(client, pid)  # the listing is not a session read
    for _ in range(2):
        response = read(client, pid, sid)
        assert (response.status_code, response.json()) == (500, {"detail": "boom"})
    assert read(client, pid, sid).status_code == 200
    # And a listing fault ("chat", the default) leaves history reads alone.
    sim.fail_next(1, status=503)
    assert read(client, pid, sid).status_code == 200
    assert client.get(CHAT_PATH, params={"project_id": pid}).status_code == 503
    # Narrowed to one project, a fault strikes that project's reads only.
    other = sim.project_ids[1]
    sim.fail_next(1, status=429, project_id=other, endpoint="session")
    assert read(client, pid, sid).status_code == 200
    assert read(client, other, first_with_runs(sim, other)).status_code == 429
    sim.truncate_next(1, endpoint="session")
    cut = read(client, pid, sid)
    assert cut.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        cut.json()
    sim.hang_next(1, seconds=30, endpoint="session")
    with (
        httpx.Client(base_url=sim.base_url, headers=AUTH, timeout=0.5) as impatient,
        pytest.raises(httpx.TimeoutException),
    ):
        read(impatient, pid, sid)
    assert listed(client, pid)


def test_recurring_faults_strike_history_reads_when_named(
    sim: Simulator, client: httpx.Client
) -> None:
    pid = sim.project_ids[0]
    sid = first_with_runs(sim, pid)
    # By default the recurring faults strike listings only...
    sim.faults = FaultConfig(rate_limit_share=1.0, truncate_share=1.0)
    assert read(client, pid, sid).json()["session_id"] == sid
    # ...named, history reads (a burst as long as its period is an outage).
    outage = FaultConfig(server_error_burst_every=1, server_error_burst_length=1)
    sim.faults = dataclasses.replace(outage, endpoints=("session",))
    assert [read(client, pid, sid).status_code for _ in range(3)] == [503] * 3
    assert client.get(CHAT_PATH, params={"project_id": pid}).status_code == 200
    sim.faults = dataclasses.replace(outage, endpoints=("chat", "session"))
    assert read(client, pid, sid).status_code == 503
    assert client.get(CHAT_PATH, params={"project_id": pid}).status_code == 503
    sim.faults = FaultConfig()
    assert read(client, pid, sid).status_code == 200


def test_the_request_log_tells_history_reads_from_pages(
    sim: Simulator, client: httpx.Client
) -> None:
    pid = sim.project_ids[0]
    sim.clear_requests()
    client.get(CHAT_PATH, params={"project_id": pid, "page_size": 30})
    ids = [item["session_id"] for item in sim.sessions(pid)[:3]]
    for sid in ids:
        read(client, pid, sid)
    read(client, pid, "ses-nope")
    records = sim.requests
    assert [r.endpoint for r in records] == ["chat", "session", "session", "session", "session"]
    assert [r.session_id for r in records if r.endpoint == "session"] == [*ids, "ses-nope"]
    assert [r.status for r in records] == [200, 200, 200, 200, 404]
    assert records[1].path == f"{CHAT_PATH}/{ids[0]}"
    assert records[1].query == {"project_id": pid}


def test_malformed_histories_carry_unknown_events_and_broken_stops(
    sim: Simulator, client: httpx.Client
) -> None:
    pid = sim.project_ids[0]
    for item in sim.sessions(pid)[:40]:
        sim.rerun(pid, item["session_id"], times=2)
    sim.faults = FaultConfig(malformed_history_share=1.0)
    bodies = [read(client, pid, item["session_id"]).json() for item in listed(client, pid)]
    assert all({"citation", "progress"} & {e["type"] for e in body["events"]} for body in bodies)
    broken = 0
    for body in bodies:
        served = [e for e in body["events"] if e["type"] == "stop"]
        truth = sim.history(pid, body["session_id"])
        assert len(served) == len(truth)
        wrong = [s for s, t in zip(served, truth, strict=True) if s != t]
        assert len(wrong) <= 1
        broken += len(wrong)
        for stop in wrong:
            usage = stop.get("usage")
            assert (
                not isinstance(usage, dict)
                or not isinstance(stop["is_error"], bool)
                or any(isinstance(v, str) or (isinstance(v, int) and v < 0) for v in usage.values())
            )
    assert 0.2 * len(bodies) < broken < 0.8 * len(bodies)  # about half of the histories
    assert len(MALFORMED_STOP_KINDS) == 5
    # The same history is broken the same way on every read.
    assert read(client, pid, bodies[0]["session_id"]).json() == bodies[0]
    sim.faults = FaultConfig(malformed_history_share=0.2)
    hit = sum(
        bool(
            {"citation", "progress"}
            & {e["type"] for e in read(client, pid, b["session_id"]).json()["events"]}
        )
        for b in bodies
    )
    assert 0 < hit < len(bodies) * 0.5
    with pytest.raises(ValueError, match="malformed_history_share"):
        FaultConfig(malformed_history_share=2.0)


# --------------------------------------------------------------------- command line, demo


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[Simulator]:
    """The simulators the command line and the demo build, kept from listening."""
    made: list[Simulator] = []

    class Unstarted(Simulator):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            made.append(self)

        def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
            raise OSError("not listening in this test")

    monkeypatch.setattr(simulator_module, "Simulator", Unstarted)
    return made


def test_cli_burst_and_malformed_histories_reach_the_simulator(built: list[Simulator]) -> None:
    assert main(["--sessions", "5"]) == 1  # it cannot listen
    flags = ["--burst", "0.5", "--malformed-history-share", "0.1", "--fault-endpoint", "session"]
    assert main(["--sessions", "5", *flags]) == 1
    assert [sim.burst for sim in built] == [0.0, 0.5]
    assert built[1].faults.malformed_history_share == 0.1
    assert built[1].faults.endpoints == ("session",)


@pytest.mark.parametrize("value", ["1.5", "-0.1", "often"])
def test_cli_rejects_a_bad_burst(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--burst", value])
    assert exc.value.code == 2
    assert "--burst" in capsys.readouterr().err


def test_the_demo_runs_sessions_several_times_between_polls(built: list[Simulator]) -> None:
    from exporter.cli import run_demo

    with pytest.raises(OSError):
        run_demo(None)
    [sim] = built
    pid = sim.project_ids[0]
    before = {
        item["session_id"]: len(sim.history(pid, item["session_id"])) for item in sim.sessions(pid)
    }
    sim.step()
    runs = [
        len(sim.history(pid, item["session_id"])) - before[item["session_id"]]
        for item in sim.sessions(pid)
        if item["session_id"] in before
    ]
    assert max(runs) > 1
