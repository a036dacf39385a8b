"""simulator.model: the synthetic data: items in the API's shape, timestamps, seeded
generation and evolution."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import httpx

import exporter.simulator as simulator_module
from exporter.simulator import CHAT_PATH, SHARED_ACCESS, Simulator
from tests.simulator.helpers import AUTH, run_status, stamp, style


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
    for text in stamps:
        parsed = datetime.fromisoformat(text.removesuffix("Z"))
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
