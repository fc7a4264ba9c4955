"""Training with Ray Train on the local cluster: the session's tiny run (`tiny_run`: checkpoints, metrics and
curves), resume of a Ray Train run (and of its MLflow run), evaluation outputs. Learning is test_learning.py; config
validation, checkpoint loading checks and early stopping are in tests/unit (test_training.py,
test_training_units.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bigearth.core.labels import BEN19
from bigearth.core.storage import open_fs
from bigearth.evaluation.classification import evaluate
from bigearth.models.checkpoints import find_best
from bigearth.shards.format import Manifest
from bigearth.training.config import load_config
from bigearth.training.trainer import train
from helpers import REPO

pytestmark = pytest.mark.usefixtures("ray_local")

TINY = str(REPO / "configs" / "tiny-cpu.yaml")


def _history(run: Path) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_training_writes_checkpoints_metrics_and_curves(tiny_run: Path) -> None:
    run = tiny_run  # 2 epochs, batch 16 (tests/conftest.py)
    history = _history(run)
    assert [h["epoch"] for h in history] == [1, 2]
    for key in ("train_loss", "val_loss", "val_micro_f1", "val_macro_f1", "val_micro_ap", "val_macro_ap", "lr"):
        assert all(h[key] is not None for h in history), key
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best = Path(find_best(run))
    assert {p.name for p in best.iterdir()} == {"meta.json", "model.pt", "train_state.pt"}
    meta = json.loads((best / "meta.json").read_text())
    assert meta["model"]["name"] == "tiny" and meta["num_classes"] == 19
    assert meta["metrics"]["val_macro_ap"] == max(h["val_macro_ap"] for h in history)
    # the default retrieval.cross_modal: aligned trains the projection heads; its loss is logged apart
    assert meta["model"]["retrieval"]["cross_modal"] == "aligned"
    assert meta["spec"]["vectors"]["s1"] == {"size": 128, "groups": ["s1"], "kind": "aligned"}
    assert meta["run"] == {"name": "tiny", "run_dir": str(run), "executor": "ray", "world_size": 1}
    assert meta["train_state"] == "train_state.pt" and meta["epoch"] == meta["metrics"]["epoch"]
    assert all(0 < h["train_align_loss"] < 100 for h in history)


def test_rerun_with_the_same_name_resumes(shards_v2: Path, tmp_path: Path) -> None:
    run = tmp_path / "tiny-run"
    train(load_config(TINY, ["optim.epochs=1", "data.batch_size=16"]), str(shards_v2), str(tmp_path), "tiny-run")
    before = _history(run)
    cfg = load_config(TINY, ["optim.epochs=2", "data.batch_size=16"])
    train(cfg, str(shards_v2), str(run.parent), "tiny-run")
    after = _history(run)
    assert [h["epoch"] for h in after] == [1, 2]
    assert after[:1] == before  # epoch 1 comes from the checkpoint, not from a new start
    # the same MLflow run goes on (the session's store, tests/conftest.py): one point per epoch, the new epoch count
    # a tag (parameters cannot change)
    from mlflow.tracking import MlflowClient

    from bigearth.training.tracking import RUN_DIR_TAG

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("bigearth")
    assert experiment is not None
    (tracked,) = client.search_runs([experiment.experiment_id], f"tags.`{RUN_DIR_TAG}` = '{run}'")
    assert tracked.info.status == "FINISHED" and tracked.info.run_name == "tiny-run"
    assert tracked.data.params["optim.epochs"] == "1" and tracked.data.tags["resumed.optim.epochs"] == "2"
    points = client.get_metric_history(tracked.info.run_id, "val_macro_ap")
    assert [(p.step, p.value) for p in points] == [(h["epoch"], pytest.approx(h["val_macro_ap"])) for h in after]


def test_evaluate_writes_the_paper_metrics(tiny_run: Path, shards_v2: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    m = evaluate(str(tiny_run), str(shards_v2), "test", str(out))
    test_pairs = Manifest.load(*open_fs(str(shards_v2))).splits["test"]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["samples"] == test_pairs == m["samples"]
    for key in (
        "micro_precision",
        "micro_recall",
        "micro_f1",
        "micro_ap",
        "macro_precision",
        "macro_recall",
        "macro_f1",
        "macro_ap",
    ):
        assert 0.0 <= saved[key] <= 1.0, key
    assert list(saved["per_class"]) == list(BEN19)
    assert sum(c["support"] for c in saved["per_class"].values()) > 0
    md = (out / "metrics.md").read_text()
    assert f"| micro | {100 * saved['micro_precision']:.2f} | {100 * saved['micro_recall']:.2f} |" in md
    assert (out / "per_class.png").read_bytes()[:4] == b"\x89PNG"
    preds = pq.read_table(out / "predictions.parquet")
    assert preds.num_rows == test_pairs and preds.schema.field("probabilities").type.list_size == 19
    probs = [p for row in preds["probabilities"].to_pylist() for p in row]
    assert all(0.0 <= p <= 1.0 for p in probs)
