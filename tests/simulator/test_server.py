"""simulator.server: the HTTP face: paths, methods, bearer auth, keep-alive."""

from __future__ import annotations

import http.client
import json

import httpx
import pytest

from exporter.simulator import CHAT_PATH, Simulator
from tests.simulator.helpers import AUTH


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


def test_unknown_path_is_404(client: httpx.Client) -> None:
    response = client.get("/api/v1/nope")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found"}


def test_other_methods_are_405(sim: Simulator, client: httpx.Client) -> None:
    response = client.post(CHAT_PATH, params={"project_id": sim.project_ids[0]}, json={"x": 1})
    assert response.status_code == 405
    assert response.json() == {"detail": "Method Not Allowed"}
