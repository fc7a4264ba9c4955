"""The Ray Data path's pure parts (`bigearth.input.raybatches`, no Ray): how many row groups a task collates, the
task's seed, packing a batch into one Dataset row and back (band-major, the loader's batch format), and the
collating UDF itself: every row at most once, every batch mixing row groups, the exact values of the shards."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from bigearth.input.loader import RowGroup, RowGroupLoader, row_groups
from bigearth.input.raybatches import (
    collate,
    groups_per_task,
    pack,
    plan_items,
    resume_seed,
    task_seed,
    unpack,
)
from bigearth.shards.decode import to_torch
from helpers import assert_batch_holds_rows, ingest_in_process, split_rows


@pytest.fixture(scope="module")
def fine(synth_v2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic v2 archive in shards of 6 pairs (written without Ray): a dozen row groups per split."""
    out = tmp_path_factory.mktemp("fine-raybatches") / "v2"
    ingest_in_process(synth_v2, out, shard_size=6)
    return out


def _items(plan: list[RowGroup]) -> dict[str, np.ndarray]:
    """Plan items as `map_batches` hands them to the UDF: a column per field."""
    items = plan_items(plan)
    return {k: np.array([it[k] for it in items]) for k in items[0]}


def _group_of(plan: list[RowGroup]) -> dict[str, int]:
    out = {}
    for n, g in enumerate(plan):
        for pid in pq.ParquetFile(g.path).read_row_group(g.index, columns=["patch_id"]).column(0).to_pylist():
            out[pid] = n
    return out


def test_a_task_reads_enough_row_groups_for_its_shuffle_buffer_and_a_batch() -> None:
    plan = [RowGroup("u", f"p{i}", 0, 128) for i in range(40)]
    assert groups_per_task(plan, 256, 2048) == 16
    assert groups_per_task(plan, 256, 0) == 2  # one batch's worth, unshuffled
    assert groups_per_task(plan, 32, 0) == 1
    assert groups_per_task(plan, 32, 100) == 2  # at least two: batches mix row groups
    assert groups_per_task(plan[:3], 256, 2048) == 3  # never more than the plan
    # rounded up so that full row groups make whole batches: 4 x 6 rows = 3 batches of 8 (3 would leave a rest)
    assert groups_per_task([RowGroup("u", "p", 0, 6)] * 12, 8, 16) == 4
    assert groups_per_task(plan, 100, 100) == 2  # 25 row groups for whole batches of 100: over 8, not rounded


def test_a_tasks_seed_follows_its_row_groups_and_a_resumed_run_has_its_own() -> None:
    a, b = RowGroup("u", "x", 0, 6), RowGroup("u", "x", 1, 6)
    assert task_seed(3, [a, b]) == task_seed(3, [a, b])
    assert task_seed(3, [a, b]) != task_seed(3, [b, a]) != task_seed(4, [b, a])
    assert resume_seed(5, 0) == 5
    assert len({resume_seed(5, e) for e in range(1, 6)} | {5}) == 6
    assert resume_seed(5, 3) == resume_seed(5, 3)


def test_pack_keeps_the_loaders_band_major_memory_and_unpack_gives_its_batch(fine: Path) -> None:
    plan = row_groups(str(fine), "train")
    batch = next(iter(RowGroupLoader(plan, 10, shuffle_buffer=12, seed=0)))
    row = pack(batch)
    assert row.num_rows == 1 and set(row.column_names) == {*batch, "rows"}
    for key in ("s1", "s2_10m", "s2_20m", "s2_60m", "labels"):
        data = row.column(key).chunk(0).buffers()[2]
        assert data.address == batch[key].numpy().__array_interface__["data"][0]  # the loader's memory, no copy
    back = to_torch(unpack(row))
    for key, value in batch.items():
        if key == "patch_id":
            assert back[key] == value
        else:
            assert back[key].dtype == value.dtype and back[key].shape == value.shape
            assert torch.equal(back[key], value)
    plain = unpack(row)
    assert plain["s2_10m"].transpose(1, 0, 2, 3).flags.c_contiguous  # [C, B, H, W] in memory, as the loader's
    # a block of several batches (of several sizes): each row is its own batch
    short = next(iter(RowGroupLoader(plan[:1], 4, seed=0)))
    block = pa.concat_tables([pack(short), row])
    assert list(unpack(block, 0)["patch_id"]) == short["patch_id"]
    assert unpack(block, 1)["s2_20m"].shape == (10, 6, 60, 60)
    assert np.array_equal(unpack(block, 1)["labels"], plain["labels"])


def test_collate_reads_every_row_once_and_mixes_row_groups_in_every_batch(fine: Path) -> None:
    rows = split_rows(fine, "train")
    plan = row_groups(str(fine), "train")
    group_of = _group_of(plan)
    k = groups_per_task(plan, 8, 16)
    seen: list[str] = []
    sizes = []
    for start in range(0, len(plan), k):  # the tasks of one epoch, as map_batches deals them
        task = plan[start : start + k]
        batches = [to_torch(unpack(row)) for row in collate(_items(task), batch_size=8, shuffle_buffer=16, seed=1)]
        for batch in batches:
            n = len(batch["patch_id"])
            sizes.append(n)
            assert batch["s1"].shape == (n, 2, 120, 120) and batch["s1"].dtype == torch.float32
            assert batch["s2_20m"].dtype == torch.uint16 and batch["labels"].shape == (n, 19)
            assert_batch_holds_rows(batch, rows)
            if len(task) > 1:
                assert len({group_of[p] for p in batch["patch_id"]}) > 1
            seen.extend(batch["patch_id"])
        dropped = sum(g.rows for g in task) % 8
        assert sum(len(b["patch_id"]) for b in batches) == sum(g.rows for g in task) - dropped
    assert len(seen) == len(set(seen)) and set(seen) <= set(rows)  # every row at most once over the tasks
    assert set(sizes) == {8}  # whole batches only: an epoch never has more steps than the schedule counts
    assert len(rows) - len(seen) < 8 * -(-len(plan) // k)  # each task drops less than a batch


def test_collate_is_seeded_by_its_row_groups(fine: Path) -> None:
    plan = row_groups(str(fine), "train")[:3]

    def order(groups: list[RowGroup]) -> list[str]:
        # batches of 6: the 3 row groups' 18 rows are whole batches, none dropped
        return [p for row in collate(_items(groups), batch_size=6, shuffle_buffer=18) for p in unpack(row)["patch_id"]]

    first = order(plan)
    assert order(plan) == first
    assert order(plan[::-1]) != first and Counter(order(plan[::-1])) == Counter(first)
    unshuffled = [p for row in collate(_items(plan), batch_size=6, shuffle_buffer=0) for p in unpack(row)["patch_id"]]
    assert unshuffled == sorted(unshuffled, key=list(_group_of(plan)).index)  # 0: the row groups in order


def test_data_pipeline_is_worker_or_ray_data() -> None:
    from bigearth.training.config import ConfigError, TrainConfig, load_config

    assert TrainConfig().data.pipeline == "worker"
    assert load_config(None, ["data.pipeline=ray_data"]).data.pipeline == "ray_data"
    with pytest.raises(ConfigError, match=r"data\.pipeline"):
        load_config(None, ["data.pipeline=ray"])
