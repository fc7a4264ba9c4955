"""The plain PyTorch dataset (`bigearth.input.torchdata.ShardDataset`) through real DataLoaders: every pair once across
workers and ranks, the shards' exact values in torchgeo-style samples, seeded shuffling, clear errors."""

from __future__ import annotations

import re
import types
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import bigearth.input.loader
import bigearth.input.torchdata
import bigearth.shards.format
from bigearth.core import labels as lab
from bigearth.core.bands import BAND_SETS, BANDS, GROUPS, STATS
from bigearth.core.storage import open_fs
from bigearth.input.raydata import decode_batch
from bigearth.input.torchdata import ShardDataset
from bigearth.shards.format import Manifest, ShardEntry, ShardFormatError, ShardWriter
from helpers import REPO


def _reshard(src: Path, out: Path, rows_per_file: int) -> Path:
    """`src`'s pairs rewritten by the platform's writer into files of `rows_per_file` pairs (no Ray): enough files
    to deal to 2 ranks x 2 workers."""
    fs, root = open_fs(str(src))
    m = Manifest.load(fs, root)
    shards: list[ShardEntry] = []
    for split in sorted(m.splits):
        table = pa.concat_tables(pq.read_table(p) for p in m.shard_paths(root, split))
        for k, start in enumerate(range(0, table.num_rows, rows_per_file)):
            rel = f"{split}/part-{k:05d}.parquet"
            (out / split).mkdir(parents=True, exist_ok=True)
            writer = ShardWriter(fs, str(out / rel))
            for row in table.slice(start, rows_per_file).to_pylist():
                writer.write(row)
            writer.close()
            shards.append(ShardEntry(rel, split, writer.rows))
    Manifest(
        pairs=m.pairs, splits=m.splits, shards=shards, excluded=m.excluded, quarantined=m.quarantined, source=m.source
    ).save(fs, str(out))
    return out


@pytest.fixture(scope="module")
def fine(shards_v2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _reshard(shards_v2, tmp_path_factory.mktemp("torchdata") / "fine", rows_per_file=5)


def _split(shards: Path, split: str) -> tuple[list[str], dict[str, dict[str, np.ndarray]]]:
    """An independent read of a split: pyarrow over the manifest's files, decoded by
    `bigearth.input.raydata.decode_batch`;
    (patch ids in file order, per patch id its arrays)."""
    m = Manifest.load(*open_fs(str(shards)))
    ids: list[str] = []
    by_id: dict[str, dict[str, np.ndarray]] = {}
    for path in m.shard_paths(str(shards), split):
        table = pq.read_table(path)
        batch = decode_batch(table)
        for i, (pid, names) in enumerate(zip(batch["patch_id"], table.column("labels").to_pylist(), strict=True)):
            ids.append(pid)
            by_id[pid] = {k: v[i] for k, v in batch.items() if k != "patch_id"}
            by_id[pid]["from_names"] = lab.encode(names)
    return ids, by_id


def _ids(ds: ShardDataset, **loader: object) -> list[str]:
    return [pid for batch in DataLoader(ds, **loader) for pid in batch["patch_id"]]  # type: ignore[arg-type]


@pytest.mark.parametrize("workers", [0, 2])
def test_every_pair_once_through_a_dataloader(fine: Path, workers: int) -> None:
    ids, _ = _split(fine, "train")
    ds = ShardDataset(fine, "train", shuffle=True, seed=1)
    assert len(ds.files) >= 4 and len(ds) == ds.num_samples == len(ids)
    seen = []
    for batch in DataLoader(ds, batch_size=8, num_workers=workers):
        n = len(batch["patch_id"])
        assert set(batch) == {"image", "label", "patch_id"}
        assert batch["image"].shape == (n, 14, 120, 120) and batch["image"].dtype == torch.float32
        assert batch["label"].shape == (n, 19) and batch["label"].dtype == torch.float32
        assert all(isinstance(p, str) for p in batch["patch_id"])
        seen += batch["patch_id"]
    assert sorted(seen) == sorted(ids) and len(set(seen)) == len(seen)


def test_ranks_times_workers_partition_the_split(fine: Path) -> None:
    ids, _ = _split(fine, "train")
    for epoch in (0, 1):
        per_rank = []
        for rank in (0, 1):
            ds = ShardDataset(fine, "train", shuffle=True, seed=3, rank=rank, world_size=2)
            ds.set_epoch(epoch)
            batches = list(DataLoader(ds, batch_size=4, num_workers=2))
            got = [pid for b in batches for pid in b["patch_id"]]
            assert len(got) == ds.num_samples == len(ds)
            assert len(batches) >= ds.min_steps(4) >= 1  # every rank can run the same number of steps
            per_rank.append(got)
        union = Counter(per_rank[0] + per_rank[1])
        assert max(union.values()) == 1 and sorted(union) == sorted(ids)
        assert not set(per_rank[0]) & set(per_rank[1])
    shares = ds.shares()
    assert sorted(shares[0] + shares[1]) == list(range(len(ds.files)))


def test_files_are_dealt_by_rank_then_worker(fine: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unshuffled, rank r worker w of W reads exactly files[r::world][w::W] (get_worker_info simulated, in order)."""
    m = Manifest.load(*open_fs(str(fine)))
    files = m.shard_paths(str(fine), "validation")
    for rank in (0, 1):
        ds = ShardDataset(fine, "validation", rank=rank, world_size=2)
        for worker in (0, 1):
            info = types.SimpleNamespace(id=worker, num_workers=2)
            monkeypatch.setattr(bigearth.input.torchdata, "get_worker_info", lambda info=info: info)
            got = [s["patch_id"] for s in ds]
            expected = [
                pid for p in files[rank::2][worker::2] for pid in pq.read_table(p).column("patch_id").to_pylist()
            ]
            assert got == expected


def test_values_are_the_shards_and_the_stem_resampling(fine: Path) -> None:
    """`image` against an independent computation: the shards decoded by
    `bigearth.input.raydata`, 10 m bands as they are,
    20 m / 60 m bands resampled by F.interpolate (bilinear, align_corners=False), channels in band-set order."""
    _, by_id = _split(fine, "validation")
    ds = ShardDataset(fine, "validation", native=True)
    order = BAND_SETS["s1s2-12"]
    assert order[:2] == ("VV", "VH") and len(order) == 14
    samples = list(ds)
    assert len(samples) == len(by_id)
    for s in samples[:12]:
        want = by_id[s["patch_id"]]
        assert np.array_equal(s["label"].numpy(), want["labels"])
        assert np.array_equal(s["label"].numpy(), want["from_names"])  # the row's class names, multi-hot
        for group in ("s1", "s2_10m", "s2_20m", "s2_60m"):  # native=True: the platform's batch groups, exact
            assert s[group].dtype == torch.from_numpy(want[group]).dtype
            assert np.array_equal(s[group].numpy(), want[group]), group
        for c, name in enumerate(order):
            group = next(g for g, names in GROUPS.items() if name in names)
            raw = torch.from_numpy(want[group][GROUPS[group].index(name)].astype(np.float32))
            if BANDS[name].size == 120:
                assert torch.equal(s["image"][c], raw), name  # raw DN / dB, bit for bit
            else:
                up = F.interpolate(raw[None, None], size=(120, 120), mode="bilinear", align_corners=False)[0, 0]
                assert torch.allclose(s["image"][c], up, rtol=0, atol=1e-3), name
    batch = next(iter(DataLoader(ds, batch_size=4, num_workers=0)))  # native groups collate as the loader's batches
    assert batch["s2_20m"].shape == (4, 6, 60, 60) and batch["s2_20m"].dtype == torch.uint16
    assert batch["s1"].dtype == torch.float32 and batch["s2_60m"].shape == (4, 2, 20, 20)


def test_band_lists_normalisation_and_transforms(fine: Path) -> None:
    plain = {s["patch_id"]: s for s in ShardDataset(fine, "validation")}
    rgb = list(ShardDataset(fine, "validation", bands=["B04", "B03", "B02"]))
    index = {b: i for i, b in enumerate(BAND_SETS["s1s2-12"])}
    for s in rgb[:5]:
        assert s["image"].shape == (3, 120, 120)
        assert torch.equal(s["image"], plain[s["patch_id"]]["image"][[index["B04"], index["B03"], index["B02"]]])
    normed = list(ShardDataset(fine, "validation", normalize=True, stats="v2"))
    for s in normed[:5]:
        raw = plain[s["patch_id"]]["image"]
        mean = torch.tensor([STATS["v2"][b][0] for b in BAND_SETS["s1s2-12"]]).view(-1, 1, 1)
        std = torch.tensor([STATS["v2"][b][1] for b in BAND_SETS["s1s2-12"]]).view(-1, 1, 1)
        assert torch.allclose(s["image"], (raw - mean) / std, atol=1e-5)
    s2 = list(ShardDataset(fine, "validation", bands="s2-10"))
    assert s2[0]["image"].shape == (10, 120, 120)

    def flip(sample: dict) -> dict:  # type: ignore[type-arg]
        return {**sample, "image": sample["image"].flip(-1), "seen": True}

    flipped = list(ShardDataset(fine, "validation", transforms=flip))
    assert all(s["seen"] for s in flipped)
    assert torch.equal(flipped[0]["image"], plain[flipped[0]["patch_id"]]["image"].flip(-1))


def test_shuffle_is_seeded_and_changes_by_epoch(fine: Path) -> None:
    ids, _ = _split(fine, "train")
    assert _ids(ShardDataset(fine, "train"), batch_size=8) == ids  # unshuffled: the manifest's file order
    ds = ShardDataset(fine, "train", shuffle=True, seed=11)
    first = _ids(ds, batch_size=8, num_workers=2)
    assert first == _ids(ShardDataset(fine, "train", shuffle=True, seed=11), batch_size=8, num_workers=2)
    assert first != ids and sorted(first) == sorted(ids)
    ds.set_epoch(1)
    assert ds.shares() != ds.shares(0)  # another file order
    second = _ids(ds, batch_size=8, num_workers=2)
    assert second != first and sorted(second) == sorted(ids)
    assert _ids(ShardDataset(fine, "train", shuffle=True, seed=12), batch_size=8, num_workers=2) != first
    # a shuffle buffer mixes rows across files: reproducible, every pair once
    mixed = ShardDataset(fine, "train", shuffle=True, seed=11, shuffle_buffer=16)
    once = _ids(mixed, batch_size=8)
    unbuffered = _ids(ShardDataset(fine, "train", shuffle=True, seed=11), batch_size=8)
    assert once == _ids(mixed, batch_size=8) and once != unbuffered and sorted(once) == sorted(ids)
    with pytest.raises(ValueError, match="shuffle=True"):
        ShardDataset(fine, "train", shuffle_buffer=16)


def test_rows_and_row_groups_of_a_file_are_shuffled(
    shards_v2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files of several row groups (row groups of 4 pairs here): every row once, row groups and rows permuted."""
    monkeypatch.setattr(bigearth.shards.format, "ROW_GROUP_PAIRS", 4)
    monkeypatch.setattr(bigearth.input.loader, "ROW_GROUP_PAIRS", 4)
    multi = _reshard(shards_v2, tmp_path / "multi", rows_per_file=30)
    ids, _ = _split(multi, "train")
    assert pq.ParquetFile(Manifest.load(*open_fs(str(multi))).shard_paths(str(multi), "train")[0]).num_row_groups > 2
    assert [s["patch_id"] for s in ShardDataset(multi, "train")] == ids
    got = [s["patch_id"] for s in ShardDataset(multi, "train", shuffle=True, seed=0)]
    assert sorted(got) == sorted(ids) and got != ids
    # the first file read comes whole; each of its row groups whole, the row groups and their rows permuted
    paths = Manifest.load(*open_fs(str(multi))).shard_paths(str(multi), "train")
    files = [pq.read_table(p).column("patch_id").to_pylist() for p in paths]
    first = next(f for f in files if got[0] in f)
    read = got[: len(first)]
    assert sorted(read) == sorted(first)
    written = [first[i : i + 4] for i in range(0, len(first), 4)]
    at = {pid: k for k, pid in enumerate(read)}
    spans = [sorted(at[pid] for pid in g) for g in written]
    assert all(span == list(range(span[0], span[0] + len(span))) for span in spans)  # a row group stays together
    assert [s[0] for s in spans] != sorted(s[0] for s in spans)  # row groups in another order
    assert any([read[k] for k in span] != g for span, g in zip(spans, written, strict=True) if len(g) > 1)  # rows
    monkeypatch.setattr(bigearth.shards.format, "ROW_GROUP_PAIRS", 128)  # the manifest now implies other row groups
    stale = ShardDataset(multi, "train")
    with pytest.raises(ShardFormatError, match=r"expected 1 row group\(s\) of \[30\] rows"):
        list(stale)


def test_rank_and_world_from_the_environment(fine: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    ds = ShardDataset(fine, "train")
    assert (ds.rank, ds.world_size) == (1, 2)
    assert (
        ds.num_samples
        == len({x["patch_id"] for x in ds})
        < len({x["patch_id"] for x in ShardDataset(fine, "train", rank=0, world_size=1)})
    )
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert (ShardDataset(fine, "train").rank, ShardDataset(fine, "train").world_size) == (0, 1)
    with pytest.raises(ValueError, match="rank 2 outside a world of 2"):
        ShardDataset(fine, "train", rank=2, world_size=2)


def test_errors_name_what_is_missing(fine: Path, shards_v2: Path, tmp_path: Path) -> None:
    with pytest.raises(ShardFormatError, match=r"no shards for split 'nope'.*\['test', 'train', 'validation'\]"):
        ShardDataset(fine, "nope")
    with pytest.raises(ShardFormatError, match=re.escape(str(tmp_path / "manifest.json")) + " not found"):
        ShardDataset(tmp_path, "train")
    with pytest.raises(ShardFormatError, match=r"nomenclature 43.*v2 archive"):
        ShardDataset(fine, "train", nomenclature=43)
    n = len(ShardDataset(shards_v2, "validation").files)
    with pytest.raises(ValueError, match=f"has {n} shard file.*{n + 1} ranks"):
        ShardDataset(shards_v2, "validation", rank=0, world_size=n + 1)


def test_an_idle_worker_warns(shards_v2: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = ShardDataset(shards_v2, "validation")
    n = len(ds.files)
    worker = types.SimpleNamespace(id=n, num_workers=n + 1)
    monkeypatch.setattr(bigearth.input.torchdata, "get_worker_info", lambda: worker)
    with pytest.warns(UserWarning, match=f"has {n} shard file.*worker {n} gets none"):
        assert list(ds) == []


def test_the_docs_example_runs(fine: Path) -> None:
    text = (REPO / "docs" / "pytorch.md").read_text()
    block = re.search(r"```python\n(.*?)```", text, re.S)
    assert block is not None and "/tmp/reben-shards" in block.group(1)
    namespace: dict[str, object] = {}
    exec(compile(block.group(1).replace("/tmp/reben-shards", str(fine)), "docs/pytorch.md", "exec"), namespace)
    assert namespace["seen"] == len(_split(fine, "train")[0]) * 2  # two epochs of every pair
