"""Training on a metadata subset with Ray Train (`data.countries: {exclude: [X]}`): the plans Ray Train hands the
workers carry the selection (their loader's patch ids hold no pair of X) and the run steps through the selected
pairs only (its schedule counts them); its evaluation on X alone, through Ray, has X's figures by country and
season. Plans and the loader without Ray: tests/unit/test_subset_plans.py."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bigearth.core.seasons import season
from bigearth.evaluation.classification import evaluate
from bigearth.input.loader import RowGroupLoader, plan_dataset, plan_of, row_groups
from bigearth.models.checkpoints import find_best, read_train_state
from bigearth.shards.subsets import MetadataSubset
from bigearth.training.config import load_config
from bigearth.training.loop import epoch_loader
from bigearth.training.trainer import train, training_plans
from helpers import REPO, split_rows

pytestmark = pytest.mark.usefixtures("ray_local")

TINY = str(REPO / "configs" / "tiny-cpu.yaml")
X = "Portugal"


def test_training_without_a_country_never_sees_its_pairs(shards_v2: Path, tmp_path: Path) -> None:
    rows = split_rows(shards_v2, "train")
    others = {pid for pid, r in rows.items() if r["country"] != X}
    assert 0 < len(others) < len(rows)
    overrides = ["optim.epochs=1", "data.batch_size=4", "tracking.mlflow=false", f"data.countries.exclude=[{X}]"]
    cfg = load_config(TINY, overrides)
    assert math.ceil(len(others) / 4) != math.ceil(len(rows) / 4)  # the step counts tell the two apart

    # the plans as the trainer hands them to Ray Train (a Dataset each) and the workers read them back
    plan, val_plan = (plan_of(plan_dataset(p)) for p in training_plans(cfg, str(shards_v2), None))
    assert plan == row_groups(str(shards_v2), "train", subset=MetadataSubset(countries={"exclude": [X]}))
    seen = [i for b in epoch_loader(cfg, plan, 0, 4, 0, 1, threads=1) for i in b["patch_id"]]
    assert sorted(seen) == sorted(others)  # every other pair once, none of X
    val = split_rows(shards_v2, "validation")
    val_ids = [i for b in RowGroupLoader(val_plan, 8) for i in b["patch_id"]]
    assert sorted(val_ids) == sorted(pid for pid, r in val.items() if r["country"] != X)

    result = train(cfg, str(shards_v2), str(tmp_path), "no-x")
    assert result.metrics["epoch"] == 1
    _, state = read_train_state(find_best(str(tmp_path / "no-x")))
    assert state["scheduler"]["last_epoch"] == math.ceil(len(others) / 4)  # one step per batch of selected pairs

    # evaluated on the held-out country through Ray Data's actor pool: country and acquisition come back per pair
    test = split_rows(shards_v2, "test")
    held_out = MetadataSubset(countries={"include": [X]})
    m = evaluate(str(tmp_path / "no-x"), str(shards_v2), "test", str(tmp_path / "eval"), subset=held_out)
    mine = [r for r in test.values() if r["country"] == X]
    assert m["samples"] == len(mine) > 0 and list(m["by_country"]) == [X]
    seasons = sorted({season(r["s2_acquisition"].month) for r in mine})
    assert list(m["by_season"]) == seasons and sum(g["pairs"] for g in m["by_season"].values()) == len(mine)


def test_the_ray_data_pipeline_trains_on_the_subset(shards_v2: Path, tmp_path: Path) -> None:
    from bigearth.input.raybatches import groups_per_task, shard_batches
    from bigearth.training.trainer import model_bands, ray_data_batches

    rows = split_rows(shards_v2, "train")
    others = {pid for pid, r in rows.items() if r["country"] != X}
    over = ["optim.epochs=1", "data.batch_size=4", "tracking.mlflow=false", "data.pipeline=ray_data"]
    cfg = load_config(TINY, [*over, f"data.countries.exclude=[{X}]", "scaling.cpus_per_worker=0.5"])
    plan = training_plans(cfg, str(shards_v2), None)[0]
    # the Dataset Ray Train splits among the workers, as the trainer makes it: whole batches of other pairs only
    ds = ray_data_batches(cfg, str(shards_v2), None, str(tmp_path / "rd"), model_bands(cfg), plan)
    seen = [i for b in shard_batches(ds) for i in b["patch_id"]]
    assert set(seen) <= others and len(seen) == len(set(seen)) and len(seen) % 4 == 0
    # each collating task (groups_per_task consecutive row groups of the epoch's order) drops less than a batch
    tasks = -(-len(plan) // groups_per_task(plan, 4, cfg.data.local_shuffle_buffer))
    assert len(others) - 3 * tasks <= len(seen) <= len(others)
    result = train(cfg, str(shards_v2), str(tmp_path), "rd")
    assert result.metrics["epoch"] == 1 and result.metrics["train_loss"] > 0
