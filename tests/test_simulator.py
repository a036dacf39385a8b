"""The simulated LlamaCloud API, driven over real HTTP the way the exporter's client uses it."""

from __future__ import annotations

import http.client
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.simulator import CHAT_PATH, DEFAULT_API_KEY, RequestRecord, Simulator, main

REPO = Path(__file__).resolve().parents[1]
AUTH = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}


@pytest.fixture
def sim() -> Iterator[Simulator]:
    simulator = Simulator(projects=2, sessions_per_project=120, seed=7)
    simulator.start()
    try:
        yield simulator
    finally:
        simulator.stop()


@pytest.fixture
def client(sim: Simulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.base_url, headers=AUTH, timeout=10.0) as c:
        yield c


def list_all(
    client: httpx.Client, project_id: str, page_size: int | None = None, max_pages: int = 1000
) -> tuple[list[Any], list[dict[str, Any]]]:
    """Follows next_page_token to the end; returns (items, raw pages)."""
    items: list[Any] = []
    pages: list[dict[str, Any]] = []
    params: dict[str, Any] = {"project_id": project_id}
    if page_size is not None:
        params["page_size"] = page_size
    for _ in range(max_pages):
        response = client.get(CHAT_PATH, params=params)
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
        assert isinstance(item["shared_access"], bool)
        assert item["index_ids"] is None or all(i.startswith("idx-") for i in item["index_ids"])
        meta = item["job_metadata"]
        if meta is not None:
            assert isinstance(meta["duration_ms"], float)
            assert isinstance(meta["total_input_tokens"], int)
            assert isinstance(meta["total_output_tokens"], int)
            assert meta["turns"] >= 1
            assert meta["export_config_ids"] == []


def test_timestamps_come_in_several_iso_styles() -> None:
    sim = Simulator(projects=1, sessions_per_project=300, seed=3)
    stamps = [item["last_updated_at"] for item in sim.sessions(sim.project_ids[0])]
    assert any(s.endswith("Z") for s in stamps)
    assert any(s.endswith("+00:00") for s in stamps)
    assert any(not s.endswith(("Z", "+00:00")) for s in stamps)
    for stamp in stamps:
        parsed = datetime.fromisoformat(stamp.removesuffix("Z"))
        assert parsed.tzinfo in (None, timezone.utc)
        # Synthetic history lies before the simulated clock's start; never the wall clock.
        assert parsed.replace(tzinfo=timezone.utc) <= sim.clock


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
    with Simulator(seed=42) as one, Simulator(seed=42) as two, Simulator(seed=43) as other:
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
        assert after[sid]["last_updated_at"][:19] >= "2026-01-01T00:00:00"
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
        deadline = time.monotonic() + 20
        while sim.sessions(project_id) == before:
            assert time.monotonic() < deadline, "data never evolved"
            time.sleep(0.02)


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


def test_cli_subprocess_serves_until_sigterm() -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    command = [sys.executable, "-m", "exporter.simulator", "--projects", "2", "--sessions", "7"]
    process = subprocess.Popen(
        [*command, "--evolve-every", "0", "--api-key", "llx-cli", "--listen", "127.0.0.1:0"],
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
        project_id = projects[0].removeprefix("project ")
        response = httpx.get(
            url + CHAT_PATH,
            params={"project_id": project_id},
            headers={"Authorization": "Bearer llx-cli"},
            timeout=10,
        )
        assert response.status_code == 200
        assert len(response.json()["items"]) == 7
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
