"""The `mask` batch key: reference maps' CLC codes -> per-pixel 19-class targets, in `decode_batch(maps=True)` and
`RowGroupLoader(maps=True)` (a pair without a map: all IGNORE_INDEX; an unknown code names its patch; shards
without the column name the shard set and how to ingest maps)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bigearth.core.labels import CLC_LUT_19, IGNORE_INDEX, UnknownLabelError
from bigearth.input.loader import RowGroupLoader, row_groups
from bigearth.shards.decode import NoReferenceMaps, decode_batch, groups_for, map_targets
from bigearth.shards.format import ShardFormatError
from helpers import ingest_in_process


@pytest.fixture(scope="module")
def map_shards(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """(shard set with reference maps, one pair's map deleted before the ingest; one without maps; that pair)."""
    from bigearth.archive.layouts import layout_for
    from bigearth.synth.archive import synthesize

    root = tmp_path_factory.mktemp("masks")
    src, plain = root / "src", root / "plain"
    synthesize(str(src), layout="v2", pairs=24, seed=7, progress=False, workers=1, reference_maps=True)
    synthesize(str(plain), layout="v2", pairs=6, seed=7, progress=False, workers=1)
    rows = pq.read_table(src / "metadata.parquet").to_pylist()
    gone = rows[2]["patch_id"]
    Path(layout_for("v2", str(src)).reference_map(gone)).unlink()
    ingest_in_process(src, root / "maps", shard_size=10)
    ingest_in_process(plain, root / "nomaps", shard_size=10)
    return root / "maps", root / "nomaps", gone


def _expected(shards: Path) -> dict[str, np.ndarray]:
    """patch id -> its targets, computed here pair by pair (a null map: all IGNORE_INDEX)."""
    t = pa.concat_tables(
        [
            pq.read_table(p, columns=["patch_id", "reference_map"])
            for p in shards.rglob("*.parquet")
            if "reference_map" in pq.read_schema(p).names
        ]
    )
    out = {}
    for r in t.to_pylist():
        if r["reference_map"] is None:
            out[r["patch_id"]] = np.full((120, 120), IGNORE_INDEX, np.uint8)
        else:
            out[r["patch_id"]] = CLC_LUT_19[np.frombuffer(r["reference_map"], "<u2").reshape(120, 120)]
    return out


def test_decode_batch_maps_every_pixel_and_a_missing_map_is_ignored(map_shards: tuple[Path, Path, str]) -> None:
    shards, _, gone = map_shards
    expected = _expected(shards)
    assert gone in expected and len(expected) >= 15
    seen = 0
    for path in sorted(shards.rglob("part-*.parquet")):
        batch = decode_batch(pq.read_table(path), groups_for("s2-10"), maps=True)
        assert batch["mask"].dtype == np.uint8 and batch["mask"].shape == (len(batch["patch_id"]), 120, 120)
        for pid, m in zip(batch["patch_id"], batch["mask"], strict=True):
            assert np.array_equal(m, expected[pid])
            seen += 1
    assert seen == len(expected)
    assert (expected[gone] == IGNORE_INDEX).all()
    assert all((m < 19).all() for pid, m in expected.items() if pid != gone)  # synthetic maps: classes only
    assert "mask" not in decode_batch(pq.read_table(next(shards.rglob("part-*.parquet"))), groups_for("s1"))


def test_an_unknown_code_names_its_patch() -> None:
    codes = np.full((3, 120, 120), 311, "<u2")
    codes[1, 5, 7] = 777
    table = pa.table(
        {
            "patch_id": ["a", "b", "c"],
            "reference_map": pa.array([c.tobytes() for c in codes], pa.binary(28800)),
        }
    )
    with pytest.raises(UnknownLabelError, match=r"shard set X: reference map of b: unknown CLC code\(s\) \[777\]"):
        map_targets(table, "shard set X")
    ok = map_targets(table.slice(2), "shard set X")
    assert ok.shape == (1, 120, 120) and (ok == CLC_LUT_19[311]).all()


def test_the_loader_gathers_masks_with_their_pairs(map_shards: tuple[Path, Path, str]) -> None:
    shards, _, _ = map_shards
    expected = _expected(shards)
    groups = row_groups(str(shards), ["train", "validation", "test"])
    got: dict[str, np.ndarray] = {}
    for batch in RowGroupLoader(groups, 5, bands="s2-10", shuffle_buffer=20, seed=(0, 1), maps=True):
        assert batch["mask"].shape == (len(batch["patch_id"]), 120, 120) and str(batch["mask"].dtype) == "torch.uint8"
        got.update({pid: m.numpy() for pid, m in zip(batch["patch_id"], batch["mask"], strict=True)})
    assert got.keys() == expected.keys() and all(np.array_equal(got[k], expected[k]) for k in got)
    assert "mask" not in next(iter(RowGroupLoader(groups, 5, bands="s1")))


def test_shards_without_maps_name_the_shard_set_and_the_ingest(map_shards: tuple[Path, Path, str]) -> None:
    _, plain, _ = map_shards
    groups = row_groups(str(plain), "train")
    with pytest.raises(NoReferenceMaps, match=rf"shard set {plain} .*no reference_map column.*Reference_Maps"):
        next(iter(RowGroupLoader(groups, 4, bands="s1", maps=True)))
    assert issubclass(NoReferenceMaps, ShardFormatError)
    with pytest.raises(NoReferenceMaps, match="rows of X: the shards have no reference_map column"):
        decode_batch(pq.read_table(next(plain.rglob("part-*.parquet"))), groups_for("s1"), maps=True, where="rows of X")


def test_a_decoded_group_keeps_its_mask_not_the_raw_maps(map_shards: tuple[Path, Path, str]) -> None:
    """The shuffle buffer holds each group's uint8 mask, not also its uint16 `reference_map` column (twice the
    bytes) beside it."""
    from bigearth.input.loader import _Decoded

    shards, _, _ = map_shards
    path = next(p for p in sorted(shards.rglob("part-*.parquet")) if "reference_map" in pq.read_schema(p).names)
    table = pq.read_table(path)
    d = _Decoded(table, groups_for("s2-10"), 19, maps=True)
    assert "reference_map" not in d.table.column_names and d.mask is not None
    assert np.array_equal(d.mask, map_targets(table))
    expected = pq.read_table(path, columns=["B02"]).column("B02").to_pylist()[0]
    assert np.array_equal(d.bands["B02"][0].reshape(-1), np.frombuffer(expected, "<u2"))  # the views still valid


def test_mask_memory_comes_from_the_pool_and_kept_masks_are_never_overwritten(
    map_shards: tuple[Path, Path, str],
) -> None:
    from bigearth.input.buffers import BatchBuffers

    shards, _, _ = map_shards
    expected = _expected(shards)
    groups = row_groups(str(shards), ["train", "validation", "test"]) * 3
    buffers = BatchBuffers(keep=8)
    kept = list(RowGroupLoader(groups, 4, bands="s2-10", shuffle_buffer=8, seed=1, maps=True, buffers=buffers))
    for batch in kept:  # kept batches: their masks were never lent to a later batch
        for pid, m in zip(batch["patch_id"], batch["mask"], strict=True):
            assert np.array_equal(m.numpy(), expected[pid])
    del kept
    addresses, full = set(), 0
    for batch in RowGroupLoader(groups, 4, bands="s2-10", shuffle_buffer=8, seed=2, maps=True, buffers=buffers):
        for pid, m in zip(batch["patch_id"], batch["mask"], strict=True):
            assert np.array_equal(m.numpy(), expected[pid])
        if len(batch["patch_id"]) == 4:
            addresses.add(batch["mask"].data_ptr())
            full += 1
    pooled = {a.ctypes.data for (shape, _), arrays in buffers._arrays.items() if len(shape) == 3 for a in arrays}
    assert full > 10 and len(addresses) <= 8 and addresses <= pooled
