"""The worker-side training input (`bigearth.input.loader`): every pair once per epoch with the shards' exact values,
disjoint equal shares per worker, seeded shuffling at two levels, limits, early stops, damaged files."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from bigearth.input.buffers import BatchBuffers
from bigearth.input.loader import RowGroup, RowGroupLoader, epoch_share, row_groups, row_share
from bigearth.shards.format import ShardFormatError
from helpers import assert_batch_holds_rows, ingest_in_process, split_rows


@pytest.fixture(scope="module")
def fine(synth_v2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic v2 archive in shards of 6 pairs (written without Ray): a dozen row groups per split to shuffle
    and share."""
    out = tmp_path_factory.mktemp("fine") / "v2"
    ingest_in_process(synth_v2, out, shard_size=6)
    return out


def _group_ids(g: RowGroup) -> list[str]:
    return pq.ParquetFile(g.path).read_row_group(g.index, columns=["patch_id"]).column(0).to_pylist()


def test_every_pair_once_with_the_shards_values(fine: Path) -> None:
    rows = split_rows(fine, "train")
    plan = row_groups(str(fine), "train")
    assert sum(g.rows for g in plan) == len(rows)
    loader = RowGroupLoader(plan, 16, shuffle_buffer=48, seed=1)
    seen = []
    for batch in loader:
        n = len(batch["patch_id"])
        assert batch["s1"].shape == (n, 2, 120, 120) and batch["s1"].dtype == torch.float32
        assert batch["s2_10m"].dtype == torch.uint16 and batch["s2_60m"].shape == (n, 2, 20, 20)
        assert_batch_holds_rows(batch, rows)
        seen.extend(batch["patch_id"])
    assert sorted(seen) == sorted(rows) and len(loader) == -(-len(rows) // 16)


def test_shares_are_disjoint_cover_the_plan_and_run_equal_steps(fine: Path) -> None:
    plan = row_groups(str(fine), "train")
    for world in (1, 2, 3):
        shares = [epoch_share(plan, 4, seed=7, rank=r, world=world) for r in range(world)]
        rows = [r for share, _ in shares for g in share for r in _rows(g)]
        assert len(rows) == len(set(rows)) and set(rows) == {r for g in plan for r in _rows(g)}  # disjoint, cover
        limits = {limit for _, limit in shares}
        assert len(limits) == 1  # every worker computes the same limit, without talking to the others
        limit = limits.pop()
        if world > 1:
            assert limit == min(sum(g.rows for g in share) for share, _ in shares)
            steps = {len(RowGroupLoader(share, 8, limit=limit)) for share, _ in shares}
            assert len(steps) == 1
    again = epoch_share(plan, 4, seed=7, rank=1, world=2)
    assert again == epoch_share(plan, 4, seed=7, rank=1, world=2)  # reproducible
    assert epoch_share(plan, 5, seed=7, rank=1, world=2)[0] != again[0]  # another epoch, another permutation
    with pytest.raises(ValueError, match="rank 2 outside a world of 2"):
        epoch_share(plan, 0, rank=2, world=2)


def _key(g: RowGroup) -> tuple[str, int]:
    return g.path, g.index


def _rows(g: RowGroup) -> list[tuple[str, int, int]]:
    """The rows a row group yields, as (file, group, row in the group)."""
    return [(g.path, g.index, r) for r in (g.selected if g.selected is not None else range(g.rows))]


def test_shares_balance_rows_of_unequal_groups() -> None:
    # a metadata subset's plan: groups holding 128, 128, 128 and 10 selected rows (and one of full groups)
    sel = [RowGroup("u", f"f{i}", 0, n, tuple(range(0, 2 * n, 2)), 256) for i, n in enumerate((128, 128, 128, 10))]
    full = [RowGroup("u", "g", i, n) for i, n in enumerate((128, 128, 37))]
    for plan in (sel, full, sel + full):
        want = {r for g in plan for r in _rows(g)}
        for world in (2, 3, 4):
            for epoch in (0, 1):
                shares = [epoch_share(plan, epoch, seed=3, rank=r, world=world) for r in range(world)]
                (limit,) = {limit for _, limit in shares}
                assert limit is not None and {sum(g.rows for g in s) for s, _ in shares} <= {limit, limit + 1}
                got = [r for s, _ in shares for g in s for r in _rows(g)]
                assert len(got) == len(set(got)) and set(got) == want  # disjoint, covering the plan
                assert len(want) - world * limit < world  # what the equal limit leaves out: fewer than world rows
                for s, _ in shares:
                    for g in s:  # a split group keeps the file's row count (the reader checks it)
                        assert g.file_rows == next(p.file_rows for p in plan if (p.path, p.index) == (g.path, g.index))
                again = [epoch_share(plan, epoch, seed=3, rank=r, world=world) for r in range(world)]
                assert again == shares  # the same on every worker, without talking to the others
        one, limit = epoch_share(plan, 0, seed=3)
        assert limit is None and sorted(one, key=_key) == sorted(plan, key=_key)  # one worker: the groups, whole


def test_evaluation_shares_hold_every_row_once_and_none_is_empty(fine: Path) -> None:
    plan = row_groups(str(fine), "validation")
    in_order = [pid for b in RowGroupLoader(plan, 5) for pid in b["patch_id"]]
    for world in (1, 2, 3, 7, len(in_order)):
        got: list[str] = []
        sizes = []
        for rank in range(world):
            groups, skip, rows = row_share(plan, rank, world)
            ids = [pid for b in RowGroupLoader(groups, 4, skip=skip, limit=rows) for pid in b["patch_id"]]
            assert len(ids) == rows and len(RowGroupLoader(groups, 4, skip=skip, limit=rows)) == -(-rows // 4)
            sizes.append(rows)
            got += ids
        assert got == in_order, world  # contiguous shares, in plan order: every row exactly once
        assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError, match="skip is for unshuffled reading"):
        RowGroupLoader(plan, 4, skip=1, shuffle_buffer=8)


def test_shuffling_is_seeded_and_mixes_row_groups(fine: Path) -> None:
    plan = row_groups(str(fine), "train")

    def order(seed: int, buffer: int) -> list[str]:
        return [pid for b in RowGroupLoader(plan, 8, shuffle_buffer=buffer, seed=seed) for pid in b["patch_id"]]

    assert order(3, 64) == order(3, 64)
    assert order(3, 64) != order(4, 64) and sorted(order(3, 64)) == sorted(order(4, 64))
    in_file_order = order(0, 0)
    assert in_file_order == [pid for g in plan for pid in _group_ids(g)]  # no buffer: row groups as given
    where = {pid: (g.path, g.index) for g in plan for pid in _group_ids(g)}
    first = RowGroupLoader(plan, 16, shuffle_buffer=64, seed=5)
    batch = next(iter(first))
    assert len({where[p] for p in batch["patch_id"]}) > 1  # a shuffled batch draws from several row groups


def test_memory_is_bounded_by_the_buffer_not_the_epoch(fine: Path) -> None:
    """However long the epoch, the row groups held at once are the buffer's slots plus the reads in flight."""
    import weakref

    plan = row_groups(str(fine), "train") * 4  # a long epoch: every row group four times
    loader = RowGroupLoader(plan, 4, shuffle_buffer=12, seed=0, threads=1, prefetch=1)
    alive: weakref.WeakSet[object] = weakref.WeakSet()
    read = loader._read

    def counted(group: RowGroup) -> object:
        d = read(group)
        alive.add(d)
        return d

    loader._read = counted  # type: ignore[method-assign]
    peak, seen = 0, 0
    for batch in loader:
        peak, seen = max(peak, len(alive)), seen + len(batch["patch_id"])
    slots = -(-12 // max(g.rows for g in plan))
    assert seen == sum(g.rows for g in plan) and len(plan) > 4 * (2 * slots + 3)
    assert peak <= 2 * slots + 3  # slots, reads in flight (threads + 2 + empty slots), the one being taken


def test_batch_memory_is_reused_only_once_nothing_holds_it(fine: Path) -> None:
    """Batches a consumer keeps are never overwritten by later ones; batches it drops lend their memory to the next
    (of this loader and of the next epoch's, with one `BatchBuffers` shared)."""
    rows = split_rows(fine, "train")
    plan = row_groups(str(fine), "train") * 3
    kept = list(RowGroupLoader(plan, 8, shuffle_buffer=16, seed=2))
    assert len(kept) > 10
    for batch in kept:  # every batch still holds its own rows, none overwritten by a later batch
        assert_batch_holds_rows(batch, rows)
    buffers = BatchBuffers(keep=8)  # more than are ever alive at once (queue, the one assembled, the one used)
    addresses, batches = set(), 0
    for epoch in range(2):
        for batch in RowGroupLoader(plan, 8, shuffle_buffer=16, seed=epoch, buffers=buffers):
            assert_batch_holds_rows(batch, rows)
            if len(batch["patch_id"]) == 8:  # a short last batch is never pooled (its size changes by epoch)
                addresses.add(batch["s2_10m"].data_ptr())
                batches += 1
    assert batches > 20 and len(addresses) <= 8  # the kept arrays
    assert addresses <= {a.ctypes.data for arrays in buffers._arrays.values() for a in arrays}  # the pool's own
    assert all(shape[1] == 8 for shape, _ in buffers._arrays)


def test_limit_drop_last_bands_and_an_early_stop(fine: Path) -> None:
    plan = row_groups(str(fine), "validation")
    total = sum(g.rows for g in plan)
    got = [len(b["patch_id"]) for b in RowGroupLoader(plan, 7, limit=20)]
    assert got == [7, 7, 6]
    got = [len(b["patch_id"]) for b in RowGroupLoader(plan, 7, drop_last=True)]
    assert got == [7] * (total // 7)
    batch = next(iter(RowGroupLoader(plan, 4, bands="s1")))
    assert set(batch) == {"s1", "labels", "patch_id"}
    before = threading.active_count()
    for _ in range(3):
        for _b in RowGroupLoader(plan, 2, shuffle_buffer=16, seed=0, prefetch=1):
            break  # the reader and assembler threads stop; nothing hangs
    assert threading.active_count() <= before


def test_damaged_shards_are_errors_naming_the_file(fine: Path, tmp_path: Path) -> None:
    shards = tmp_path / "s"
    shutil.copytree(fine, shards)
    plan = row_groups(str(shards), "test")
    victim = Path(plan[0].path)
    data = bytearray(victim.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8] = bytes(255 - b for b in data[middle : middle + 8])
    victim.write_bytes(bytes(data))
    with pytest.raises(ShardFormatError, match=rf"{victim.name}: row group \d+ is corrupted"):
        for _ in RowGroupLoader(plan, 8):
            pass
    wrong = [RowGroup(plan[1].url, plan[1].path, plan[1].index, plan[1].rows + 1)]
    with pytest.raises(ShardFormatError, match="as the manifest implies"):
        next(iter(RowGroupLoader(wrong, 8)))
