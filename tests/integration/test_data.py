"""Training input through Ray Data: a split as a Ray Dataset, decoded batches, band subsets, 43 classes of v1 shards,
stats (the pure tests: tests/unit/test_data.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from bigearth.core import labels as lab
from bigearth.core.bands import BANDS
from bigearth.core.storage import open_fs
from bigearth.ingest.job import ingest
from bigearth.input.raydata import iter_torch, open_split
from bigearth.input.stats import band_stats
from bigearth.models.stem import InputStem
from bigearth.shards.format import Manifest
from helpers import assert_batch_holds_rows

pytestmark = pytest.mark.usefixtures("ray_local")


def _split_rows(shards: Path, split: str) -> dict[str, dict]:  # type: ignore[type-arg]
    m = Manifest.load(*open_fs(str(shards)))
    return {r["patch_id"]: r for p in m.shard_paths(str(shards), split) for r in pq.read_table(p).to_pylist()}


def test_torch_batches_have_the_documented_shapes_and_values(shards_v2: Path) -> None:
    rows = _split_rows(shards_v2, "train")
    seen = []
    for batch in iter_torch(open_split(str(shards_v2), "train"), batch_size=16, local_shuffle_buffer_size=32):
        n = len(batch["patch_id"])
        assert batch["s1"].shape == (n, 2, 120, 120) and batch["s1"].dtype == torch.float32
        assert batch["s2_10m"].shape == (n, 4, 120, 120) and batch["s2_10m"].dtype == torch.uint16
        assert batch["s2_20m"].shape == (n, 6, 60, 60) and batch["s2_60m"].shape == (n, 2, 20, 20)
        assert batch["labels"].shape == (n, 19) and batch["labels"].dtype == torch.float32
        assert_batch_holds_rows(batch, rows)
        seen.extend(batch["patch_id"])
    assert sorted(seen) == sorted(rows)  # each train pair exactly once per epoch


def test_file_shuffling_changes_order_between_epochs(shards_v2: Path) -> None:
    ds = open_split(str(shards_v2), "train")
    n_files = sum(1 for s in Manifest.load(*open_fs(str(shards_v2))).shards if s.split == "train")
    assert n_files >= 2
    # With k files an epoch repeats the previous order with probability 1/k!; 12 epochs make a false failure
    # (every epoch in the same order) at most 2**-11 likely, while a missing shuffle fails every time.
    orders = {tuple(pid for b in iter_torch(ds, 64) for pid in b["patch_id"]) for _ in range(12)}
    assert len(orders) > 1 and len({frozenset(o) for o in orders}) == 1


@pytest.mark.parametrize(
    ("bands", "groups"),
    [
        ("s1", {"s1"}),
        ("s2-10", {"s2_10m", "s2_20m"}),
        ("s2-12", {"s2_10m", "s2_20m", "s2_60m"}),
        ("s1s2-12", {"s1", "s2_10m", "s2_20m", "s2_60m"}),
    ],
)
def test_band_subsets_read_only_what_they_need(shards_v2: Path, bands: str, groups: set[str]) -> None:
    ds = open_split(str(shards_v2), "validation", bands=bands)
    batch = next(iter(iter_torch(ds, 8)))
    assert set(batch) == groups | {"labels", "patch_id"}
    stem = InputStem(bands)
    x = stem(batch)
    assert x.shape == (len(batch["patch_id"]), stem.in_chans, 120, 120) and torch.isfinite(x).all()


def test_43_class_labels_from_v1_shards(synth_v1: Path, tmp_path: Path) -> None:
    out = tmp_path / "v1"
    ingest(str(synth_v1), str(out), lists=str(synth_v1 / "lists"), shard_size=200)
    batch = next(iter(iter_torch(open_split(str(out), "train", nomenclature=43), 8)))
    assert batch["labels"].shape[1] == 43
    rows = _split_rows(out, "train")
    for i, pid in enumerate(batch["patch_id"]):
        assert lab.decode(batch["labels"][i].numpy(), 43) == rows[pid]["labels43"]


def test_stats_match_numpy(shards_v2: Path) -> None:
    stats = band_stats(str(shards_v2), "train")
    rows = _split_rows(shards_v2, "train")
    for name in ("B01", "B08", "VV"):
        b = BANDS[name]
        values = np.stack([np.frombuffer(r[name], dtype=b.dtype) for r in rows.values()]).astype(np.float64)
        assert stats[name]["count"] == values.size
        assert stats[name]["mean"] == pytest.approx(values.mean(), rel=1e-9)
        assert stats[name]["std"] == pytest.approx(values.std(), rel=1e-6)
