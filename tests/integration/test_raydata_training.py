"""`data.pipeline: ray_data` on the local Ray (`bigearth.input.raybatches`): batches collated in Ray Data tasks and
split among 2 Ray Train workers by DataConfig; the same number of batches on each in every epoch over an uneven
split, every row at most once, a few batches dropped at most, another seeded order each epoch; a short run through
`bigearth.training.trainer.train` end to end, resumed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bigearth.input.loader import row_groups
from bigearth.input.raybatches import open_batches, plan_items, shuffled_plan
from bigearth.training.config import load_config
from bigearth.training.trainer import train
from helpers import REPO, ingest_in_process, split_rows

pytestmark = pytest.mark.usefixtures("ray_local")

TINY = str(REPO / "configs" / "tiny-cpu.yaml")


@pytest.fixture(scope="module")
def fine(synth_v2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic v2 archive in shards of 6 pairs: 53 training pairs in 9 row groups (the last of 5)."""
    out = tmp_path_factory.mktemp("fine-raydata") / "v2"
    ingest_in_process(synth_v2, out, shard_size=6)
    return out


def test_the_plans_order_is_seeded_and_another_every_execution(fine: Path) -> None:
    plan = row_groups(str(fine), "train")

    def orders(seed: int) -> list[list[str]]:
        ds = shuffled_plan(plan, seed)
        return [[f"{r['path']}#{r['index']}" for r in ds.take_all()] for _ in range(3)]

    first = orders(3)
    assert orders(3) == first  # the same sequence of orders for the same seed
    assert len({tuple(o) for o in first}) == 3  # another order every execution (epoch)
    assert all(sorted(o) == sorted(f"{g['path']}#{g['index']}" for g in plan_items(plan)) for o in first)
    assert orders(4)[0] != first[0]


def test_two_workers_get_equal_batches_every_epoch_each_row_at_most_once(fine: Path, tmp_path: Path) -> None:
    import ray.train
    from ray.train.torch import TorchTrainer

    from bigearth.input.loader import row_groups
    from bigearth.input.raybatches import groups_per_task, shard_batches

    rows = split_rows(fine, "train")
    assert len(rows) % 2 == 1  # uneven between 2 workers
    epochs, batch = 3, 8
    plan = row_groups(str(fine), "train")
    tasks = -(-len(plan) // groups_per_task(plan, batch, 16))

    def loop(config: dict[str, Any]) -> None:  # defined here: pickled by value into the workers
        ctx = ray.train.get_context()
        shard = ray.train.get_dataset_shard("train_batches")
        seen = [[list(b["patch_id"]) for b in shard_batches(shard)] for _ in range(config["epochs"])]
        Path(config["out"], f"{ctx.get_world_rank()}.json").write_text(json.dumps(seen))

    ds = open_batches(str(fine), "train", batch_size=batch, shuffle_buffer=16, seed=5)
    TorchTrainer(
        loop,
        train_loop_config={"epochs": epochs, "out": str(tmp_path)},
        scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
        run_config=ray.train.RunConfig(storage_path=str(tmp_path / "runs")),
        datasets={"train_batches": ds},
        dataset_config=ray.train.DataConfig(datasets_to_split=["train_batches"]),
    ).fit()
    ranks = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2)]
    for epoch in range(epochs):
        steps = [len(ranks[r][epoch]) for r in range(2)]
        assert steps[0] == steps[1] > 0, steps  # the same number of steps on both workers: nobody waits
        ids = [p for r in range(2) for b in ranks[r][epoch] for p in b]
        assert len(ids) == len(set(ids)) and set(ids) <= set(rows)  # every row at most once
        assert all(len(b) == batch for r in range(2) for b in ranks[r][epoch])  # whole batches only
        # dropped: each task's rest (less than a batch) and, to equalise, at most world - 1 = 1 whole batch
        assert len(rows) - len(ids) < batch * (1 + tasks)
    # another shuffle every epoch: other row groups collated together, so other batches
    batches = [frozenset(frozenset(b) for r in range(2) for b in ranks[r][e]) for e in range(epochs)]
    assert len(set(batches)) == epochs


def test_train_with_ray_data_runs_two_workers_and_resumes(fine: Path, tmp_path: Path) -> None:
    over = [
        "data.pipeline=ray_data",
        "data.batch_size=8",
        "data.local_shuffle_buffer=16",
        "scaling.num_workers=2",
        "scaling.cpus_per_worker=0.5",  # a CPU of the local Ray's 2 left to the Ray Data tasks
        "tracking.mlflow=false",
    ]
    train(load_config(TINY, [*over, "optim.epochs=1"]), str(fine), str(tmp_path), "rd")
    run = tmp_path / "rd"
    before = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    result = train(load_config(TINY, [*over, "optim.epochs=2"]), str(fine), str(tmp_path), "rd")
    after = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in after] == [1, 2] and after[:1] == before
    assert result.metrics["epoch"] == 2 and result.metrics["workers"] == 2
    for h in after:
        assert h["train_loss"] > 0 and h["val_macro_ap"] is not None
    meta = json.loads(next(run.glob("checkpoint_*/meta.json")).read_text())
    assert meta["config"]["data"]["pipeline"] == "ray_data"


def test_the_local_executor_falls_back_to_the_worker_path(fine: Path, tmp_path: Path, capsys: Any) -> None:
    cfg = load_config(TINY, ["data.pipeline=ray_data", "data.batch_size=16", "optim.epochs=1", "tracking.mlflow=false"])
    result = train(cfg, str(fine), str(tmp_path), "local", executor="local")
    assert result.metrics["epoch"] == 1
    assert "data.pipeline ray_data falls back to worker" in capsys.readouterr().out
