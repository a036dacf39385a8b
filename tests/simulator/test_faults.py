"""simulator.faults: faults injected once or at configured rates, aimed at either endpoint,
seeded and reproducible; malformed items and endless listings."""

from __future__ import annotations

import dataclasses
import json
import math
import threading
from typing import Any

import httpx
import pytest

from exporter.simulator import (
    CHAT_PATH,
    DEFAULT_API_KEY,
    ENDPOINTS,
    MALFORMED_KINDS,
    ORGANIZATION_ID,
    PROJECTS_PATH,
    FaultConfig,
    Simulator,
)
from tests.helpers import wait_for
from tests.simulator.helpers import AUTH, list_all, list_projects

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
    assert ENDPOINTS == ("chat", "projects", "session")


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
