"""The worker-side training input's plan as a Ray Dataset (`bigearth.input.loader.open_row_groups`); the loader itself
is tested without Ray in tests/unit/test_loader.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from bigearth.input.loader import open_row_groups, plan_of, row_groups
from bigearth.shards.format import ShardFormatError
from helpers import ingest_in_process


@pytest.fixture(scope="module")
def fine(synth_v2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic v2 archive in shards of 6 pairs (written without Ray)."""
    out = tmp_path_factory.mktemp("fine") / "v2"
    ingest_in_process(synth_v2, out, shard_size=6)
    return out


@pytest.mark.usefixtures("ray_local")
def test_the_plan_travels_as_a_ray_dataset(fine: Path) -> None:
    ds = open_row_groups(str(fine), ["train", "validation"])
    assert plan_of(ds) == row_groups(str(fine), ["train", "validation"])
    with pytest.raises(ShardFormatError, match="no shards for split 'val'"):
        row_groups(str(fine), "val")
