"""Training input without Ray: decoding 43 classes of v2 shards, an unknown split, the input stem."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from bigearth.core.bands import BANDS, GROUPS, STATS
from bigearth.core.storage import open_fs
from bigearth.input.raydata import decode_batch, open_split
from bigearth.models.stem import InputStem
from bigearth.shards.format import Manifest, ShardFormatError


def test_43_classes_from_v2_shards_is_a_clear_error(shards_v2: Path) -> None:
    table = pq.read_table(Manifest.load(*open_fs(str(shards_v2))).shard_paths(str(shards_v2))[0])
    with pytest.raises(ShardFormatError, match="43-class labels exist only in shards ingested from a v1 archive"):
        decode_batch(table, nomenclature=43)


def test_unknown_split_names_what_exists(shards_v2: Path) -> None:
    with pytest.raises(
        ShardFormatError,
        match=r"no shards for split 'val'; the shard set has \['test', 'train', "
        r"'validation'\]",
    ):
        open_split(str(shards_v2), "val")


def test_stem_normalises_resamples_and_orders_channels() -> None:
    g = torch.Generator().manual_seed(0)
    batch = {
        "s1": torch.randn(3, 2, 120, 120, generator=g) * 5 - 12,
        "s2_10m": torch.randint(1, 8000, (3, 4, 120, 120), generator=g).to(torch.uint16),
        "s2_20m": torch.randint(1, 8000, (3, 6, 60, 60), generator=g).to(torch.uint16),
        "s2_60m": torch.randint(1, 8000, (3, 2, 20, 20), generator=g).to(torch.uint16),
    }
    stem = InputStem("s1s2-12", stats="v1")
    x = stem(batch)
    assert stem.bands == (
        "VV",
        "VH",
        "B01",
        "B02",
        "B03",
        "B04",
        "B05",
        "B06",
        "B07",
        "B08",
        "B8A",
        "B09",
        "B11",
        "B12",
    )
    mean, std = STATS["v1"]["VH"]
    assert torch.allclose(x[:, 1], (batch["s1"][:, 1] - mean) / std)
    mean, std = STATS["v1"]["B8A"]  # 20 m band, 4th of s2_20m, bilinearly upsampled
    up = torch.nn.functional.interpolate(batch["s2_20m"][:, 3:4].float(), size=120, mode="bilinear")
    assert torch.allclose(x[:, 10:11], (up - mean) / std, atol=1e-5)
    mean, std = STATS["v1"]["B09"]
    up = torch.nn.functional.interpolate(batch["s2_60m"][:, 1:2].float(), size=120, mode="bilinear")
    assert torch.allclose(x[:, 11:12], (up - mean) / std, atol=1e-5)
    ten = InputStem("s2-10")
    assert ten.bands == ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
    assert ten(batch).shape == (3, 10, 120, 120)
    with pytest.raises(KeyError, match="batch has no 's1' group"):
        InputStem("s1")({k: v for k, v in batch.items() if k != "s1"})
    with pytest.raises(ValueError, match="unknown band set 's3'"):
        InputStem("s3")
    custom = InputStem(["B04", "B03", "B02"], stats={"B04": (0.0, 1.0), "B03": (0.0, 1.0), "B02": (0.0, 1.0)})
    assert torch.equal(custom(batch)[:, 0], batch["s2_10m"][:, 2].float())


def test_stem_orders_every_permutation_of_every_group() -> None:
    """Each output channel is its band, normalised with that band's statistics, whatever the order asked for."""
    import itertools

    g = torch.Generator().manual_seed(1)
    batch = {
        "s1": torch.randn(2, 2, 120, 120, generator=g),
        "s2_10m": torch.randint(1, 8000, (2, 4, 120, 120), generator=g).to(torch.uint16),
        "s2_20m": torch.randint(1, 8000, (2, 6, 60, 60), generator=g).to(torch.uint16),
        "s2_60m": torch.randint(1, 8000, (2, 2, 20, 20), generator=g).to(torch.uint16),
    }
    for group, names in GROUPS.items():
        for order in itertools.permutations(names):  # all of them: 2 + 24 + 720 + 2
            x = InputStem(list(order), stats="v2", size=BANDS[names[0]].size)(batch)
            for c, band in enumerate(order):
                mean, std = STATS["v2"][band]
                expected = (batch[group][:, names.index(band)].float() - mean) / std
                assert torch.allclose(x[:, c], expected), (order, band)
