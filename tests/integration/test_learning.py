"""The tiny model learns: trained, ingested and evaluated in this process (a module of its own, so the suite's
parallel run schedules it beside the modules that share the session's Ray training run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bigearth.evaluation.classification import evaluate
from bigearth.training.config import load_config
from bigearth.training.trainer import train
from helpers import REPO

TINY = str(REPO / "configs" / "tiny-cpu.yaml")


@pytest.mark.slow
def test_tiny_model_learns_the_synthetic_archive(tmp_path: Path) -> None:
    """On a synthetic archive `tiny-cpu` reaches a test micro F1 of at least 0.85 in minutes. Learning is the
    units' (the same `fit_epoch` Ray Train drives), so it is trained, ingested and evaluated in this process
    (the local executors): the Ray paths are tests/integration/test_training.py's."""
    from bigearth.execution.executors import LocalExecutor
    from bigearth.ingest.job import ingest
    from bigearth.synth.archive import synthesize

    archive, shards = tmp_path / "archive", tmp_path / "shards"
    synthesize(str(archive), layout="v2", pairs=3000, seed=1, progress=False)
    local = LocalExecutor(progress=False)
    ingest(str(archive), str(shards), shard_size=250, executor=local, progress=False)
    cfg = load_config(TINY, ["optim.epochs=10", "run.patience=10"])
    train(cfg, str(shards), str(tmp_path / "runs"), "learn", executor="local")
    m = evaluate(str(tmp_path / "runs" / "learn"), str(shards), "test", str(tmp_path / "eval"), executor=local)
    assert m["micro_f1"] >= 0.85, m["micro_f1"]
    assert m["macro_ap"] > 0.6
