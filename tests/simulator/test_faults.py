"""The simulated LlamaCloud API, driven over real HTTP the way the exporter's client uses it."""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import math
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import exporter.simulator as simulator_module
from exporter.simulator import (
    CHAT_PATH,
    DEFAULT_API_KEY,
    DEFAULT_PAGE_SIZE,
    ENDPOINTS,
    HISTORY_DAYS,
    MALFORMED_KINDS,
    ORGANIZATION_ID,
    PROJECTS_PATH,
    SHARED_ACCESS,
    FaultConfig,
    RequestRecord,
    Simulator,
    main,
)
from tests.helpers import REPO, wait_for

AUTH = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}
FAULT_FLAGS = (
    "--rate-limit-share",
    "--rate-limit-retry-after",
    "--server-error-share",
    "--server-error-burst-every",
    "--server-error-burst-length",
    "--timeout-share",
    "--timeout-seconds",
    "--truncate-share",
    "--malformed-share",
    "--endless-project",
    "--fault-endpoint",
)


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(projects=2, sessions_per_project=120, seed=7) as simulator:
        yield simulator


@pytest.fixture
def client(sim: Simulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.base_url, headers=AUTH, timeout=10.0) as c:
        yield c


def list_all(
    client: httpx.Client, project_id: str, page_size: int | None = None, max_pages: int = 1000
) -> tuple[list[Any], list[dict[str, Any]]]:
    """Follows next_page_token to the end; returns (items, raw pages)."""
    params: dict[str, Any] = {"project_id": project_id}
    if page_size is not None:
        params["page_size"] = page_size
    return follow(client, CHAT_PATH, params, max_pages)


def follow(
    client: httpx.Client, path: str, params: dict[str, Any], max_pages: int
) -> tuple[list[Any], list[dict[str, Any]]]:
    """GET ``path`` and follow next_page_token to the end; returns (items, raw pages)."""
    items: list[Any] = []
    pages: list[dict[str, Any]] = []
    for _ in range(max_pages):
        response = client.get(path, params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        pages.append(page)
        items.extend(page["items"])
        token = page.get("next_page_token")
        if not token:
            return items, pages
        params["page_token"] = token
    raise AssertionError("listing did not end")


def run_status(item: dict[str, Any]) -> str:
    meta = item.get("job_metadata")
    if meta is None:
        return "never_run"
    if meta.get("is_error") is True:
        return "error"
    if meta.get("is_error") is None and meta.get("error"):
        return "error"
    return "ok"


# --------------------------------------------------------------------------- pagination


def test_pagination_covers_every_item_once(sim: Simulator, client: httpx.Client) -> None:
    project_id = sim.project_ids[0]
    items, pages = list_all(client, project_id, page_size=25)
    assert items == sim.sessions(project_id)
    ids = [item["session_id"] for item in items]
    assert len(ids) == len(set(ids)) == 120
    assert len(pages) == 5
    assert all("next_page_token" in page for page in pages[:-1])
    assert "next_page_token" not in pages[-1]


def test_exact_multiple_of_page_size_has_no_empty_trailing_page(
    sim: Simulator, client: httpx.Client
) -> None:
    _, pages = list_all(client, sim.project_ids[0], page_size=40)
    assert [len(page["items"]) for page in pages] == [40, 40, 40]
    assert "next_page_token" not in pages[-1]


def test_default_page_size_is_50(sim: Simulator, client: httpx.Client) -> None:
    page = client.get(CHAT_PATH, params={"project_id": sim.project_ids[0]}).json()
    assert len(page["items"]) == 50
    assert isinstance(page["next_page_token"], str)


def test_page_size_above_maximum_is_clamped() -> None:
    with (
        Simulator(projects=1, sessions_per_project=75, max_page_size=30) as sim,
        httpx.Client(base_url=sim.base_url, headers=AUTH) as client,
    ):
        project_id = sim.project_ids[0]
        page = client.get(CHAT_PATH, params={"project_id": project_id, "page_size": 5000}).json()
        assert len(page["items"]) == 30
        items, pages = list_all(client, project_id, page_size=5000)
        assert len(items) == 75
        assert len(pages) == 3


@pytest.mark.parametrize("page_size", ["0", "-3", "abc", "1.5"])
def test_invalid_page_size_is_422(sim: Simulator, client: httpx.Client, page_size: str) -> None:
    response = client.get(
        CHAT_PATH, params={"project_id": sim.project_ids[0], "page_size": page_size}
    )
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail[0]["loc"] == ["query", "page_size"]


def test_response_is_compact_json(sim: Simulator, client: httpx.Client) -> None:
    response = client.get(CHAT_PATH, params={"project_id": sim.project_ids[0], "page_size": 3})
    assert response.headers["content-type"] == "application/json"
    assert response.content.startswith(b'{"items":[{"session_id":"ses-')
    assert b", " not in response.content.replace(b'", "', b"")
    assert int(response.headers["content-length"]) == len(response.content)


def test_item_shape(sim: Simulator) -> None:
    items = sim.sessions(sim.project_ids[0])
    statuses = {run_status(item) for item in items}
    assert statuses == {"never_run", "ok", "error"}
    for item in items:
        assert item["session_id"].startswith("ses-")
        assert item["shared_access"] in SHARED_ACCESS
        assert item["index_ids"] is None or all(i.startswith("idx-") for i in item["index_ids"])
        meta = item["job_metadata"]
        if meta is not None:
            assert isinstance(meta["duration_ms"], float)
            assert isinstance(meta["total_input_tokens"], int)
            assert isinstance(meta["total_output_tokens"], int)
            assert meta["turns"] >= 1
            assert meta["export_config_ids"] == []


def test_shared_access_is_mostly_query() -> None:
    sim = Simulator(projects=1, sessions_per_project=1000, seed=3)
    values = [item["shared_access"] for item in sim.sessions(sim.project_ids[0])]
    assert set(values) == set(SHARED_ACCESS)
    assert 50 <= values.count("read_only") <= 150  # about one in ten


def test_timestamps_come_in_several_iso_styles() -> None:
    before = datetime.now(timezone.utc)
    sim = Simulator(projects=1, sessions_per_project=300, seed=3)
    # The clock starts at the wall clock's time, to the second, so a demo's data is recent.
    assert before - timedelta(seconds=1) < sim.clock <= datetime.now(timezone.utc)
    assert sim.clock.microsecond == 0
    history = sim.clock - timedelta(days=simulator_module.HISTORY_DAYS)
    stamps = [item["last_updated_at"] for item in sim.sessions(sim.project_ids[0])]
    assert any(s.endswith("Z") for s in stamps)
    assert any(s.endswith("+00:00") for s in stamps)
    assert any(not s.endswith(("Z", "+00:00")) for s in stamps)
    for stamp in stamps:
        parsed = datetime.fromisoformat(stamp.removesuffix("Z"))
        assert parsed.tzinfo in (None, timezone.utc)
        # Synthetic history lies in the HISTORY_DAYS before the simulated clock's start.
        assert history < parsed.replace(tzinfo=timezone.utc) <= sim.clock


def test_clock_start_shifts_the_data_and_nothing_else() -> None:
    start = datetime(2025, 3, 4, 5, 6, 7, tzinfo=timezone.utc)
    fixed = Simulator(projects=2, sessions_per_project=80, seed=6, clock_start=start)
    naive = Simulator(
        projects=2, sessions_per_project=80, seed=6, clock_start=start.replace(tzinfo=None)
    )
    later = Simulator(
        projects=2,
        sessions_per_project=80,
        seed=6,
        clock_start=start + timedelta(days=400, microseconds=5),
    )
    assert fixed.clock == naive.clock == start
    assert later.clock == start + timedelta(days=400, microseconds=5)
    for simulator in (fixed, naive, later):
        simulator.step(4)
    assert fixed.clock == start + timedelta(seconds=4 * simulator_module.STEP_SECONDS)
    for project_id in fixed.project_ids:
        one, other = fixed.sessions(project_id), later.sessions(project_id)
        assert naive.sessions(project_id) == one
        assert len(one) == len(other)
        for a, b in zip(one, other, strict=True):
            assert stamp(b) - stamp(a) == timedelta(days=400, microseconds=5)
            assert style(a) == style(b)
            del a["last_updated_at"], b["last_updated_at"]
        assert one == other


def test_keep_alive_connection_is_reused(sim: Simulator) -> None:
    host, port = sim.base_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        for _ in range(3):
            connection.request(
                "GET", f"{CHAT_PATH}?project_id={sim.project_ids[0]}&page_size=2", headers=AUTH
            )
            response = connection.getresponse()
            body = response.read()
            assert response.status == 200
            assert not response.will_close
            assert len(json.loads(body)["items"]) == 2
    finally:
        connection.close()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(count=st.integers(min_value=0, max_value=60), page_size=st.integers(1, 25))
def test_pagination_property(
    sim: Simulator, client: httpx.Client, count: int, page_size: int
) -> None:
    data = [{"session_id": f"ses-{i}", "n": i} for i in range(count)]
    sim.set_sessions("golden", data)
    items, pages = list_all(client, "golden", page_size=page_size)
    assert items == data
    assert len(pages) == max(1, -(-count // page_size))
    assert "next_page_token" not in pages[-1]


# ------------------------------------------------------------------------------- errors


def test_missing_authorization_is_401(sim: Simulator) -> None:
    response = httpx.get(sim.base_url + CHAT_PATH, params={"project_id": sim.project_ids[0]})
    assert response.status_code == 401
    assert response.json() == {"detail": "Not authenticated"}
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("header", ["Bearer llx-wrong", "Basic abc", "Bearer", "llx-demo-key"])
def test_invalid_authorization_is_401(sim: Simulator, header: str) -> None:
    response = httpx.get(
        sim.base_url + CHAT_PATH,
        params={"project_id": sim.project_ids[0]},
        headers={"Authorization": header},
    )
    assert response.status_code == 401
    assert isinstance(response.json()["detail"], str)


def test_missing_project_id_is_422(client: httpx.Client) -> None:
    response = client.get(CHAT_PATH)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "project_id"]


def test_unknown_project_is_404(client: httpx.Client) -> None:
    response = client.get(CHAT_PATH, params={"project_id": "00000000-0000-0000-0000-000000000000"})
    assert response.status_code == 404
    assert "not found" in response.json()["detail"]


def test_unknown_path_is_404(client: httpx.Client) -> None:
    response = client.get("/api/v1/nope")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found"}


def test_other_methods_are_405(sim: Simulator, client: httpx.Client) -> None:
    response = client.post(CHAT_PATH, params={"project_id": sim.project_ids[0]}, json={"x": 1})
    assert response.status_code == 405
    assert response.json() == {"detail": "Method Not Allowed"}


@pytest.mark.parametrize("token", ["garbage!", "bm9wZQ", "", "o.12345678.abc"])
def test_bad_page_token_is_400(sim: Simulator, client: httpx.Client, token: str) -> None:
    response = client.get(
        CHAT_PATH, params={"project_id": sim.project_ids[0], "page_token": token or "%%%"}
    )
    assert response.status_code == 400
    assert response.json() == {"detail": "Invalid page_token"}


def test_empty_page_token_means_first_page(sim: Simulator, client: httpx.Client) -> None:
    project_id = sim.project_ids[0]
    first = client.get(CHAT_PATH, params={"project_id": project_id})
    empty = client.get(CHAT_PATH, params={"project_id": project_id, "page_token": ""})
    assert first.content == empty.content


def test_page_token_of_another_project_is_400(sim: Simulator, client: httpx.Client) -> None:
    first, second = sim.project_ids
    token = client.get(CHAT_PATH, params={"project_id": first}).json()["next_page_token"]
    response = client.get(CHAT_PATH, params={"project_id": second, "page_token": token})
    assert response.status_code == 400


def test_project_scoped_keys() -> None:
    with Simulator(projects=1, api_keys={"proj-a": "llx-a", "proj-b": "llx-b"}) as sim:
        shared_project = sim.project_ids[0]
        assert sim.project_ids[1:] == ["proj-a", "proj-b"]

        def status(project_id: str, key: str) -> int:
            response = httpx.get(
                sim.base_url + CHAT_PATH,
                params={"project_id": project_id},
                headers={"Authorization": f"Bearer {key}"},
            )
            assert "detail" in response.json() or response.status_code == 200
            return response.status_code

        assert status("proj-a", "llx-a") == 200
        assert status("proj-b", "llx-b") == 200
        assert status(shared_project, DEFAULT_API_KEY) == 200
        assert status("proj-a", "llx-b") == 403
        assert status("proj-a", DEFAULT_API_KEY) == 403
        assert status(shared_project, "llx-a") == 403
        assert status("proj-a", "llx-unknown") == 401


def test_custom_shared_key() -> None:
    with Simulator(projects=1, api_key="llx-custom") as sim:
        params = {"project_id": sim.project_ids[0]}
        url = sim.base_url + CHAT_PATH
        assert httpx.get(url, params=params, headers=AUTH).status_code == 401
        ok = httpx.get(url, params=params, headers={"Authorization": "Bearer llx-custom"})
        assert ok.status_code == 200


def test_organization_id(sim: Simulator, client: httpx.Client) -> None:
    sim.add_project("org-proj", organization_id="org-1", sessions=3)
    for org, expected in (("org-1", 200), ("org-2", 404), (None, 200)):
        params = {"project_id": "org-proj"} | ({"organization_id": org} if org else {})
        response = client.get(CHAT_PATH, params=params)
        assert response.status_code == expected
        if expected == 200:
            assert len(response.json()["items"]) == 3
        else:
            assert "detail" in response.json()
    ignored = client.get(
        CHAT_PATH, params={"project_id": sim.project_ids[0], "organization_id": "anything"}
    )
    assert ignored.status_code == 200


def test_add_project_twice_is_an_error(sim: Simulator) -> None:
    sim.add_project("p")
    with pytest.raises(ValueError):
        sim.add_project("p")
    assert sim.sessions("p") == []
    with pytest.raises(KeyError):
        sim.sessions("missing")


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


def test_cached_pages_are_invalidated_on_change(sim: Simulator, client: httpx.Client) -> None:
    project_id = sim.project_ids[0]
    before = client.get(CHAT_PATH, params={"project_id": project_id}).content
    assert client.get(CHAT_PATH, params={"project_id": project_id}).content == before
    sim.set_sessions(project_id, [{"session_id": "ses-only"}])
    after = client.get(CHAT_PATH, params={"project_id": project_id}).json()
    assert after == {"items": [{"session_id": "ses-only"}]}
    sim.step()
    stepped = client.get(CHAT_PATH, params={"project_id": project_id}).json()
    assert stepped["items"] == sim.sessions(project_id)[:50]


# ------------------------------------------------------------------------- determinism


def all_pages_bytes(sim: Simulator) -> list[bytes]:
    out: list[bytes] = []
    with httpx.Client(base_url=sim.base_url, headers=AUTH) as client:
        for project_id in sim.project_ids:
            params = {"project_id": project_id, "page_size": "30"}
            while True:
                response = client.get(CHAT_PATH, params=params)
                out.append(response.content)
                token = response.json().get("next_page_token")
                if not token:
                    break
                params["page_token"] = token
    return out


def test_same_seed_serves_identical_bytes() -> None:
    # The same clock_start too: by default each starts at the wall clock's second.
    start = datetime(2026, 5, 6, 7, 8, 9, tzinfo=timezone.utc)
    with (
        Simulator(seed=42, clock_start=start) as one,
        Simulator(seed=42, clock_start=start) as two,
        Simulator(seed=43, clock_start=start) as other,
    ):
        assert one.project_ids == two.project_ids
        assert all_pages_bytes(one) == all_pages_bytes(two)
        assert other.project_ids != one.project_ids
        assert all_pages_bytes(other) != all_pages_bytes(one)
        for simulator in (one, two, other):
            simulator.step(3)
        assert all_pages_bytes(one) == all_pages_bytes(two)


def test_project_ids_are_uuid4() -> None:
    for project_id in Simulator(projects=3, sessions_per_project=0).project_ids:
        assert uuid.UUID(project_id).version == 4


# ------------------------------------------------------------------------------ evolve


def test_step_creates_reruns_and_deletes(sim: Simulator) -> None:
    project_id = sim.project_ids[0]
    before = {item["session_id"]: item for item in sim.sessions(project_id)}
    start = sim.clock
    sim.step(3)
    assert sim.clock > start
    after = {item["session_id"]: item for item in sim.sessions(project_id)}
    created = after.keys() - before.keys()
    deleted = before.keys() - after.keys()
    rerun = [
        sid
        for sid in after.keys() & before.keys()
        if after[sid]["job_metadata"] != before[sid]["job_metadata"]
    ]
    assert created and deleted and rerun
    for sid in rerun:
        assert stamp(after[sid]) > start
        assert after[sid]["last_updated_at"] != before[sid]["last_updated_at"]


def test_new_sessions_include_never_run_and_run() -> None:
    sim = Simulator(projects=1, sessions_per_project=50, seed=5)
    project_id = sim.project_ids[0]
    before = {item["session_id"] for item in sim.sessions(project_id)}
    sim.step(30)
    created = [item for item in sim.sessions(project_id) if item["session_id"] not in before]
    statuses = {run_status(item) for item in created}
    assert "never_run" in statuses
    assert statuses - {"never_run"}


def test_size_stays_near_the_initial_size() -> None:
    sim = Simulator(projects=1, sessions_per_project=100, seed=2)
    sim.step(300)
    assert 30 <= len(sim.sessions(sim.project_ids[0])) <= 300


def test_error_share_one_makes_every_rerun_fail(sim: Simulator) -> None:
    project_id = sim.project_ids[0]
    before = {item["session_id"]: item for item in sim.sessions(project_id)}
    sim.error_share = 1.0
    sim.step(4)
    changed = [
        item
        for item in sim.sessions(project_id)
        if item["job_metadata"] is not None
        and before.get(item["session_id"], {}).get("job_metadata") != item["job_metadata"]
    ]
    assert changed
    assert all(run_status(item) == "error" for item in changed)
    assert all(item["job_metadata"]["error"] for item in changed)


def test_errors_sometimes_lack_is_error() -> None:
    sim = Simulator(projects=1, sessions_per_project=400, error_share=1.0, seed=1)
    metas = [i["job_metadata"] for i in sim.sessions(sim.project_ids[0]) if i["job_metadata"]]
    assert any("is_error" not in meta and meta["error"] for meta in metas)
    assert any(meta.get("is_error") is True for meta in metas)


def test_evolve_every_changes_data_in_the_background() -> None:
    with Simulator(projects=1, sessions_per_project=20, evolve_every=0.02) as sim:
        project_id = sim.project_ids[0]
        before = sim.sessions(project_id)
        wait_for(lambda: sim.sessions(project_id) != before, 20, "the data to evolve")


# ------------------------------------------------------------------- order and test hooks


def stamp(item: dict[str, Any]) -> datetime:
    """``last_updated_at`` as an aware UTC datetime, whichever of the three styles it has."""
    parsed = datetime.fromisoformat(item["last_updated_at"].removesuffix("Z"))
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=timezone.utc)


def style(item: dict[str, Any]) -> str:
    text = item["last_updated_at"]
    return "Z" if text.endswith("Z") else "+00:00" if text.endswith("+00:00") else "naive"


def assert_newest_first(items: list[dict[str, Any]]) -> None:
    stamps = [stamp(item) for item in items]
    assert stamps == sorted(stamps, reverse=True)


def ids(items: list[dict[str, Any]]) -> list[str]:
    return [item["session_id"] for item in items]


@pytest.fixture(params=["created", "newest-first"])
def any_order(request: pytest.FixtureRequest) -> Iterator[Simulator]:
    with Simulator(projects=1, sessions_per_project=120, seed=7, order=request.param) as simulator:
        yield simulator


@pytest.fixture
def any_client(any_order: Simulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=any_order.base_url, headers=AUTH, timeout=10.0) as c:
        yield c


@pytest.fixture
def small() -> Iterator[Simulator]:
    """30 sessions newest first, listed in 3 pages of 10 by the mid-listing tests."""
    with Simulator(projects=1, sessions_per_project=30, seed=9, order="newest-first") as simulator:
        yield simulator


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


# ------------------------------------------------------------------------------ faults


def test_fail_next_with_retry_after(sim: Simulator, client: httpx.Client) -> None:
    params = {"project_id": sim.project_ids[0]}
    sim.fail_next(2, status=429, retry_after="7", detail="Too Many Requests")
    for _ in range(2):
        response = client.get(CHAT_PATH, params=params)
        assert response.status_code == 429
        assert response.headers["retry-after"] == "7"
        assert response.json() == {"detail": "Too Many Requests"}
    assert client.get(CHAT_PATH, params=params).status_code == 200


def test_fail_next_default_and_project_filter(sim: Simulator, client: httpx.Client) -> None:
    first, second = sim.project_ids
    sim.fail_next(project_id=second)
    assert client.get(CHAT_PATH, params={"project_id": first}).status_code == 200
    response = client.get(CHAT_PATH, params={"project_id": second})
    assert response.status_code == 503
    assert response.json() == {"detail": "Service Unavailable"}
    assert "retry-after" not in response.headers
    assert client.get(CHAT_PATH, params={"project_id": second}).status_code == 200


def test_truncate_next_gives_invalid_json(sim: Simulator, client: httpx.Client) -> None:
    params = {"project_id": sim.project_ids[0]}
    full = client.get(CHAT_PATH, params=params).content
    sim.truncate_next()
    response = client.get(CHAT_PATH, params=params)
    assert response.status_code == 200
    assert int(response.headers["content-length"]) == len(response.content) == len(full) // 2
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.content)
    assert client.get(CHAT_PATH, params=params).content == full


def test_hang_next_triggers_client_timeout(sim: Simulator) -> None:
    params = {"project_id": sim.project_ids[0]}
    sim.hang_next(seconds=30.0)
    with (
        httpx.Client(base_url=sim.base_url, headers=AUTH, timeout=0.2) as client,
        pytest.raises(httpx.TimeoutException),
    ):
        client.get(CHAT_PATH, params=params)
    with httpx.Client(base_url=sim.base_url, headers=AUTH, timeout=10) as client:
        assert client.get(CHAT_PATH, params=params).status_code == 200


def test_latency_triggers_client_timeout(sim: Simulator) -> None:
    params = {"project_id": sim.project_ids[0]}
    sim.latency = 30.0
    with (
        httpx.Client(base_url=sim.base_url, headers=AUTH, timeout=0.2) as client,
        pytest.raises(httpx.TimeoutException),
    ):
        client.get(CHAT_PATH, params=params)
    sim.latency = 0.0
    with httpx.Client(base_url=sim.base_url, headers=AUTH, timeout=10) as client:
        assert client.get(CHAT_PATH, params=params).status_code == 200


def test_fault_count_must_be_positive(sim: Simulator) -> None:
    with pytest.raises(ValueError):
        sim.fail_next(0)


def test_endless_listing_issues_new_tokens(sim: Simulator, client: httpx.Client) -> None:
    project_id = sim.project_ids[0]
    sim.set_endless(project_id)
    params = {"project_id": project_id, "page_size": "10"}
    tokens: list[str] = []
    first_items = None
    for _ in range(60):
        page = client.get(CHAT_PATH, params=params).json()
        first_items = first_items or page["items"]
        assert page["items"] == first_items
        tokens.append(page["next_page_token"])
        params["page_token"] = page["next_page_token"]
    assert len(set(tokens)) == len(tokens)
    sim.set_endless(project_id, False)
    items, _ = list_all(client, project_id, page_size=10)
    assert len(items) == 120


def test_repeat_token_loops(sim: Simulator, client: httpx.Client) -> None:
    project_id = sim.project_ids[0]
    sim.set_repeat_token(project_id)
    params = {"project_id": project_id, "page_size": "10"}
    first = client.get(CHAT_PATH, params=params).json()
    params["page_token"] = first["next_page_token"]
    second = client.get(CHAT_PATH, params=params).json()
    third = client.get(CHAT_PATH, params=params).json()
    assert first["next_page_token"] == second["next_page_token"] == third["next_page_token"]
    assert second == third
    assert second["items"] != first["items"]


# --------------------------------------------------------------------- recurring faults

# Draws happen but change nothing: the way to check that a share of 0 really injects nothing.
INERT = FaultConfig(timeout_share=1.0, timeout_seconds=0.0)


def answers(client: httpx.Client, project_id: str, n: int) -> list[httpx.Response]:
    """``n`` first-page requests, one after another, so the fault draws follow a fixed order."""
    params = {"project_id": project_id, "page_size": "5"}
    return [client.get(CHAT_PATH, params=params) for _ in range(n)]


def outcome(response: httpx.Response) -> str:
    """A status, with 200 answers split into whole and truncated bodies."""
    if response.status_code != 200:
        return str(response.status_code)
    try:
        response.json()
    except json.JSONDecodeError:
        return "200-cut"
    return "200"


def fault_sequence(seed: int, config: FaultConfig, n: int = 200) -> list[str]:
    with (
        Simulator(projects=1, sessions_per_project=20, seed=seed, faults=config) as sim,
        httpx.Client(base_url=sim.base_url, headers=AUTH, timeout=10) as client,
    ):
        return [outcome(r) for r in answers(client, sim.project_ids[0], n)]


def is_malformed(item: Any) -> bool:
    """True when the item breaks the item contract in one of the ways faults inject."""
    if not isinstance(item, dict) or not isinstance(item.get("session_id"), str):
        return True
    meta = item.get("job_metadata")
    if meta is None:
        return False
    if not isinstance(meta, dict):
        return True
    counts = [meta.get(name) for name in ("total_input_tokens", "total_output_tokens", "turns")]
    return any(isinstance(c, str) or (isinstance(c, int) and c < 0) for c in counts)


def malformed_kind(item: Any) -> str:
    if not isinstance(item, dict):
        return "not_object"
    if "session_id" not in item:
        return "missing_session_id"
    meta = item["job_metadata"]
    if not isinstance(meta, dict):
        return "job_metadata_not_object"
    if any(isinstance(value, str) for value in meta.values() if value is not meta.get("error")):
        return "string_count"
    return "negative_count"


def test_fault_config_defaults_inject_nothing(sim: Simulator, client: httpx.Client) -> None:
    assert sim.faults == FaultConfig()
    assert not FaultConfig().per_request
    responses = answers(client, sim.project_ids[0], 20)
    assert [outcome(r) for r in responses] == ["200"] * 20


@pytest.mark.parametrize(
    "bad",
    [
        {"rate_limit_share": 1.5},
        {"server_error_share": -0.1},
        {"timeout_share": math.nan},
        {"truncate_share": "0.5"},
        {"malformed_share": True},
        {"rate_limit_retry_after": -1},
        {"rate_limit_retry_after": 1.5},
        {"server_error_burst_every": -1},
        {"server_error_burst_length": 0},
        {"timeout_seconds": -1.0},
        {"timeout_seconds": math.inf},
        {"endless_projects": "proj-a"},
        {"endless_projects": (1,)},
        {"endpoints": "chat"},
        {"endpoints": ("chat", "nope")},
    ],
)
def test_fault_config_validates(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        FaultConfig(**bad)


def test_faults_attribute_takes_only_a_fault_config(sim: Simulator) -> None:
    with pytest.raises(TypeError):
        sim.faults = None  # type: ignore[assignment]
    config = FaultConfig(rate_limit_share=0.5, endless_projects=["a", "b"])  # type: ignore[arg-type]
    assert config.endless_projects == ("a", "b")
    sim.faults = config
    assert sim.faults is config


def test_rate_limit_share_one_answers_429_with_retry_after(
    sim: Simulator, client: httpx.Client
) -> None:
    sim.faults = FaultConfig(rate_limit_share=1.0, rate_limit_retry_after=4)
    for response in answers(client, sim.project_ids[0], 10):
        assert response.status_code == 429
        assert response.headers["retry-after"] == "4"
        assert response.json() == {"detail": "Too Many Requests"}
    sim.faults = FaultConfig()
    assert client.get(CHAT_PATH, params={"project_id": sim.project_ids[0]}).status_code == 200


def test_rate_limit_retry_after_defaults_to_one_second(
    sim: Simulator, client: httpx.Client
) -> None:
    sim.faults = FaultConfig(rate_limit_share=1.0)
    response = client.get(CHAT_PATH, params={"project_id": sim.project_ids[0]})
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"


def test_server_error_share_one_answers_every_5xx_kind(
    sim: Simulator, client: httpx.Client
) -> None:
    sim.faults = FaultConfig(server_error_share=1.0)
    details = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}
    seen = set()
    for response in answers(client, sim.project_ids[0], 60):
        assert response.status_code in details
        assert response.json() == {"detail": details[response.status_code]}
        assert "retry-after" not in response.headers
        seen.add(response.status_code)
    assert seen == set(details)


def test_server_error_bursts_are_periodic(sim: Simulator, client: httpx.Client) -> None:
    sim.faults = FaultConfig(server_error_burst_every=5, server_error_burst_length=2)
    statuses = [r.status_code for r in answers(client, sim.project_ids[0], 21)]
    bursts = [n for n, status in enumerate(statuses, start=1) if status == 503]
    assert bursts == [5, 6, 10, 11, 15, 16, 20, 21]
    assert all(status in (200, 503) for status in statuses)


def test_a_burst_at_least_as_long_as_its_period_is_an_outage(
    sim: Simulator, client: httpx.Client
) -> None:
    sim.faults = FaultConfig(server_error_burst_every=3, server_error_burst_length=3)
    statuses = [r.status_code for r in answers(client, sim.project_ids[0], 12)]
    assert statuses == [200, 200] + [503] * 10


def test_timeout_share_one_makes_the_client_time_out(sim: Simulator) -> None:
    params = {"project_id": sim.project_ids[0]}
    sim.faults = FaultConfig(timeout_share=1.0, timeout_seconds=30.0)
    with (
        httpx.Client(base_url=sim.base_url, headers=AUTH, timeout=0.2) as client,
        pytest.raises(httpx.TimeoutException),
    ):
        client.get(CHAT_PATH, params=params)
    sim.faults = FaultConfig()
    with httpx.Client(base_url=sim.base_url, headers=AUTH, timeout=10) as client:
        assert client.get(CHAT_PATH, params=params).status_code == 200


def test_a_stalled_request_still_gets_its_normal_answer(
    sim: Simulator, client: httpx.Client
) -> None:
    sim.faults = INERT
    params = {"project_id": sim.project_ids[0], "page_size": "5"}
    response = client.get(CHAT_PATH, params=params)
    assert response.status_code == 200
    assert response.json()["items"] == sim.sessions(sim.project_ids[0])[:5]


def test_truncate_share_one_cuts_every_200(sim: Simulator, client: httpx.Client) -> None:
    project_id = sim.project_ids[0]
    params = {"project_id": project_id, "page_size": "5"}
    full = client.get(CHAT_PATH, params=params).content
    sim.faults = FaultConfig(truncate_share=1.0)
    for response in answers(client, project_id, 10):
        assert response.status_code == 200
        assert int(response.headers["content-length"]) == len(response.content)
        assert response.content == full[: len(full) // 2]
    missing = client.get(CHAT_PATH, params={"project_id": "nope"})
    assert missing.status_code == 404
    assert "detail" in missing.json()


@pytest.mark.parametrize(
    "config",
    [
        dataclasses.replace(INERT, rate_limit_share=0.0),
        dataclasses.replace(INERT, server_error_share=0.0),
        dataclasses.replace(INERT, truncate_share=0.0),
        dataclasses.replace(INERT, malformed_share=0.0),
    ],
    ids=["rate_limit", "server_error", "truncate", "malformed"],
)
def test_a_share_of_zero_injects_nothing(
    sim: Simulator, client: httpx.Client, config: FaultConfig
) -> None:
    assert config.per_request  # the RNG is drawn for every request
    sim.faults = config
    project_id = sim.project_ids[0]
    responses = answers(client, project_id, 50)
    assert [outcome(r) for r in responses] == ["200"] * 50
    assert all(r.json()["items"] == sim.sessions(project_id)[:5] for r in responses)


def test_partial_shares_mix_faults_and_normal_answers() -> None:
    config = FaultConfig(rate_limit_share=0.2, server_error_share=0.2, truncate_share=0.2)
    outcomes = fault_sequence(3, config)
    counts = {kind: outcomes.count(kind) for kind in set(outcomes)}
    assert set(counts) >= {"200", "200-cut", "429"}
    assert set(counts) - {"200", "200-cut", "429"} <= {"500", "502", "503"}
    # Deterministic for the seed, so loose bounds cannot flake.
    assert 20 <= counts["429"] <= 70
    assert 80 <= counts["200"] <= 160


def test_same_seed_gives_the_same_faults() -> None:
    config = FaultConfig(
        rate_limit_share=0.1,
        server_error_share=0.1,
        server_error_burst_every=50,
        truncate_share=0.1,
    )
    first = fault_sequence(11, config)
    assert first == fault_sequence(11, config)
    assert first != fault_sequence(12, config)
    assert len(set(first)) >= 4


def test_setting_faults_restarts_the_sequence(sim: Simulator, client: httpx.Client) -> None:
    config = FaultConfig(rate_limit_share=0.3, server_error_share=0.3)
    sim.faults = config
    first = [outcome(r) for r in answers(client, sim.project_ids[0], 40)]
    sim.faults = config
    assert [outcome(r) for r in answers(client, sim.project_ids[0], 40)] == first


def test_one_shot_faults_take_precedence(sim: Simulator, client: httpx.Client) -> None:
    project_id = sim.project_ids[0]
    params = {"project_id": project_id}
    sim.faults = FaultConfig(rate_limit_share=1.0)
    sim.fail_next(status=504, detail="Gateway Timeout")
    response = client.get(CHAT_PATH, params=params)
    assert response.status_code == 504
    assert response.json() == {"detail": "Gateway Timeout"}
    assert client.get(CHAT_PATH, params=params).status_code == 429

    sim.faults = FaultConfig()
    small = params | {"page_size": "3"}
    full = client.get(CHAT_PATH, params=small).content
    sim.faults = FaultConfig(truncate_share=1.0)
    sim.truncate_next()
    assert client.get(CHAT_PATH, params=small).content == full[: len(full) // 2]  # cut once
    sim.faults = FaultConfig()
    # Had the recurring fault answered, the one-shot would still be pending here.
    assert client.get(CHAT_PATH, params=small).content == full


def test_malformed_share_one_breaks_every_item(sim: Simulator, client: httpx.Client) -> None:
    project_id = sim.project_ids[0]
    good = sim.sessions(project_id)
    sim.faults = FaultConfig(malformed_share=1.0)
    items, pages = list_all(client, project_id, page_size=25)
    assert len(pages) == 5
    assert len(items) == len(good) == 120
    assert all(is_malformed(item) for item in items)
    assert {malformed_kind(item) for item in items} == set(MALFORMED_KINDS)
    assert sim.sessions(project_id) == good  # the data itself is untouched
    sim.faults = FaultConfig()
    assert list_all(client, project_id, page_size=25)[0] == good


def test_malformed_items_are_deterministic_and_independent_of_page_size() -> None:
    source = Simulator(projects=1, sessions_per_project=100, seed=4)
    good = source.sessions(source.project_ids[0])
    config = FaultConfig(malformed_share=0.3)
    listings: list[list[Any]] = []
    for seed, page_size in ((4, 7), (4, 50), (5, 50)):
        with (
            Simulator(projects=0, seed=seed, faults=config) as simulator,
            httpx.Client(base_url=simulator.base_url, headers=AUTH) as client,
        ):
            simulator.set_sessions("golden", good)
            listings.append(list_all(client, "golden", page_size)[0])
    same, other_page_size, other_seed = listings
    assert same == other_page_size
    assert same != other_seed
    flags = [is_malformed(item) for item in same]
    assert 10 <= sum(flags) <= 50  # about 30 of 100, fixed by the seed
    for item, original, broken in zip(same, good, flags, strict=True):
        assert (item != original) is broken


def test_endless_projects_never_end(sim: Simulator, client: httpx.Client) -> None:
    endless, finite = sim.project_ids
    sim.faults = FaultConfig(endless_projects=(endless, "not-a-project"))
    params = {"project_id": endless, "page_size": "50"}
    tokens = set()
    for _ in range(30):
        page = client.get(CHAT_PATH, params=params).json()
        assert len(page["items"]) == 50
        tokens.add(page["next_page_token"])
        params["page_token"] = page["next_page_token"]
    assert len(tokens) == 30
    assert len(list_all(client, finite)[0]) == 120
    sim.faults = FaultConfig()
    assert len(list_all(client, endless)[0]) == 120


def test_endless_listing_can_carry_malformed_items(sim: Simulator, client: httpx.Client) -> None:
    project_id = sim.project_ids[0]
    sim.faults = FaultConfig(endless_projects=(project_id,), malformed_share=1.0)
    page = client.get(CHAT_PATH, params={"project_id": project_id, "page_size": "10"}).json()
    assert page["next_page_token"]
    assert all(is_malformed(item) for item in page["items"])


# ----------------------------------------------------------------- projects (/api/v2/projects)


@pytest.fixture
def org_sim() -> Iterator[Simulator]:
    """12 projects without sessions: enough for scratch names and several pages."""
    with Simulator(projects=12, sessions_per_project=0, seed=3) as simulator:
        yield simulator


@pytest.fixture
def org_client(org_sim: Simulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=org_sim.base_url, headers=AUTH, timeout=10.0) as c:
        yield c


def list_projects(
    client: httpx.Client, max_pages: int = 100, **params: Any
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Follows next_page_token through GET /api/v2/projects; returns (items, raw pages)."""
    return follow(client, PROJECTS_PATH, params, max_pages)


GENERATED_NAMES = [
    "production",
    "staging",
    "research",
    "support-bot",
    "scratch-1",
    "sales-assistant",
    "legal-search",
    "hr-handbook",
    "finance-reports",
    "scratch-2",
    "production-2",
    "staging-2",
]


def test_projects_have_stable_generated_names() -> None:
    one = Simulator(projects=12, sessions_per_project=0, seed=3)
    other = Simulator(projects=12, sessions_per_project=0, seed=4)
    assert [p["name"] for p in one.projects()] == GENERATED_NAMES
    assert [p["name"] for p in other.projects()] == GENERATED_NAMES
    assert [p["id"] for p in one.projects()] == one.project_ids != other.project_ids
    # The demo's three projects keep the names the demo gives them.
    assert [p["name"] for p in Simulator(sessions_per_project=0).projects()] == [
        "production",
        "staging",
        "research",
    ]


@pytest.mark.parametrize("seed", [0, 7, 42])
def test_project_ids_are_those_the_seed_always_gave(seed: int) -> None:
    master = random.Random(seed)
    expected = [str(uuid.UUID(int=master.getrandbits(128), version=4)) for _ in range(5)]
    sim = Simulator(projects=5, sessions_per_project=0, seed=seed, api_keys={"extra": "llx-x"})
    assert sim.project_ids == [*expected, "extra"]


def test_organization_id_is_a_constant_uuid() -> None:
    assert uuid.UUID(ORGANIZATION_ID)
    assert Simulator(projects=0).organization_id == ORGANIZATION_ID
    assert Simulator(projects=0, seed=9).organization_id == ORGANIZATION_ID
    assert Simulator(projects=0, organization_id="org-x").organization_id == "org-x"
    with pytest.raises(ValueError):
        Simulator(organization_id="")


def test_project_items_carry_every_field(org_sim: Simulator, org_client: httpx.Client) -> None:
    items, _ = list_projects(org_client, organization_id=ORGANIZATION_ID)
    assert items == org_sim.projects()
    assert [item["id"] for item in items] == org_sim.project_ids
    keys = {"id", "name", "organization_id", "is_default", "created_at", "updated_at"}
    assert all(set(item) == keys for item in items)
    assert all(item["organization_id"] == ORGANIZATION_ID for item in items)
    assert [item["is_default"] for item in items] == [True] + [False] * 11
    created = [datetime.fromisoformat(item["created_at"].removesuffix("Z")) for item in items]
    assert created == sorted(created) and len(set(created)) == len(created)
    assert all(item["updated_at"] == item["created_at"] for item in items)
    # Every project predates the sessions of the initial history.
    history = org_sim.clock.replace(tzinfo=None) - timedelta(days=HISTORY_DAYS)
    assert max(created) < history


def test_projects_page_like_the_chat_listing(org_sim: Simulator, org_client: httpx.Client) -> None:
    items, pages = list_projects(org_client, organization_id=ORGANIZATION_ID, page_size=5)
    assert [item["name"] for item in items] == GENERATED_NAMES
    assert [len(page["items"]) for page in pages] == [5, 5, 2]
    assert all(isinstance(page["next_page_token"], str) for page in pages[:-1])
    assert "next_page_token" not in pages[-1]
    _, exact = list_projects(org_client, organization_id=ORGANIZATION_ID, page_size=6)
    assert [len(page["items"]) for page in exact] == [6, 6]
    assert "next_page_token" not in exact[-1]
    response = org_client.get(PROJECTS_PATH, params={"organization_id": ORGANIZATION_ID})
    assert response.headers["content-type"] == "application/json"
    assert response.content.startswith(b'{"items":[{"id":"')
    assert int(response.headers["content-length"]) == len(response.content)


def test_projects_default_page_size_and_maximum() -> None:
    with (
        Simulator(projects=DEFAULT_PAGE_SIZE + 5, sessions_per_project=0, max_page_size=30) as sim,
        httpx.Client(base_url=sim.base_url, headers=AUTH) as client,
    ):
        params = {"organization_id": ORGANIZATION_ID}
        assert len(client.get(PROJECTS_PATH, params=params).json()["items"]) == 30
        _, pages = list_projects(client, organization_id=ORGANIZATION_ID, page_size=5000)
        assert [len(page["items"]) for page in pages] == [30, DEFAULT_PAGE_SIZE + 5 - 30]
    with (
        Simulator(projects=DEFAULT_PAGE_SIZE + 5, sessions_per_project=0) as sim,
        httpx.Client(base_url=sim.base_url, headers=AUTH) as client,
    ):
        page = client.get(PROJECTS_PATH, params={"organization_id": ORGANIZATION_ID}).json()
        assert len(page["items"]) == DEFAULT_PAGE_SIZE
        assert isinstance(page["next_page_token"], str)


@pytest.mark.parametrize("page_size", ["0", "-3", "abc", "1.5"])
def test_projects_invalid_page_size_is_422(org_client: httpx.Client, page_size: str) -> None:
    params = {"organization_id": ORGANIZATION_ID, "page_size": page_size}
    response = org_client.get(PROJECTS_PATH, params=params)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "page_size"]


def test_projects_page_tokens_are_bound_to_their_listing(
    org_sim: Simulator, org_client: httpx.Client
) -> None:
    params = {"organization_id": ORGANIZATION_ID, "page_size": "5"}
    token = org_client.get(PROJECTS_PATH, params=params).json()["next_page_token"]
    second = org_client.get(PROJECTS_PATH, params=params | {"page_token": token}).json()
    assert [item["name"] for item in second["items"]] == GENERATED_NAMES[5:10]
    assert org_client.get(PROJECTS_PATH, params=params | {"page_token": ""}).status_code == 200
    for bad in ("garbage", "bm9wZQ", token + "x"):
        response = org_client.get(PROJECTS_PATH, params=params | {"page_token": bad})
        assert response.status_code == 400, bad
        assert response.json() == {"detail": "Invalid page_token"}
    # A chat token is no projects token, and the other way round.
    chat = {"project_id": org_sim.project_ids[0], "page_size": "1"}
    org_sim.set_sessions(org_sim.project_ids[0], [{"session_id": "a"}, {"session_id": "b"}])
    chat_token = org_client.get(CHAT_PATH, params=chat).json()["next_page_token"]
    response = org_client.get(PROJECTS_PATH, params=params | {"page_token": chat_token})
    assert response.status_code == 400
    assert org_client.get(CHAT_PATH, params=chat | {"page_token": token}).status_code == 400
    # Nor is one of another organization's listing.
    org_sim.add_project(organization_id="org-2", name="elsewhere")
    other = {"organization_id": "org-2", "page_token": token}
    assert org_client.get(PROJECTS_PATH, params=other).status_code == 400


def test_projects_need_a_key(org_sim: Simulator) -> None:
    url = org_sim.base_url + PROJECTS_PATH
    params = {"organization_id": ORGANIZATION_ID}
    response = httpx.get(url, params=params)
    assert response.status_code == 401
    assert response.json() == {"detail": "Not authenticated"}
    assert response.headers["www-authenticate"] == "Bearer"
    for header in ("Bearer llx-wrong", "Basic abc", "Bearer", DEFAULT_API_KEY):
        response = httpx.get(url, params=params, headers={"Authorization": header})
        assert response.status_code == 401, header
        assert isinstance(response.json()["detail"], str)


@pytest.mark.parametrize("params", [{}, {"organization_id": ""}, {"name": "staging"}])
def test_projects_need_an_organization_for_an_unscoped_key(
    org_client: httpx.Client, params: dict[str, str]
) -> None:
    response = org_client.get(PROJECTS_PATH, params=params)
    assert response.status_code == 400
    assert response.json() == {
        "detail": "organization_id is required unless the API key is scoped to a project"
    }


def test_projects_of_an_unknown_organization_are_403(org_client: httpx.Client) -> None:
    for organization_id in ("00000000-0000-0000-0000-000000000000", "org-typo"):
        response = org_client.get(PROJECTS_PATH, params={"organization_id": organization_id})
        assert response.status_code == 403
        assert response.json() == {
            "detail": f"API key does not have access to organization {organization_id}"
        }


def test_projects_with_a_project_scoped_key() -> None:
    keys = {"proj-a": "llx-a", "proj-b": "llx-b"}
    with Simulator(projects=1, sessions_per_project=2, seed=5, api_keys=keys) as sim:
        shared = sim.project_ids[0]

        def names(key: str, **params: str) -> list[str] | int:
            response = httpx.get(
                sim.base_url + PROJECTS_PATH,
                params=params,
                headers={"Authorization": f"Bearer {key}"},
            )
            if response.status_code != 200:
                assert "detail" in response.json()
                return response.status_code
            return [item["id"] for item in response.json()["items"]]

        # Without organization_id a project-scoped key lists the project it opens.
        assert names("llx-a") == ["proj-a"]
        assert names("llx-b", organization_id=ORGANIZATION_ID) == ["proj-b"]
        assert names("llx-a", organization_id="org-other") == 403
        assert names("llx-a", name="nope") == []
        # The shared key sees the whole organization, projects with their own keys included.
        assert names(DEFAULT_API_KEY, organization_id=ORGANIZATION_ID) == [
            shared,
            "proj-a",
            "proj-b",
        ]


def test_projects_name_filter_is_exact(org_client: httpx.Client) -> None:
    def names(name: str) -> list[str]:
        items, _ = list_projects(org_client, organization_id=ORGANIZATION_ID, name=name)
        return [item["name"] for item in items]

    assert names("staging") == ["staging"]
    assert names("scratch-1") == ["scratch-1"]
    assert names("scratch") == []
    assert names("") == GENERATED_NAMES


def test_projects_of_other_organizations(org_sim: Simulator, org_client: httpx.Client) -> None:
    first = org_sim.add_project(organization_id="org-2", name="staging", sessions=2)
    second = org_sim.add_project(organization_id="org-2")
    assert org_sim.add_project(name="staging-3") in org_sim.project_ids
    theirs, _ = list_projects(org_client, organization_id="org-2")
    assert [(p["id"], p["name"], p["is_default"]) for p in theirs] == [
        (first, "staging", True),
        (second, "research-2", False),
    ]
    assert theirs == org_sim.projects("org-2")
    assert all(p["organization_id"] == "org-2" for p in theirs)
    ours, _ = list_projects(org_client, organization_id=ORGANIZATION_ID)
    assert [p["name"] for p in ours] == [*GENERATED_NAMES, "staging-3"]
    assert len(org_sim.projects()) == len(ours) + 2
    # As before, a project added with an organization checks it on its chat listing.
    chat = {"project_id": first, "organization_id": ORGANIZATION_ID}
    assert org_client.get(CHAT_PATH, params=chat).status_code == 404
    assert org_client.get(CHAT_PATH, params=chat | {"organization_id": "org-2"}).status_code == 200
    # Once its projects are gone the organization lists none; it does not become unknown.
    org_sim.remove_project(first)
    org_sim.remove_project(second)
    assert list_projects(org_client, organization_id="org-2")[0] == []


def test_add_project_returns_a_fresh_id_and_lists_it(
    org_sim: Simulator, org_client: httpx.Client
) -> None:
    before = org_sim.clock
    project_id = org_sim.add_project(name="scratch-tmp", sessions=4)
    assert uuid.UUID(project_id).version == 4
    assert project_id not in org_sim.project_ids[:-1]
    assert org_sim.project_ids[-1] == project_id
    items, _ = list_projects(org_client, organization_id=ORGANIZATION_ID, page_size=5)
    assert items[-1]["id"] == project_id
    assert items[-1]["name"] == "scratch-tmp"
    assert items[-1]["is_default"] is False
    created = datetime.fromisoformat(items[-1]["created_at"].removesuffix("Z"))
    assert created.replace(tzinfo=timezone.utc) == before
    chat, _ = list_all(org_client, project_id)
    assert len(chat) == 4
    # The id was drawn from the seed: another simulator of the seed adds the same one.
    twin = Simulator(projects=12, sessions_per_project=0, seed=3)
    assert twin.add_project() == project_id
    assert twin.projects()[-1]["name"] == "research-2"
    # The old way still works: an id of one's choosing, returned.
    assert org_sim.add_project("chosen") == "chosen"


def test_add_project_rejects_duplicates(org_sim: Simulator) -> None:
    with pytest.raises(ValueError, match="already exists"):
        org_sim.add_project(org_sim.project_ids[0])
    with pytest.raises(ValueError, match="named 'staging'"):
        org_sim.add_project(name="staging")
    with pytest.raises(ValueError):
        org_sim.add_project(name="")
    with pytest.raises(ValueError):
        org_sim.add_project(sessions=-1)
    assert len(org_sim.project_ids) == 12
    # A name is unique within one organization only; generated names skip the taken ones.
    first = org_sim.add_project(name="research-2")
    second = org_sim.add_project(organization_id="org-2", name="staging")
    generated = org_sim.add_project()
    assert [(p["id"], p["name"]) for p in org_sim.projects()][-3:] == [
        (first, "research-2"),
        (second, "staging"),
        (generated, "support-bot-2"),
    ]
    # The failed adds drew no id: the ids are those a twin simulator draws.
    twin = Simulator(projects=12, sessions_per_project=0, seed=3)
    assert [twin.add_project() for _ in range(3)] == [first, second, generated]


def test_removed_project_answers_as_an_unknown_one(
    org_sim: Simulator, org_client: httpx.Client
) -> None:
    org_sim.add_project("locked", api_key="llx-locked", sessions=3)
    project_id = org_sim.project_ids[3]
    org_sim.set_sessions(project_id, [{"session_id": "a"}, {"session_id": "b"}])
    params = {"project_id": project_id, "page_size": "1"}
    token = org_client.get(CHAT_PATH, params=params).json()["next_page_token"]
    org_sim.remove_project(project_id)
    org_sim.remove_project("locked")
    unknown = org_client.get(CHAT_PATH, params={"project_id": str(uuid.uuid4())})
    for query in (params, params | {"page_token": token}):
        response = org_client.get(CHAT_PATH, params=query)
        assert response.status_code == unknown.status_code == 404
        assert response.json() == {"detail": f"Project {project_id} not found"}
    items, _ = list_projects(org_client, organization_id=ORGANIZATION_ID)
    assert project_id not in [item["id"] for item in items]
    assert [item["name"] for item in items] == GENERATED_NAMES[:3] + GENERATED_NAMES[4:]
    assert project_id not in org_sim.project_ids
    # Its key went with it.
    headers = {"Authorization": "Bearer llx-locked"}
    response = org_client.get(CHAT_PATH, params={"project_id": "locked"}, headers=headers)
    assert response.status_code == 401
    with pytest.raises(KeyError):
        org_sim.remove_project(project_id)
    with pytest.raises(KeyError):
        org_sim.sessions(project_id)
    # The name is free again, and so is the id.
    assert org_sim.add_project(project_id, name="support-bot") == project_id
    assert org_sim.projects()[-1]["name"] == "support-bot"
    assert list_all(org_client, project_id)[0] == []


def test_removing_the_default_project_leaves_no_default(org_sim: Simulator) -> None:
    org_sim.remove_project(org_sim.project_ids[0])
    org_sim.add_project()
    assert not any(p["is_default"] for p in org_sim.projects())


def test_projects_added_and_removed_from_many_threads(org_sim: Simulator) -> None:
    added: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def churn() -> None:
        try:
            for _ in range(25):
                project_id = org_sim.add_project(sessions=1)
                added.append(project_id)
                org_sim.remove_project(project_id)
                added.append(org_sim.add_project())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def listing() -> None:
        try:
            with httpx.Client(base_url=org_sim.base_url, headers=AUTH, timeout=10) as client:
                while not stop.is_set():
                    items, _ = list_projects(client, organization_id=ORGANIZATION_ID, page_size=7)
                    # Pages shift as projects go, so a listing may miss one, never repeat one.
                    assert len({item["id"] for item in items}) == len(items)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    reader = threading.Thread(target=listing)
    reader.start()
    workers = [threading.Thread(target=churn) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    stop.set()
    reader.join(30)
    assert errors == []
    assert len(set(added)) == len(added) == 200
    projects = org_sim.projects()
    assert len(projects) == 12 + 100
    assert len({p["name"] for p in projects}) == len(projects)


# -------------------------------------------------------------- faults on /api/v2/projects


def projects_status(client: httpx.Client) -> int:
    return client.get(PROJECTS_PATH, params={"organization_id": ORGANIZATION_ID}).status_code


def chat_status(client: httpx.Client, sim: Simulator) -> int:
    return client.get(CHAT_PATH, params={"project_id": sim.project_ids[0]}).status_code


def test_fail_next_aimed_at_projects(org_sim: Simulator, org_client: httpx.Client) -> None:
    org_sim.fail_next(2, status=503, detail="maintenance", endpoint="projects")
    assert chat_status(org_client, org_sim) == 200  # not for chat
    for _ in range(2):
        response = org_client.get(PROJECTS_PATH, params={"organization_id": ORGANIZATION_ID})
        assert response.status_code == 503
        assert response.json() == {"detail": "maintenance"}
    assert projects_status(org_client) == 200
    # By default a fault strikes chat requests only, as it always did.
    org_sim.fail_next(status=429, retry_after="3")
    assert projects_status(org_client) == 200
    assert chat_status(org_client, org_sim) == 429
    # endpoint=None strikes whichever comes next.
    org_sim.fail_next(2, endpoint=None)
    assert projects_status(org_client) == 503
    assert chat_status(org_client, org_sim) == 503
    assert projects_status(org_client) == chat_status(org_client, org_sim) == 200
    # Faults come before auth, as on the chat listing.
    org_sim.fail_next(endpoint="projects")
    assert httpx.get(org_sim.base_url + PROJECTS_PATH).status_code == 503


def test_discovery_outage_then_recovery(org_sim: Simulator, org_client: httpx.Client) -> None:
    """What the exporter's discovery tests do: fail for a while, then list again."""
    org_sim.fail_next(10**6, status=502, detail="Bad Gateway", endpoint="projects")
    org_sim.fail_next(1, project_id=org_sim.project_ids[1])
    assert [projects_status(org_client) for _ in range(5)] == [502] * 5
    assert chat_status(org_client, org_sim) == 200
    org_sim.add_project(name="born-during-the-outage")
    org_sim.clear_faults(endpoint="projects")
    items, _ = list_projects(org_client, organization_id=ORGANIZATION_ID)
    assert items[-1]["name"] == "born-during-the-outage"
    # The chat fault survived clearing the projects ones.
    response = org_client.get(CHAT_PATH, params={"project_id": org_sim.project_ids[1]})
    assert response.status_code == 503


def test_hang_and_truncate_aimed_at_projects(org_sim: Simulator, org_client: httpx.Client) -> None:
    params = {"organization_id": ORGANIZATION_ID}
    full = org_client.get(PROJECTS_PATH, params=params).content
    org_sim.truncate_next(endpoint="projects")
    assert chat_status(org_client, org_sim) == 200
    response = org_client.get(PROJECTS_PATH, params=params)
    assert response.status_code == 200
    assert response.content == full[: len(full) // 2]
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.content)
    org_sim.hang_next(seconds=30.0, endpoint="projects")
    with (
        httpx.Client(base_url=org_sim.base_url, headers=AUTH, timeout=0.3) as impatient,
        pytest.raises(httpx.TimeoutException),
    ):
        impatient.get(PROJECTS_PATH, params=params)
    assert org_client.get(PROJECTS_PATH, params=params).content == full


def test_one_shot_fault_targets_are_validated(org_sim: Simulator) -> None:
    with pytest.raises(ValueError, match="endpoint"):
        org_sim.fail_next(endpoint="nope")
    with pytest.raises(ValueError, match="project_id"):
        org_sim.hang_next(project_id=org_sim.project_ids[0], endpoint="projects")
    assert ENDPOINTS == ("chat", "projects")


def test_recurring_faults_can_strike_projects(org_sim: Simulator, org_client: httpx.Client) -> None:
    # A burst as long as its period is an outage; here of the projects listing only.
    outage = FaultConfig(server_error_burst_every=1, server_error_burst_length=1)
    org_sim.faults = dataclasses.replace(outage, endpoints=("projects",))
    assert [projects_status(org_client) for _ in range(4)] == [503] * 4
    assert chat_status(org_client, org_sim) == 200
    org_sim.faults = dataclasses.replace(outage, endpoints=("chat", "projects"))
    assert projects_status(org_client) == chat_status(org_client, org_sim) == 503
    org_sim.faults = FaultConfig()
    assert projects_status(org_client) == 200
    # By default the recurring faults leave the projects listing alone...
    org_sim.faults = FaultConfig(rate_limit_share=1.0, truncate_share=1.0)
    assert projects_status(org_client) == 200
    assert chat_status(org_client, org_sim) == 429


def test_projects_requests_do_not_shift_the_chat_faults() -> None:
    config = FaultConfig(rate_limit_share=0.3, server_error_share=0.3)
    expected = fault_sequence(5, config, n=60)
    with (
        Simulator(projects=1, sessions_per_project=20, seed=5, faults=config) as sim,
        httpx.Client(base_url=sim.base_url, headers=AUTH, timeout=10) as client,
    ):
        got = []
        for _ in range(60):
            got.append(outcome(answers(client, sim.project_ids[0], 1)[0]))
            assert projects_status(client) == 200
    assert got == expected


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


# ---------------------------------------------------------------------------------- CLI


def test_cli_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for option in ("--listen", "--projects", "--sessions", "--seed", "--evolve-every"):
        assert option in out
    for option in ("--error-share", "--latency", "--api-key"):
        assert option in out


def test_cli_rejects_bad_listen_address(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--listen", "nonsense"])
    assert exc.value.code == 2


def read_line(lines: queue.Queue[str], deadline: float) -> str:
    remaining = max(0.0, deadline - time.monotonic())
    try:
        return lines.get(timeout=remaining)
    except queue.Empty:
        raise AssertionError("the simulator printed nothing in time") from None


@contextlib.contextmanager
def cli_process(*args: str) -> Iterator[tuple[subprocess.Popen[str], str, list[str]]]:
    """``python -m exporter.simulator ARGS`` with 2 projects: (process, URL, project ids)."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    command = [sys.executable, "-m", "exporter.simulator", "--projects", "2", "--sessions", "7"]
    process = subprocess.Popen(
        [*command, "--evolve-every", "0", "--listen", "127.0.0.1:0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
    )
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line.rstrip("\n"))

    threading.Thread(target=pump, daemon=True).start()
    try:
        deadline = time.monotonic() + 30
        first = read_line(lines, deadline)
        assert first.startswith("simulator listening on http://127.0.0.1:")
        url = first.removeprefix("simulator listening on ")
        projects = [read_line(lines, deadline) for _ in range(2)]
        assert all(line.startswith("project ") for line in projects)
        assert read_line(lines, deadline) == f"organization {ORGANIZATION_ID}"
        yield process, url, [line.removeprefix("project ") for line in projects]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def test_cli_subprocess_serves_until_sigterm() -> None:
    with cli_process("--api-key", "llx-cli") as (process, url, project_ids):
        response = httpx.get(
            url + CHAT_PATH,
            params={"project_id": project_ids[0]},
            headers={"Authorization": "Bearer llx-cli"},
            timeout=10,
        )
        assert response.status_code == 200
        assert len(response.json()["items"]) == 7
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0


def test_cli_fault_flags_reach_the_server() -> None:
    flags = ("--rate-limit-share", "1", "--rate-limit-retry-after", "9")
    with cli_process(*flags) as (_, url, project_ids):
        response = httpx.get(
            url + CHAT_PATH, params={"project_id": project_ids[0]}, headers=AUTH, timeout=10
        )
        assert response.status_code == 429
        assert response.headers["retry-after"] == "9"
        assert response.json() == {"detail": "Too Many Requests"}


def test_cli_subprocess_lists_its_projects() -> None:
    with cli_process("--fault-endpoint", "projects", "--server-error-burst-every", "1") as (
        _,
        url,
        project_ids,
    ):
        params = {"organization_id": ORGANIZATION_ID}
        response = httpx.get(url + PROJECTS_PATH, params=params, headers=AUTH, timeout=10)
        assert response.status_code == 503  # the faults strike the projects listing only
        response = httpx.get(
            url + CHAT_PATH, params={"project_id": project_ids[0]}, headers=AUTH, timeout=10
        )
        assert response.status_code == 200


def test_cli_help_names_the_organization(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = "".join(capsys.readouterr().out.split())
    assert f"/api/v2/projects?organization_id={ORGANIZATION_ID}" in out


@pytest.mark.parametrize(
    ("args", "endpoints"),
    [
        ([], ("chat",)),
        (["--fault-endpoint", "projects"], ("projects",)),
        (["--fault-endpoint", "chat", "--fault-endpoint", "projects"], ("chat", "projects")),
    ],
)
def test_cli_fault_endpoint_reaches_the_simulator(
    recording: list[dict[str, Any]], args: list[str], endpoints: tuple[str, ...]
) -> None:
    assert main(args) == 1  # the stand-in cannot listen
    assert [kwargs["faults"].endpoints for kwargs in recording] == [endpoints]


def test_cli_help_documents_every_fault_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for option in FAULT_FLAGS:
        assert option in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rate-limit-share", "1.5"], "--rate-limit-share"),
        (["--server-error-share", "-0.1"], "--server-error-share"),
        (["--timeout-share", "nan"], "--timeout-share"),
        (["--truncate-share", "lots"], "--truncate-share"),
        (["--malformed-share", "2"], "--malformed-share"),
        (["--rate-limit-retry-after", "-1"], "--rate-limit-retry-after"),
        (["--server-error-burst-every", "-5"], "--server-error-burst-every"),
        (["--server-error-burst-length", "0"], "--server-error-burst-length"),
        (["--timeout-seconds", "-1"], "--timeout-seconds"),
        (["--timeout-seconds", "inf"], "--timeout-seconds"),
        (["--projects", "1", "--sessions", "1", "--endless-project", "nope"], "no such project"),
        (["--fault-endpoint", "nope"], "--fault-endpoint"),
    ],
)
def test_cli_rejects_bad_fault_values(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_order_option_is_documented(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--order {newest-first,created}" in out
    assert "(default: newest-first)" in out


def test_cli_rejects_an_unknown_order(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--order", "oldest-first"])
    assert exc.value.code == 2
    assert "--order" in capsys.readouterr().err


class RecordingSimulator:
    """Stands in for ``Simulator``: records its arguments, then fails to listen."""

    made: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, **kwargs: Any) -> None:
        self.made.append(kwargs)
        self.project_ids: list[str] = []
        self.latency = 0.0

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        raise OSError("not listening in this test")

    def stop(self) -> None:
        pass


@pytest.fixture
def recording(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    made: list[dict[str, Any]] = []
    monkeypatch.setattr(RecordingSimulator, "made", made)
    monkeypatch.setattr(simulator_module, "Simulator", RecordingSimulator)
    return made


@pytest.mark.parametrize(
    ("args", "order"),
    [
        ([], "newest-first"),
        (["--order", "created"], "created"),
        (["--order", "newest-first"], "newest-first"),
    ],
)
def test_cli_order_reaches_the_simulator(
    recording: list[dict[str, Any]], args: list[str], order: str
) -> None:
    assert main(args) == 1  # the stand-in cannot listen
    assert [kwargs["order"] for kwargs in recording] == [order]


def test_demo_simulator_lists_newest_first(recording: list[dict[str, Any]]) -> None:
    from exporter.cli import run_demo

    with pytest.raises(OSError):
        run_demo(None)
    assert [kwargs["order"] for kwargs in recording] == ["newest-first"]


def test_cli_subprocess_lists_newest_first_by_default() -> None:
    with cli_process("--sessions", "40") as (_, url, project_ids):
        response = httpx.get(
            url + CHAT_PATH, params={"project_id": project_ids[0]}, headers=AUTH, timeout=10
        )
        items = response.json()["items"]
        assert len(items) == 40
        assert_newest_first(items)


def test_stalled_counts_requests_held_by_a_hang() -> None:
    with Simulator(projects=1, sessions_per_project=3, seed=1) as sim:
        sim.hang_next(1, seconds=30)
        pid = sim.project_ids[0]
        errors: list[BaseException] = []

        def request() -> None:
            try:
                httpx.get(
                    f"{sim.base_url}/api/v1/chat",
                    params={"project_id": pid},
                    headers={"Authorization": f"Bearer {DEFAULT_API_KEY}"},
                    timeout=60,
                )
            except httpx.HTTPError as exc:  # the server stopping ends the hang
                errors.append(exc)

        thread = threading.Thread(target=request, daemon=True)
        thread.start()
        wait_for(lambda: sim.stalled > 0, 30, "the request to be held")
        assert sim.stalled == 1
        assert sim.request_count == 0  # held, not yet answered
    thread.join(30)
    assert sim.stalled == 0
