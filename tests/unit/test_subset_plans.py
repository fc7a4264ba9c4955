"""Training plans of a metadata subset (`bigearth.input.loader.row_groups(..., subset=...)`): the selected rows of
each row group, read from the shards' metadata columns; the loader yields exactly them, with the shards' values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from bigearth.input.loader import RowGroup, RowGroupLoader, epoch_share, row_groups, row_share, subset_plans
from bigearth.input.raybatches import groups_of, plan_items
from bigearth.shards.format import ShardFormatError
from bigearth.shards.subsets import EmptySubsetError, MetadataSubset, UnknownSubsetValueError
from helpers import assert_batch_holds_rows, ingest_in_process, split_rows

NO_PORTUGAL = MetadataSubset(countries={"exclude": ["Portugal"]})


@pytest.fixture(scope="module")
def fine(synth_v2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic v2 archive (9 countries; spring, summer, autumn) in shards of 10 pairs, sorted by patch id,
    so mostly one country each: some row groups hold only excluded pairs, some mix them with selected ones."""
    out = tmp_path_factory.mktemp("fine") / "v2"
    ingest_in_process(synth_v2, out, shard_size=10)
    return out


def _group_ids(g: RowGroup) -> list[str]:
    return pq.ParquetFile(g.path).read_row_group(g.index, columns=["patch_id"]).column(0).to_pylist()


def test_row_groups_without_a_selected_pair_are_left_out(fine: Path) -> None:
    full = row_groups(str(fine), "train")
    plan = row_groups(str(fine), "train", subset=MetadataSubset(countries={"include": ["Austria"]}))
    assert 0 < len(plan) < len(full) and all(g.rows > 0 for g in plan)


def _selected(fine: Path, split: str, subset: MetadataSubset) -> dict[str, dict]:  # type: ignore[type-arg]
    import datetime as dt

    from bigearth.core.seasons import season

    rows = split_rows(fine, split)
    keep = {}
    for pid, r in rows.items():
        c, s = r["country"], season(r["s2_acquisition"].month) if isinstance(r["s2_acquisition"], dt.datetime) else None
        ok = subset.countries is None or (c in subset.countries.values) == (subset.countries.mode == "include")
        ok &= subset.seasons is None or (s in subset.seasons.values) == (subset.seasons.mode == "include")
        if ok:
            keep[pid] = r
    return keep


@pytest.mark.parametrize(
    "subset",
    [
        NO_PORTUGAL,
        MetadataSubset(countries={"include": ["Austria", "Serbia"]}),
        MetadataSubset(seasons={"include": ["summer"]}, countries={"exclude": ["Switzerland"]}),
    ],
)
def test_the_plan_yields_exactly_the_selected_pairs(fine: Path, subset: MetadataSubset) -> None:
    rows = split_rows(fine, "train")
    want = _selected(fine, "train", subset)
    assert 0 < len(want) < len(rows)  # a real selection: some pairs in, some out
    full, plan = row_groups(str(fine), "train"), row_groups(str(fine), "train", subset=subset)
    assert sum(g.rows for g in plan) == len(want)
    # the groups holding a selected pair, in the plan's order, and no other (groups with nothing selected are left out)
    holding = [(g.path, g.index) for g in full if set(_group_ids(g)) & set(want)]
    assert [(g.path, g.index) for g in plan] == holding
    assert any(g.selected is not None for g in plan)
    for g in plan:
        ids = _group_ids(g)
        assert [ids[i] for i in g.selected or range(g.rows)] == [i for i in ids if i in want]
    for g in plan:
        assert g.selected is None or (g.total is not None and len(g.selected) == g.rows < g.total)
    for shuffle in (0, 24):
        seen: list[str] = []
        for batch in RowGroupLoader(plan, 5, shuffle_buffer=shuffle, seed=3):
            assert_batch_holds_rows(batch, rows)
            seen.extend(batch["patch_id"])
        assert sorted(seen) == sorted(want)


def test_shares_and_skips_count_selected_rows(fine: Path) -> None:
    plan = row_groups(str(fine), "validation", subset=NO_PORTUGAL)
    want = _selected(fine, "validation", NO_PORTUGAL)
    seen: list[str] = []
    for rank in range(3):
        groups, skip, n = row_share(plan, rank, 3)
        ids = [i for b in RowGroupLoader(groups, 4, skip=skip, limit=n) for i in b["patch_id"]]
        assert len(ids) == n
        seen.extend(ids)
    assert sorted(seen) == sorted(want)  # every selected row exactly once
    for world in (2, 3, 4):
        shares = [epoch_share(plan, 1, seed=2, rank=r, world=world) for r in range(world)]
        limit = shares[0][1]
        assert limit is not None and limit == min(sum(g.rows for g in s) for s, _ in shares)
        assert {len(RowGroupLoader(s, 4, limit=limit)) for s, _ in shares} == {-(-limit // 4)}
        loaders = [RowGroupLoader(s, 4, limit=limit, shuffle_buffer=8) for s, _ in shares]
        drawn = [i for loader in loaders for b in loader for i in b["patch_id"]]
        assert len(drawn) == world * limit == len(set(drawn)) and set(drawn) <= set(want)
        assert len(want) - len(drawn) < world  # the equal shares leave out fewer than `world` selected rows


def test_an_empty_selection_names_the_filter_and_the_split(fine: Path) -> None:
    with pytest.raises(EmptySubsetError, match=r"data.seasons include \['winter'\] selects no pair of split 'test'"):
        row_groups(str(fine), "test", subset=MetadataSubset(seasons={"include": ["winter"]}))
    with pytest.raises(EmptySubsetError, match=r"split 'train, validation'; its countries: Austria \(\d+\), Belgium"):
        row_groups(str(fine), ["train", "validation"], subset=MetadataSubset(countries={"include": ["Narnia"]}))
    assert row_groups(str(fine), "train", subset=MetadataSubset()) == row_groups(str(fine), "train")


def test_the_reader_checks_the_groups_total_against_the_file(fine: Path) -> None:
    g = next(g for g in row_groups(str(fine), "train", subset=NO_PORTUGAL) if g.selected is not None)
    bad = RowGroup(g.url, g.path, g.index, g.rows, g.selected, (g.total or 0) + 1)
    with pytest.raises(ShardFormatError, match=f"of {bad.total} rows as the manifest implies"):
        list(RowGroupLoader([bad], 4))
    with pytest.raises(ValueError, match="rows but 1 selected"):
        RowGroup(g.url, g.path, g.index, 2, (0,), 6)


def test_plan_items_carry_the_selection(fine: Path) -> None:
    plan = row_groups(str(fine), "train", subset=NO_PORTUGAL)
    items = plan_items(plan)
    assert {type(it["selected"]) for it in items} == {str}  # one Arrow type in every block
    # as map_batches hands them to a task (a numpy column per field), and as iter_rows does (numpy scalars)
    columns = {k: np.array([it[k] for it in items]) for k in items[0]}
    assert groups_of(columns) == plan
    assert [RowGroup.of_item(**{k: v[i] for k, v in columns.items()}) for i in range(len(plan))] == plan


def test_ray_data_collation_draws_the_selected_rows(fine: Path) -> None:
    from bigearth.input.raybatches import collate, unpack

    plan = row_groups(str(fine), "train", subset=NO_PORTUGAL)
    want = _selected(fine, "train", NO_PORTUGAL)
    items = plan_items(plan)
    columns = {k: np.array([it[k] for it in items]) for k in items[0]}  # as map_batches hands them to a task
    ids = [i for t in collate(columns, batch_size=4, shuffle_buffer=16) for i in unpack(t)["patch_id"]]
    assert set(ids) <= set(want) and len(ids) == len(set(ids)) == len(want) // 4 * 4  # whole batches only


def test_the_local_executor_trains_on_the_selected_pairs(fine: Path, tmp_path: Path) -> None:
    from bigearth.models.checkpoints import find_best, read_train_state
    from bigearth.training.config import load_config
    from bigearth.training.trainer import train
    from helpers import REPO

    tiny = str(REPO / "configs" / "tiny-cpu.yaml")
    base = ["optim.epochs=1", "data.batch_size=4", "tracking.mlflow=false"]
    want = _selected(fine, "train", MetadataSubset(countries={"include": ["Austria", "Serbia"]}))
    cfg = load_config(tiny, [*base, "data.countries.include=[Austria, Serbia]"])
    train(cfg, str(fine), str(tmp_path), "two", executor="local")
    _, state = read_train_state(find_best(str(tmp_path / "two")))
    assert state["scheduler"]["last_epoch"] == -(-len(want) // 4)  # the schedule counts the selected pairs
    with pytest.raises(EmptySubsetError, match=r"data.seasons include \['winter'\] selects no pair of split 'train'"):
        train(
            load_config(tiny, [*base, "data.seasons.include=[winter]"]),
            str(fine),
            str(tmp_path),
            "none",
            executor="local",
        )
    assert not (tmp_path / "none").exists()  # refused before anything was written


def test_countries_are_checked_against_the_splits_a_run_reads(fine: Path) -> None:
    train = {r["country"] for r in split_rows(fine, "train").values()}
    val = {r["country"] for r in split_rows(fine, "validation").values()}
    only = sorted(train - val)[0]  # a country of the training split that the validation split lacks (Ireland)
    out = MetadataSubset(countries={"exclude": [only]})
    # one split alone calls it unknown; the run's two splits together know it, and each plan leaves it out
    with pytest.raises(UnknownSubsetValueError, match=f"no pair of split 'validation' has country '{only}'"):
        row_groups(str(fine), "validation", subset=out)
    plans = subset_plans(str(fine), ["train", "validation"], subset=out)
    assert plans == [row_groups(str(fine), "train", subset=out), row_groups(str(fine), "validation")]
    with pytest.raises(UnknownSubsetValueError, match=r"split 'train, validation' has country 'Portgual'; its count"):
        subset_plans(str(fine), ["train", "validation"], subset=MetadataSubset.of(countries=["Austria", "Portgual"]))
    with pytest.raises(EmptySubsetError, match="selects no pair of split 'validation'; its countries: Austria"):
        subset_plans(str(fine), ["train", "validation"], subset=MetadataSubset.of(countries=[only]))
    assert subset_plans(str(fine), ["train", "validation"]) == [
        row_groups(str(fine), s) for s in ("train", "validation")
    ]
