"""The simulator against the official SDK: every page and history it serves passes strict
validation.

``llama-cloud`` (pinned in the test extra) is generated from LlamaCloud's OpenAPI spec. With
``_strict_response_validation=True`` it validates each page against its models
(``ChatListResponse`` in a ``SyncPaginatedCursor``) and raises instead of accepting a field of
the wrong type, so these tests catch the simulator drifting from the real API's shapes. The same
goes for ``GET /api/v2/projects`` (``V2ProjectListResponse``), which project discovery pages
through, and for session histories (``ChatRetrieveResponse``). The exporter itself never imports
the SDK.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import Any

import pytest

from exporter.simulator import (
    CHAT_PATH,
    DEFAULT_API_KEY,
    PROJECTS_PATH,
    SHARED_ACCESS,
    FaultConfig,
    Simulator,
)
from tests.helpers import session

try:
    import llama_cloud
    from llama_cloud import APIResponseValidationError, LlamaCloud
except ImportError:  # pragma: no cover - the test extra installs it
    if os.environ.get("CI"):
        raise
    pytest.skip(
        "llama-cloud is not installed (see the test extra of pyproject.toml)",
        allow_module_level=True,
    )

SDK_VERSION = "2.19.0"
PROJECTS = 4
SESSIONS = 300
PAGE_SIZE = 7
STEPS = 12
ORGANIZATION = "org-fidelity"
# What the SDK's chat.list may send (ChatListParams); anything else would be a surprise.
LIST_PARAMS = {"organization_id", "page_size", "page_token", "project_id"}
# What v2_projects.list may send (V2ProjectListParams).
PROJECT_LIST_PARAMS = {"name", "organization_id", "page_size", "page_token"}
PROJECT_PAGE_SIZE = 3


def client(sim: Simulator, api_key: str = DEFAULT_API_KEY) -> LlamaCloud:
    return LlamaCloud(
        api_key=api_key,
        base_url=sim.base_url,
        max_retries=0,  # no fault is injected: a retry would hide a real failure
        timeout=30,
        _strict_response_validation=True,
    )


def fingerprint(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {item["session_id"]: item["job_metadata"] for item in items}


@pytest.fixture(scope="module", params=["newest-first", "created"])
def evolved(request: pytest.FixtureRequest) -> Iterator[Simulator]:
    """Several projects of a few hundred sessions, evolved so every kind of change shows."""
    sim = Simulator(projects=PROJECTS, sessions_per_project=SESSIONS, seed=17, order=request.param)
    sim.add_project("org-project", organization_id=ORGANIZATION, sessions=SESSIONS)
    before = {pid: fingerprint(sim.sessions(pid)) for pid in sim.project_ids}
    sim.step(STEPS)
    first = sim.project_ids[0]
    items = sim.sessions(first)
    sim.rerun(first, items[-1]["session_id"])
    sim.touch(first, items[-2]["session_id"])
    sim.create_sessions(first, 3)
    # The evolution covered what a real listing holds: re-runs, deletions, new sessions, runs
    # that never happened, failed ones (with and without is_error) and both share settings.
    after = {pid: fingerprint(sim.sessions(pid)) for pid in sim.project_ids}
    assert all(before[pid].keys() - after[pid].keys() for pid in sim.project_ids)  # deleted
    assert all(after[pid].keys() - before[pid].keys() for pid in sim.project_ids)  # created
    assert all(
        any(before[pid][sid] != after[pid][sid] for sid in before[pid].keys() & after[pid].keys())
        for pid in sim.project_ids
    )  # re-run
    everything = [item for pid in sim.project_ids for item in sim.sessions(pid)]
    runs = [item["job_metadata"] for item in everything if item["job_metadata"] is not None]
    assert len(runs) < len(everything)  # never run
    assert any(run.get("is_error") is True for run in runs)
    assert any("is_error" not in run and run["error"] for run in runs)
    assert {item["shared_access"] for item in everything} == set(SHARED_ACCESS)
    assert any(item["index_ids"] is None for item in everything)
    assert any(item["generated_title"] is None for item in everything)
    sim.start("127.0.0.1")
    try:
        yield sim
    finally:
        sim.stop()


def test_the_pinned_sdk_is_installed() -> None:
    assert llama_cloud.__version__ == SDK_VERSION, "the test extra pins llama-cloud"


def test_strict_validation_accepts_every_page(evolved: Simulator) -> None:
    sdk = client(evolved)
    try:
        for project_id in evolved.project_ids:
            expected = evolved.sessions(project_id)
            organization_id = ORGANIZATION if project_id == "org-project" else None
            kwargs: dict[str, Any] = {"project_id": project_id, "page_size": PAGE_SIZE}
            if organization_id:
                kwargs["organization_id"] = organization_id
            evolved.clear_requests()
            pages = list(sdk.chat.list(**kwargs).iter_pages())
            listed = [item for page in pages for item in page.items]
            assert len(listed) == len(expected)
            assert len(pages) == math.ceil(len(expected) / PAGE_SIZE)
            assert [item.session_id for item in listed] == [item["session_id"] for item in expected]
            assert {item.shared_access for item in listed} <= set(SHARED_ACCESS)
            # Every field round-trips: what the SDK parsed is what the simulator holds.
            assert [item.to_dict() for item in listed] == expected
            assert pages[-1].next_page_token is None
            requests = evolved.requests
            assert len(requests) == len(pages)
            assert all(r.path == CHAT_PATH and r.status == 200 for r in requests)
            assert all(set(r.query) <= LIST_PARAMS for r in requests)
            # The SDK pages with the token the simulator issues, under the same name.
            assert all("page_token" in r.query for r in requests[1:])
            assert all(r.query.get("organization_id") == organization_id for r in requests)
    finally:
        sdk.close()


def test_iterating_the_pager_yields_every_session(evolved: Simulator) -> None:
    with client(evolved) as sdk:
        for project_id in evolved.project_ids[:2]:
            ids = [item.session_id for item in sdk.chat.list(project_id=project_id, page_size=50)]
            assert ids == [item["session_id"] for item in evolved.sessions(project_id)]


def test_strict_validation_accepts_every_history() -> None:
    """Every session's history, sessions that ran several times between listings included, and
    the sessions of ``set_sessions``; each round-trips, and its stop events are the runs."""
    with Simulator(projects=1, sessions_per_project=SESSIONS, seed=17, burst=0.7) as sim:
        pid = sim.project_ids[0]
        sim.step(STEPS)
        sim.rerun(pid, sim.sessions(pid)[0]["session_id"], times=3)
        sim.create_sessions(pid, 3)
        sim.set_sessions(
            "set", [session("s1"), session("s2", is_error=None), session("s3", job=None)]
        )
        types: set[str | None] = set()
        with client(sim) as sdk:
            for project_id in (pid, "set"):
                for item in sim.sessions(project_id):
                    got = sdk.chat.retrieve(item["session_id"], project_id=project_id)
                    assert {k: v for k, v in got.to_dict().items() if k != "events"} == item
                    stops = [event for event in got.events if event.type == "stop"]
                    assert [stop.to_dict() for stop in stops] == sim.history(
                        project_id, item["session_id"]
                    )
                    types.update(event.type for event in got.events)
        assert len(types) == 8  # every kind of event the SDK knows
        sim.faults = FaultConfig(malformed_history_share=1.0)
        with client(sim) as sdk, pytest.raises(APIResponseValidationError):
            sdk.chat.retrieve(sim.sessions(pid)[0]["session_id"], project_id=pid)


@pytest.mark.parametrize(
    "change",
    [
        {"shared_access": False},  # what the simulator served before
        {"shared_access": "public"},
        {"session_id": None},
        {"job_metadata": {"total_input_tokens": "lots"}},
    ],
)
def test_strict_validation_has_teeth(sim: Simulator, change: dict[str, Any]) -> None:
    """The checks above mean something: a field of the wrong type, even on a later page, fails."""
    source = Simulator(projects=1, sessions_per_project=3, seed=3)
    good = source.sessions(source.project_ids[0])
    sim.set_sessions("loose", [*good[:2], {**good[2], **change}])
    with client(sim) as sdk, pytest.raises(APIResponseValidationError):
        list(sdk.chat.list(project_id="loose", page_size=2))
    assert len(sim.requests) == 2  # the first page passed


def test_strict_validation_accepts_every_projects_page() -> None:
    """Discovery's listing: every page of every organization, through the SDK's own pager."""
    keys = {"scoped-project": "llx-scoped"}
    with Simulator(projects=11, sessions_per_project=0, seed=17, api_keys=keys) as sim:
        sim.remove_project(sim.project_ids[2])
        sim.add_project(name="scratch-late")
        sim.add_project(organization_id=ORGANIZATION, name="elsewhere")
        sim.add_project(organization_id=ORGANIZATION)
        with client(sim) as sdk:
            for organization_id in (sim.organization_id, ORGANIZATION):
                expected = sim.projects(organization_id)
                sim.clear_requests()
                pager = sdk.v2_projects.list(
                    organization_id=organization_id, page_size=PROJECT_PAGE_SIZE
                )
                pages = list(pager.iter_pages())
                listed = [item for page in pages for item in page.items]
                assert len(pages) == math.ceil(len(expected) / PROJECT_PAGE_SIZE)
                assert [(item.id, item.name) for item in listed] == [
                    (project["id"], project["name"]) for project in expected
                ]
                assert all(item.organization_id == organization_id for item in listed)
                assert [item.is_default for item in listed] == [True] + [False] * (len(listed) - 1)
                assert all(item.created_at and item.created_at.tzinfo for item in listed)
                # Every field round-trips: what the SDK parsed is what the simulator holds.
                assert [item.to_dict(mode="json") for item in listed] == expected
                assert pages[-1].next_page_token is None
                requests = sim.requests
                assert len(requests) == len(pages)
                assert all(r.path == PROJECTS_PATH and r.status == 200 for r in requests)
                assert all(set(r.query) <= PROJECT_LIST_PARAMS for r in requests)
                assert all("page_token" in r.query for r in requests[1:])
            ours = [item.name for item in sdk.v2_projects.list(organization_id=sim.organization_id)]
            assert len(ours) == 12 > PROJECT_PAGE_SIZE * 3
            assert any(name.startswith("scratch-") for name in ours)
            named = sdk.v2_projects.list(organization_id=sim.organization_id, name="scratch-late")
            assert [item.name for item in named] == ["scratch-late"]
        # A project-scoped key needs no organization_id: it lists its own project.
        with client(sim, "llx-scoped") as scoped:
            assert [item.id for item in scoped.v2_projects.list()] == ["scoped-project"]


@pytest.mark.parametrize(
    "change",
    [
        {"name": None},
        {"organization_id": None},
        {"id": 7},
        {"is_default": "sometimes"},
        {"created_at": "yesterday"},
    ],
)
def test_strict_projects_validation_has_teeth(
    monkeypatch: pytest.MonkeyPatch, change: dict[str, Any]
) -> None:
    """The projects checks above mean something: a required field missing or of the wrong
    type fails the listing."""
    from exporter.simulator import projects as projects_module

    render = projects_module._project_dict

    def broken(*args: Any) -> dict[str, Any]:
        item = render(*args)
        for key, value in change.items():
            if value is None:
                del item[key]
            else:
                item[key] = value
        return item

    monkeypatch.setattr(projects_module, "_project_dict", broken)
    with (
        Simulator(projects=2, sessions_per_project=0) as sim,
        client(sim) as sdk,
        pytest.raises(APIResponseValidationError),
    ):
        list(sdk.v2_projects.list(organization_id=sim.organization_id))
