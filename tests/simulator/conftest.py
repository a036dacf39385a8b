"""Fixtures of the simulator tests: simulators with sessions or with an organization's
projects, and clients of them."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from exporter.simulator import Simulator
from tests.simulator.helpers import api_client


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(projects=2, sessions_per_project=120, seed=7) as simulator:
        yield simulator


@pytest.fixture
def client(sim: Simulator) -> Iterator[httpx.Client]:
    with api_client(sim) as c:
        yield c


@pytest.fixture(params=["created", "newest-first"])
def any_order(request: pytest.FixtureRequest) -> Iterator[Simulator]:
    with Simulator(projects=1, sessions_per_project=120, seed=7, order=request.param) as simulator:
        yield simulator


@pytest.fixture
def any_client(any_order: Simulator) -> Iterator[httpx.Client]:
    with api_client(any_order) as c:
        yield c


@pytest.fixture
def small() -> Iterator[Simulator]:
    """30 sessions newest first, listed in 3 pages of 10 by the mid-listing tests."""
    with Simulator(projects=1, sessions_per_project=30, seed=9, order="newest-first") as simulator:
        yield simulator


# ----------------------------------------------------------------- projects (/api/v2/projects)


@pytest.fixture
def org_sim() -> Iterator[Simulator]:
    """12 projects without sessions: enough for scratch names and several pages."""
    with Simulator(projects=12, sessions_per_project=0, seed=3) as simulator:
        yield simulator


@pytest.fixture
def org_client(org_sim: Simulator) -> Iterator[httpx.Client]:
    with api_client(org_sim) as c:
        yield c
