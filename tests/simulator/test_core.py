"""simulator.core: the Simulator's lock, clock, listing order and test hooks (re-runs,
touches, creations and deletions, also during a listing), its start and stop."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from exporter.simulator import CHAT_PATH, DEFAULT_API_KEY, RequestRecord, Simulator
from tests.helpers import wait_for
from tests.simulator.helpers import AUTH, assert_newest_first, ids, list_all, stamp, style

# ------------------------------------------------------------------------------ golden


def test_set_sessions_serves_items_verbatim(sim: Simulator, client: httpx.Client) -> None:
    odd: list[Any] = [
        {"session_id": "ses-1", "last_updated_at": "2026-04-22T12:34:41.342245"},
        1,
        "text",
        None,
        [1, 2],
        {"session_id": "ses-2", "job_metadata": {"is_error": None, "error": "boom"}, "x": 1},
    ]
    sim.set_sessions(sim.project_ids[0], odd)
    items, _ = list_all(client, sim.project_ids[0], page_size=4)
    assert items == odd
    assert sim.sessions(sim.project_ids[0]) == odd


def test_sessions_returns_a_copy(sim: Simulator) -> None:
    project_id = sim.project_ids[0]
    copy = sim.sessions(project_id)
    copy[0]["session_id"] = "changed"
    copy.clear()
    assert sim.sessions(project_id)[0]["session_id"] != "changed"


def test_evolve_every_changes_data_in_the_background() -> None:
    with Simulator(projects=1, sessions_per_project=20, evolve_every=0.02) as sim:
        project_id = sim.project_ids[0]
        before = sim.sessions(project_id)
        wait_for(lambda: sim.sessions(project_id) != before, 20, "the data to evolve")


def test_order_is_validated_and_read_only() -> None:
    assert Simulator(projects=0).order == "created"
    assert Simulator(projects=0, order="newest-first").order == "newest-first"
    for bad in ("oldest-first", "", "Created"):
        with pytest.raises(ValueError):
            Simulator(projects=0, order=bad)
    with pytest.raises(AttributeError):
        Simulator(projects=0).order = "newest-first"  # type: ignore[misc]


def test_newest_first_lists_the_same_sessions_newest_first() -> None:
    created = Simulator(projects=1, sessions_per_project=300, seed=3)
    newest = Simulator(projects=1, sessions_per_project=300, seed=3, order="newest-first")
    project_id = newest.project_ids[0]
    items = newest.sessions(project_id)
    assert_newest_first(items)
    assert {style(item) for item in items} == {"naive", "+00:00", "Z"}
    assert sorted(ids(items)) == sorted(ids(created.sessions(project_id)))
    assert items != created.sessions(project_id)
    with newest, httpx.Client(base_url=newest.base_url, headers=AUTH) as client:
        assert list_all(client, project_id, page_size=40)[0] == items


def test_newest_first_holds_across_steps() -> None:
    with (
        Simulator(projects=2, sessions_per_project=200, seed=5, order="newest-first") as sim,
        httpx.Client(base_url=sim.base_url, headers=AUTH) as client,
    ):
        project_id = sim.project_ids[1]
        seen = set(ids(sim.sessions(project_id)))
        for _ in range(8):
            before = sim.sessions(project_id)
            sim.step()
            items, _ = list_all(client, project_id, page_size=25)
            assert items == sim.sessions(project_id)
            assert_newest_first(items)
            assert {style(item) for item in items} == {"naive", "+00:00", "Z"}
            # What changed this tick (re-runs and new sessions) is at the front.
            old = {item["session_id"]: item for item in before}
            changed = [item for item in items if old.get(item["session_id"]) != item]
            assert changed
            assert items[: len(changed)] == changed
            seen.update(ids(items))
        assert len(seen) > 200  # sessions were created


def test_created_order_keeps_positions_across_steps(sim: Simulator) -> None:
    assert sim.order == "created"
    project_id = sim.project_ids[0]
    before = ids(sim.sessions(project_id))
    sim.step(3)
    after = ids(sim.sessions(project_id))
    survivors = [sid for sid in before if sid in after]
    assert after[: len(survivors)] == survivors  # re-runs stay in place, deletions close up
    assert not set(after[len(survivors) :]) & set(before)  # new sessions are appended
    assert len(after) > len(survivors)


def test_rerun_gives_a_new_run_and_the_newest_stamp(
    any_order: Simulator, any_client: httpx.Client
) -> None:
    project_id = any_order.project_ids[0]
    params = {"project_id": project_id, "page_size": 120}
    first = any_client.get(CHAT_PATH, params=params).json()["items"]  # now cached
    by_style = {style(item): item for item in reversed(first[5:])}  # not at the front already
    assert set(by_style) == {"naive", "+00:00", "Z"}
    for target in by_style.values():
        before = any_order.sessions(project_id)
        index = ids(before).index(target["session_id"])
        any_order.rerun(project_id, target["session_id"])
        items = any_client.get(CHAT_PATH, params=params).json()["items"]
        assert items == any_order.sessions(project_id)
        position = 0 if any_order.order == "newest-first" else index
        item = items[position]
        assert item["session_id"] == target["session_id"]
        assert item["job_metadata"] is not None
        assert item["job_metadata"] != before[index]["job_metadata"]
        assert item["generated_title"]
        assert style(item) == style(target)
        assert all(stamp(item) > stamp(other) for other in items if other is not item)
        assert stamp(item) - any_order.clock < timedelta(seconds=1)  # simulated, not wall time
        rest = before[:index] + before[index + 1 :]
        assert [other for other in items if other is not item] == rest
        if any_order.order == "newest-first":
            assert_newest_first(items)


def test_touch_moves_only_last_updated_at(any_order: Simulator, any_client: httpx.Client) -> None:
    project_id = any_order.project_ids[0]
    before = any_order.sessions(project_id)
    target = before[60]
    any_order.touch(project_id, target["session_id"])
    items, _ = list_all(any_client, project_id, page_size=50)
    position = 0 if any_order.order == "newest-first" else 60
    item = items[position]
    assert item["session_id"] == target["session_id"]
    assert {**item, "last_updated_at": None} == {**target, "last_updated_at": None}
    assert style(item) == style(target)
    assert all(stamp(item) > stamp(other) for other in items if other is not item)
    assert [other for other in items if other is not item] == before[:60] + before[61:]


def test_delete_session(any_order: Simulator, any_client: httpx.Client) -> None:
    project_id = any_order.project_ids[0]
    before = any_order.sessions(project_id)
    any_client.get(CHAT_PATH, params={"project_id": project_id})  # cache the first page
    any_order.delete_session(project_id, before[3]["session_id"])
    items, _ = list_all(any_client, project_id)
    assert items == before[:3] + before[4:]
    with pytest.raises(KeyError):
        any_order.delete_session(project_id, before[3]["session_id"])


def test_create_sessions(any_order: Simulator, any_client: httpx.Client) -> None:
    project_id = any_order.project_ids[0]
    before = any_order.sessions(project_id)
    assert any_order.create_sessions(project_id, 0) == []
    new_ids = any_order.create_sessions(project_id, 4)
    assert len(set(new_ids)) == 4 and not set(new_ids) & set(ids(before))
    items, _ = list_all(any_client, project_id, page_size=50)
    assert len(items) == 124
    if any_order.order == "newest-first":
        assert ids(items[:4]) == new_ids[::-1]
        assert items[4:] == before
        assert_newest_first(items)
    else:
        assert ids(items[-4:]) == new_ids
        assert items[:-4] == before
    new = sorted((item for item in items if item["session_id"] in new_ids), key=stamp)
    assert ids(new) == new_ids  # strictly increasing in creation order
    assert len({stamp(item) for item in new}) == 4
    assert stamp(new[0]) > max(stamp(item) for item in before)
    with pytest.raises(ValueError):
        any_order.create_sessions(project_id, -1)


def test_hooks_reject_unknown_sessions_and_projects(any_order: Simulator) -> None:
    project_id = any_order.project_ids[0]
    before = any_order.sessions(project_id)
    for call in (any_order.rerun, any_order.touch, any_order.delete_session):
        with pytest.raises(KeyError):
            call(project_id, "ses-nope")
        with pytest.raises(KeyError):
            call("no-project", before[0]["session_id"])
    with pytest.raises(KeyError):
        any_order.create_sessions("no-project", 1)
    assert any_order.sessions(project_id) == before


def test_hooks_work_on_golden_data_and_keep_its_order(any_order: Simulator) -> None:
    golden: list[Any] = [
        {"session_id": "ses-c", "note": {"session_id": "ses-b"}},
        {"session_id": "ses-a", "last_updated_at": "2030-01-01T00:00:00Z", "job_metadata": None},
        "not an object",
        {"session_id": "ses-b", "last_updated_at": "2020-01-01T00:00:00"},
    ]
    any_order.set_sessions("golden", golden)
    assert any_order.sessions("golden") == golden  # served as given, in either order
    any_order.touch("golden", "ses-b")
    items = any_order.sessions("golden")
    position = 0 if any_order.order == "newest-first" else 3
    touched = items.pop(position)
    assert items == golden[:3]
    assert touched["session_id"] == "ses-b"
    assert style(touched) == "naive"
    assert stamp(touched) > stamp(golden[1])  # newer than any timestamp the project has
    any_order.rerun("golden", "ses-a")
    rerun = next(
        item for item in any_order.sessions("golden") if item == {**item, "session_id": "ses-a"}
    )
    assert rerun["job_metadata"] is not None and rerun["generated_title"]
    assert style(rerun) == "Z"
    assert stamp(rerun) > stamp(touched)
    with pytest.raises(KeyError):
        any_order.touch("golden", "not an object")


def test_hook_stamps_are_repeatable_and_keep_step_sorted() -> None:
    def play() -> list[Any]:
        sim = Simulator(
            projects=1,
            sessions_per_project=50,
            seed=1,
            order="newest-first",
            clock_start=datetime(2026, 2, 3, tzinfo=timezone.utc),
        )
        project_id = sim.project_ids[0]
        for item in sim.sessions(project_id)[10:40]:
            sim.rerun(project_id, item["session_id"])
        sim.create_sessions(project_id, 3)
        sim.step(3)
        items = sim.sessions(project_id)
        assert_newest_first(items)
        return items

    assert play() == play()


def test_rerun_during_a_listing_hides_the_session(small: Simulator) -> None:
    project_id = small.project_ids[0]
    before = ids(small.sessions(project_id))
    calls: list[tuple[str, int, int]] = []

    def hook(project: str, offset: int, page_size: int) -> None:
        calls.append((project, offset, page_size))
        if offset == 0:
            small.rerun(project_id, before[25])

    small.page_hook = hook
    with httpx.Client(base_url=small.base_url, headers=AUTH) as client:
        items, _ = list_all(client, project_id, page_size=10)
    assert calls == [(project_id, 0, 10), (project_id, 10, 10), (project_id, 20, 10)]
    listed = ids(items)
    assert before[25] not in listed  # it moved to page one, already fetched
    assert len(listed) == 30
    assert listed.count(before[9]) == 2  # and pushed page one's last item down
    assert ids(small.sessions(project_id))[0] == before[25]


def test_create_during_a_listing_repeats_an_item(small: Simulator) -> None:
    project_id = small.project_ids[0]
    before = ids(small.sessions(project_id))
    created: list[str] = []

    def hook(project: str, offset: int, page_size: int) -> None:
        if offset == 0:
            created.extend(small.create_sessions(project_id, 1))

    small.on_page(hook)
    with httpx.Client(base_url=small.base_url, headers=AUTH) as client:
        listed = ids(list_all(client, project_id, page_size=10)[0])
    assert len(listed) == 31
    assert listed.count(before[9]) == 2
    assert sorted(set(listed)) == sorted(before)  # the new session itself is not seen
    assert created and created[0] not in listed


def test_delete_during_a_listing_skips_an_item(small: Simulator) -> None:
    project_id = small.project_ids[0]
    before = ids(small.sessions(project_id))

    def hook(project: str, offset: int, page_size: int) -> None:
        if offset == 0:
            small.delete_session(project_id, before[2])

    small.page_hook = hook
    with httpx.Client(base_url=small.base_url, headers=AUTH) as client:
        listed = ids(list_all(client, project_id, page_size=10)[0])
    assert listed == before[:10] + before[11:]  # before[10] moved up onto page one, unseen
    assert len(set(listed)) == 29


def test_created_order_rerun_during_a_listing_moves_nothing(sim: Simulator) -> None:
    project_id = sim.project_ids[0]
    before = ids(sim.sessions(project_id))

    def hook(project: str, offset: int, page_size: int) -> None:
        if offset == 0:
            sim.rerun(project_id, before[100])

    sim.page_hook = hook
    with httpx.Client(base_url=sim.base_url, headers=AUTH) as client:
        assert ids(list_all(client, project_id, page_size=10)[0]) == before


def test_page_hook_runs_outside_the_lock(small: Simulator) -> None:
    project_id = small.project_ids[0]
    target = small.sessions(project_id)[-1]["session_id"]
    finished: list[bool] = []

    def hook(project: str, offset: int, page_size: int) -> None:
        # Another thread needs the lock; had the server thread held it, this would time out.
        worker = threading.Thread(target=small.touch, args=(project_id, target))
        worker.start()
        worker.join(10)
        finished.append(not worker.is_alive())

    small.page_hook = hook
    with httpx.Client(base_url=small.base_url, headers=AUTH, timeout=30) as client:
        response = client.get(CHAT_PATH, params={"project_id": project_id})
    assert response.status_code == 200
    assert finished == [True]


def test_page_hook_errors_do_not_break_the_server(
    small: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    project_id = small.project_ids[0]
    expected = small.sessions(project_id)[:10]

    def hook(project: str, offset: int, page_size: int) -> None:
        raise RuntimeError("hook failed")

    small.page_hook = hook
    params = {"project_id": project_id, "page_size": 10}
    with httpx.Client(base_url=small.base_url, headers=AUTH) as client:
        for _ in range(2):
            response = client.get(CHAT_PATH, params=params)
            assert response.status_code == 200
            assert response.json()["items"] == expected
    assert any("page_hook" in record.getMessage() for record in caplog.records)


def test_page_hook_only_sees_rendered_pages(small: Simulator) -> None:
    calls: list[tuple[str, int, int]] = []

    def hook(project: str, offset: int, page_size: int) -> None:
        calls.append((project, offset, page_size))

    assert small.on_page(hook) is hook
    with httpx.Client(base_url=small.base_url, headers=AUTH) as client:
        assert client.get(CHAT_PATH, params={"project_id": "nope"}).status_code == 404
        small.fail_next()
        assert client.get(CHAT_PATH, params={"project_id": small.project_ids[0]}).status_code == 503
        assert calls == []
        small.on_page(None)
        assert small.page_hook is None
        assert client.get(CHAT_PATH, params={"project_id": small.project_ids[0]}).status_code == 200
    assert calls == []


# ----------------------------------------------------------------------- request log


def test_requests_are_recorded(sim: Simulator, client: httpx.Client) -> None:
    count = sim.request_count
    client.get(CHAT_PATH, params={"project_id": "nope", "page_size": "5"})
    client.get("/elsewhere")
    assert sim.request_count == count + 2
    assert sim.requests[-2:] == [
        RequestRecord(
            CHAT_PATH, {"project_id": "nope", "page_size": "5"}, f"Bearer {DEFAULT_API_KEY}", 404
        ),
        RequestRecord("/elsewhere", {}, f"Bearer {DEFAULT_API_KEY}", 404),
    ]
    assert sim.requests[-1].headers["authorization"] == f"Bearer {DEFAULT_API_KEY}"
    assert sim.requests[-1].headers["user-agent"] == client.headers["User-Agent"]


# ---------------------------------------------------------------------------- lifecycle


def test_stop_is_idempotent_and_restartable() -> None:
    sim = Simulator(projects=1, sessions_per_project=2)
    with pytest.raises(RuntimeError):
        _ = sim.base_url
    sim.start()
    with pytest.raises(RuntimeError):
        sim.start()
    sim.stop()
    sim.stop()
    url = sim.start()
    try:
        response = httpx.get(
            url + CHAT_PATH, params={"project_id": sim.project_ids[0]}, headers=AUTH
        )
        assert response.status_code == 200
    finally:
        sim.stop()


def test_constructor_validates_arguments() -> None:
    with pytest.raises(ValueError):
        Simulator(error_share=1.5)
    with pytest.raises(ValueError):
        Simulator(max_page_size=0)
    with pytest.raises(ValueError):
        Simulator(evolve_every=0)
