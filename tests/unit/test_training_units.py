"""The training units without Ray: `fit_epoch` and `validate` on a handful of pairs, the in-process executor
(`train(..., executor="local")`: the run folder layout, resume through `bigearth.models.checkpoints`, early
stopping), `resume` restoring weights, optimiser, schedule and the loop's state."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from bigearth.input.loader import RowGroupLoader, row_groups
from bigearth.models import checkpoints
from bigearth.training import loop
from bigearth.training.config import load_config
from bigearth.training.trainer import train
from helpers import REPO, shards_in_process

TINY = str(REPO / "configs" / "tiny-cpu.yaml")
NO_MLFLOW = "tracking.mlflow=false"  # MLflow with Ray Train: tests/integration/test_training.py, test_tracking.py


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 40 synthetic pairs ingested in this process (read-only)."""
    from bigearth.synth.archive import synthesize

    work = tmp_path_factory.mktemp("units")
    synthesize(str(work / "archive"), layout="v2", pairs=48, seed=7, progress=False)
    return shards_in_process(work / "archive", work / "shards")


def _history(run: Path) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_fit_epoch_trains_one_epoch_in_this_process(shards: Path) -> None:
    cfg = load_config(TINY, ["data.batch_size=8"])
    plan, val_plan = row_groups(str(shards), "train"), row_groups(str(shards), "validation")
    pairs = sum(g.rows for g in plan)
    s = loop.setup(cfg, pairs)
    before = {k: v.clone() for k, v in s.core.state_dict().items()}
    kw = {"bands": tuple(s.core.bands), "threads": 1}
    totals = loop.fit_epoch(s, loop.epoch_loader(cfg, plan, 0, s.batch_size, 0, 1, **kw), grad_clip=1.0)
    assert int(totals.seen) == pairs and totals.had_aux  # every pair once; the aligned heads' loss apart
    assert s.scheduler.last_epoch == math.ceil(pairs / 8)  # one schedule step per batch
    assert math.isfinite(float(totals.loss_sum)) and float(totals.align_sum) > 0
    changed = [k for k, v in s.core.state_dict().items() if v.dtype.is_floating_point and not torch.equal(v, before[k])]
    assert any("head" in k for k in changed) and any("encoders" in k for k in changed)
    scores, val_loss = loop.validate(s, RowGroupLoader(val_plan, 8, **kw), 19)
    assert scores["samples"] == sum(g.rows for g in val_plan) and math.isfinite(val_loss)
    metrics = loop.epoch_metrics(1, totals, scores, val_loss, 1e-3, 1, 1)
    state = loop.advance(loop.advance(loop.LoopState(), metrics), {**metrics, "epoch": 2})
    assert (state.epoch, state.bad_epochs, len(state.history)) == (2, 1, 2)  # no better macro AP: one bad epoch


def test_the_local_executor_writes_a_run_and_resumes_it(shards: Path, tmp_path: Path) -> None:
    result = train(
        load_config(TINY, ["optim.epochs=1", "data.batch_size=8", NO_MLFLOW]),
        str(shards),
        str(tmp_path),
        "r",
        executor="local",
    )
    run = tmp_path / "r"
    assert result.path == str(run) and result.metrics["epoch"] == 1 and result.metrics["workers"] == 1
    before = _history(run)
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint_000001", "curves.png", "metrics.jsonl"]
    assert {p.name for p in (run / "checkpoint_000001").iterdir()} == {"meta.json", "model.pt", "train_state.pt"}
    record = checkpoints.read_meta(run / "checkpoint_000001")
    assert record.run == checkpoints.RunInfo(name="r", run_dir=str(run), executor="local", world_size=1)
    assert record.epoch == 1 and record.metrics == before[0] and record.train_state == checkpoints.STATE_FILE

    # resume, as a re-run does: weights, optimiser, schedule and the loop's state from the checkpoint
    cfg = load_config(TINY, ["optim.epochs=2", "data.batch_size=8", NO_MLFLOW])
    s = loop.setup(cfg, sum(g.rows for g in row_groups(str(shards), "train")), resumed=record)
    state = loop.resume(s, str(run / "checkpoint_000001"))
    assert state.epoch == 1 and state.history == before
    assert s.scheduler.last_epoch == torch.load(run / "checkpoint_000001" / "train_state.pt")["scheduler"]["last_epoch"]
    saved = checkpoints.load(run / "checkpoint_000001").model.state_dict()
    assert all(torch.equal(v, saved[k]) for k, v in s.core.state_dict().items())

    train(cfg, str(shards), str(tmp_path), "r", executor="local")
    after = _history(run)
    assert [h["epoch"] for h in after] == [1, 2] and after[:1] == before  # epoch 1 from the checkpoint
    assert checkpoints.latest(run) is not None and checkpoints.load(run).name == "tiny/late"
    # Ray Train would start this folder over (it resumes from its own snapshot only): refused before any worker
    from bigearth.training.trainer import refuse_foreign_run

    refused = rf"{run}: a run written by --executor local .* re-run it with --executor local"
    with pytest.raises(ValueError, match=refused):
        refuse_foreign_run(str(run))
    refuse_foreign_run(str(tmp_path / "new-run"))  # a new folder, or one Ray Train wrote, goes ahead


def test_early_stopping(shards: Path, tmp_path: Path) -> None:
    # a learning rate too small to change anything: no better val macro AP after the first epoch
    cfg = load_config(TINY, ["optim.epochs=6", "optim.lr=1e-12", "run.patience=1", "data.batch_size=32", NO_MLFLOW])
    train(cfg, str(shards), str(tmp_path), "stops", executor="local")
    assert [h["epoch"] for h in _history(tmp_path / "stops")] == [1, 2]


def test_a_resumed_run_keeps_its_own_retrieval_settings() -> None:
    cfg = load_config(TINY, [])
    started = checkpoints.CheckpointMeta(model={"name": "tiny", "fusion": "late"})  # begun before `retrieval`
    assert "retrieval" not in loop.model_kwargs_for(cfg, started)
    assert loop.model_kwargs_for(cfg)["retrieval"]["cross_modal"] == "aligned"


def test_an_unknown_executor_is_refused(shards: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown executor 'dask'; expected one of \['ray', 'local'\]"):
        train(load_config(TINY, [NO_MLFLOW]), str(shards), str(tmp_path), "x", executor="dask")


def test_bigearth_train_executor_local_runs_without_ray(
    shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`bigearth train --executor local` trains in this process (the tier's guard fails a test that starts Ray);
    `--executor` takes ray (the default) or local."""
    from bigearth import cli

    sets = ["--set", "optim.epochs=1", "--set", "data.batch_size=8", "--set", NO_MLFLOW]
    argv = ["train", "--config", TINY, "--data", str(shards), "--storage", str(tmp_path), "--name", "cli", *sets]
    assert cli.main([*argv, "--executor", "local"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["run"] == str(tmp_path / "cli") and printed["metrics"]["epoch"] == 1
    assert cli.build_parser().parse_args(argv).executor == "ray"
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args([*argv, "--executor", "dask"])


def test_a_validation_split_with_fewer_rows_than_workers_is_refused_naming_both() -> None:
    from bigearth.training.loop import check_validation_rows

    with pytest.raises(ValueError, match=r"validation split 'validation' has 1 rows .* fewer than the 2 workers"):
        check_validation_rows("validation", 1, 2)
    check_validation_rows("validation", 2, 2)  # every worker a row: row_share's shares are then all non-empty
