"""The unit tier's guard (a unit test that leaves Ray initialised, or imports a module that starts it, fails) and
its shard set written without Ray."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import ingest_in_process


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


@pytest.fixture(scope="session")
def shards_v2(synth_v2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The unit tier's `shards_v2`: the synthetic v2 archive in shards of 30 pairs, written without Ray (the same
    shard set as the integration tier's, which a Ray ingest writes)."""
    out = tmp_path_factory.mktemp("shards") / "v2"
    ingest_in_process(synth_v2, out, shard_size=30)
    return out
