"""docs/reproduce.md at a small scale: a reBEN config trained as published (flips, drop path, global batch,
warm-up from lr/10, nearest resampling with its statistics), with the CPU's tiny backbone and a synthetic archive in
place of ResNet-50 on the real one; evaluated; the table script puts it beside the model cards' figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bigearth.evaluation.classification import evaluate
from bigearth.evaluation.reproduce import PUBLISHED, write_table
from bigearth.models import checkpoints
from bigearth.training.config import load_config
from bigearth.training.trainer import train
from helpers import REPO

pytestmark = pytest.mark.usefixtures("ray_local")

SMALL = [  # what changes for a CPU and a 120-pair archive; everything else is the published recipe
    "model.name=tiny",
    "model.fusion=early",
    "model.backbone=null",
    "data.global_batch_size=16",
    "data.local_shuffle_buffer=64",
    "optim.epochs=2",
    "optim.warmup_steps=3",
    "scaling.num_workers=1",
    "scaling.use_gpu=false",
    "scaling.cpus_per_worker=1",
]


@pytest.mark.slow
def test_reben_recipe_trains_evaluates_and_tabulates(shards_v2: Path, tmp_path: Path) -> None:
    cfg = load_config(REPO / "configs" / "reben" / "resnet50-all.yaml", SMALL)
    assert (cfg.data.augment, cfg.model.resample, cfg.optim.warmup_start) == ("flips", "nearest", 0.1)
    train(cfg, str(shards_v2), str(tmp_path / "runs"), "resnet50-all")
    run = tmp_path / "runs" / "resnet50-all"
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 2
    ref = checkpoints.resolve(str(run))
    assert (ref.spec.resample, ref.spec.stats, ref.spec.img_size) == ("nearest", "v2-120-nearest", 120)
    loaded = checkpoints.load(ref)
    assert any(type(m).__name__ == "DropPath" for m in loaded.model.modules())
    assert ref.meta["config"]["data"]["global_batch_size"] == 16

    out = tmp_path / "eval" / "resnet50-all"
    m = evaluate(str(run), str(shards_v2), "test", str(out))
    for key in ("samples_f1", "micro_f2", "lrap", "one_error", "coverage", "ranking_loss", "hamming_loss"):
        assert m[key] is not None, key
    md = (out / "metrics.md").read_text()
    assert "| samples |" in md and "LRAP" in md

    table = write_table(str(tmp_path / "eval"), str(tmp_path / "table.md"))
    ours = 100 * m["macro_ap"]
    row = next(line for line in table.splitlines() if line.startswith("| resnet50-all | macro_ap |"))
    assert f"| {PUBLISHED['resnet50-all']['macro_ap']:.2f} | {ours:.2f} |" in row
    assert f"{ours - PUBLISHED['resnet50-all']['macro_ap']:+.2f}" in row
    assert "Not evaluated yet: resnet50-s1, vit_base_patch8_224-all" in table
    assert (tmp_path / "table.md").read_text() == table
