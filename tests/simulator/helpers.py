"""What the simulator tests share: listings followed to the end over HTTP, and what an item
says."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import httpx

from exporter.simulator import CHAT_PATH, DEFAULT_API_KEY, PROJECTS_PATH, Simulator

AUTH = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}


def api_client(sim: Simulator) -> httpx.Client:
    """A client of ``sim`` as the exporter's is: the default key, a generous timeout."""
    return httpx.Client(base_url=sim.base_url, headers=AUTH, timeout=10.0)


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


def list_projects(
    client: httpx.Client, max_pages: int = 100, **params: Any
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Follows next_page_token through GET /api/v2/projects; returns (items, raw pages)."""
    return follow(client, PROJECTS_PATH, params, max_pages)
