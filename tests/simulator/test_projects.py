"""simulator.projects: ``GET /api/v2/projects``, project names, and the registry of
projects added and removed while it serves."""

from __future__ import annotations

import random
import threading
import uuid
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from exporter.simulator import (
    CHAT_PATH,
    DEFAULT_API_KEY,
    DEFAULT_PAGE_SIZE,
    HISTORY_DAYS,
    ORGANIZATION_ID,
    PROJECTS_PATH,
    Simulator,
)
from tests.simulator.helpers import AUTH, list_all, list_projects


def test_add_project_twice_is_an_error(sim: Simulator) -> None:
    sim.add_project("p")
    with pytest.raises(ValueError):
        sim.add_project("p")
    assert sim.sessions("p") == []
    with pytest.raises(KeyError):
        sim.sessions("missing")


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
