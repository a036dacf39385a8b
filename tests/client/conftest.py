"""Fixtures of the client tests: a hostile server on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.hostile import Hostile, answer, page, serve


@pytest.fixture
def hostile() -> Iterator[Hostile]:
    yield from serve(lambda request: answer(200, page([])))
