"""The unit tier's guard: a unit test that leaves Ray initialised (or imports a module that starts it) fails."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest


def _ray_up() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


@pytest.fixture(autouse=True)
def _no_ray() -> Iterator[None]:
    """Fails a unit test that initialised Ray (a Ray the session already had, from another tier, is left alone;
    `make test-unit` runs the tier alone, where nothing else starts one)."""
    before = _ray_up()
    yield
    if not before and _ray_up():
        pytest.fail("a unit test started Ray: unit tests run without Ray (tests/integration is the tier for it)")
