"""simulator.paging: page tokens, ``page_size`` as FastAPI parses it, pages as the API
renders them."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.simulator import CHAT_PATH, Simulator
from tests.simulator.helpers import AUTH, list_all

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
