"""simulator.chat: ``GET /api/v1/chat`` as LlamaCloud answers it: project-scoped keys,
access, organization, the page cache."""

from __future__ import annotations

import httpx

from exporter.simulator import CHAT_PATH, DEFAULT_API_KEY, Simulator
from tests.simulator.helpers import AUTH


def test_missing_project_id_is_422(client: httpx.Client) -> None:
    response = client.get(CHAT_PATH)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "project_id"]


def test_unknown_project_is_404(client: httpx.Client) -> None:
    response = client.get(CHAT_PATH, params={"project_id": "00000000-0000-0000-0000-000000000000"})
    assert response.status_code == 404
    assert "not found" in response.json()["detail"]


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
