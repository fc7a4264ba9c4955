"""Training a segmentation model without Ray: the masked cross-entropy (a batch without a scored pixel gives 0, not
NaN), `val_score` (macro AP or mIoU) in the epoch metrics and early stopping, one epoch of `seg-tiny` through the
units, the driver's refusals (shards without maps, `ray_data`, 43 classes) and the MLflow artefacts of its scores."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from bigearth.core.labels import IGNORE_INDEX
from bigearth.input.loader import RowGroupLoader, row_groups
from bigearth.metrics.segmentation import SegmentationMetrics
from bigearth.shards.decode import NoReferenceMaps
from bigearth.shards.shardset import ShardSet
from bigearth.training import loop, objectives
from bigearth.training.config import load_config
from bigearth.training.trainer import check_segmentation
from helpers import REPO, ingest_in_process

SEG_TINY = str(REPO / "configs" / "seg-tiny-cpu.yaml")


@pytest.fixture(scope="module")
def shard_sets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(synthetic v2 shards with reference maps, the same kind of archive ingested without), read-only."""
    from bigearth.synth.archive import synthesize

    root = tmp_path_factory.mktemp("segunits")
    synthesize(str(root / "a"), layout="v2", pairs=24, seed=11, progress=False, workers=1, reference_maps=True)
    synthesize(str(root / "b"), layout="v2", pairs=6, seed=11, progress=False, workers=1)
    ingest_in_process(root / "a", root / "maps", shard_size=10)
    ingest_in_process(root / "b", root / "plain", shard_size=10)
    return root / "maps", root / "plain"


def test_the_masked_loss_is_torchs_and_zero_without_scored_pixels() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 19, 8, 8, generator=g, requires_grad=True)
    mask = torch.randint(0, 19, (3, 8, 8), generator=g).to(torch.uint8)
    mask[0] = IGNORE_INDEX  # one pair without a map
    mask[1, :4] = IGNORE_INDEX
    loss_fn = objectives.loss_for("segmentation")
    expected = torch.nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)(logits, mask.long())
    assert torch.allclose(loss_fn(logits, mask), expected)
    none = torch.full_like(mask, IGNORE_INDEX)
    torch_mean = torch.nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)(logits.detach(), none.long())
    assert math.isnan(float(torch_mean))  # what torch's mean gives there
    zero = loss_fn(logits, none)
    assert float(zero) == 0.0
    zero.backward()
    assert logits.grad is not None and torch.equal(logits.grad, torch.zeros_like(logits))
    assert isinstance(objectives.loss_for("classification"), torch.nn.BCEWithLogitsLoss)
    with pytest.raises(ValueError, match="unknown model task 'detection'"):
        objectives.loss_for("detection")


def test_val_score_is_the_tasks_score_and_early_stopping_follows_it() -> None:
    metric = SegmentationMetrics(19)
    pred = torch.zeros(2, 120, 120, dtype=torch.long)
    mask = torch.zeros(2, 120, 120, dtype=torch.uint8)
    mask[:, :60] = 3  # half the pixels of class 3, predicted 0
    mask[1] = IGNORE_INDEX
    labels = torch.zeros(2, 19)
    labels[0, [0, 3]] = 1
    metric.update(pred, mask, labels)
    scores = metric.compute()
    totals = loop.EpochTotals(torch.tensor(4.0), torch.tensor(2.0), torch.tensor(0.0), False, 1.0)
    m = loop.epoch_metrics(1, totals, scores, 0.5, 1e-3, 1, 1, "segmentation")
    assert m["val_score"] == m["val_miou"] == pytest.approx(0.25)  # IoU 0.5 (class 0), 0 (class 3)
    assert m["val_pixel_accuracy"] == pytest.approx(0.5) and m["val_patches"] == 2 and m["val_unscored_patches"] == 1
    assert "val_per_class_iou" not in m and "val_image" not in m and "val_image_macro_ap" in m
    state = loop.advance(loop.LoopState(), m)
    state = loop.advance(state, {**m, "epoch": 2, "val_score": 0.2, "val_macro_ap": 0.9})
    assert (state.best, state.bad_epochs) == (0.25, 1)  # ranked by val_score, not by a classifier's figure
    classification = loop.epoch_metrics(
        1, totals, {"macro_ap": 0.4, "micro_ap": 0.5, "per_class": {}, "samples": 2}, 0.5, 1e-3, 1, 1
    )
    assert classification["val_score"] == classification["val_macro_ap"] == 0.4 and "val_samples" not in classification
    unscored = SegmentationMetrics(19)
    unscored.update(pred, torch.full_like(mask, IGNORE_INDEX))  # a validation split without any map
    m = loop.epoch_metrics(1, totals, unscored.compute(), 0.0, 1e-3, 1, 1, "segmentation")
    assert m["val_miou"] is None and m["val_score"] == 0.0 and m["val_unscored_patches"] == 2


def test_one_epoch_of_seg_tiny_through_the_units(shard_sets: tuple[Path, Path]) -> None:
    shards, _ = shard_sets
    cfg = load_config(SEG_TINY, ["data.batch_size=4"])
    plan, val_plan = row_groups(str(shards), "train"), row_groups(str(shards), "validation")
    s = loop.setup(cfg, sum(g.rows for g in plan))
    assert (s.task, s.target) == ("segmentation", "mask") and isinstance(s.loss_fn, objectives.MaskedCrossEntropy)
    kw = {"bands": tuple(s.core.bands), "threads": 1, "maps": True}
    before = {k: v.clone() for k, v in s.core.state_dict().items()}
    totals = loop.fit_epoch(s, loop.epoch_loader(cfg, plan, 0, s.batch_size, 0, 1, **kw), grad_clip=1.0)
    assert int(totals.seen) == sum(g.rows for g in plan) and math.isfinite(float(totals.loss_sum))
    assert not totals.had_aux and float(totals.loss_sum) > 0
    changed = [k for k, v in s.core.state_dict().items() if v.dtype.is_floating_point and not torch.equal(v, before[k])]
    assert any("decoder" in k for k in changed) and any("encoders" in k for k in changed)
    scores, val_loss = loop.validate(s, RowGroupLoader(val_plan, 4, **kw), 19)
    assert scores["patches"] == sum(g.rows for g in val_plan) and math.isfinite(val_loss)
    assert scores["scored_pixels"] == scores["patches"] * 120 * 120  # synthetic maps: every pixel has a class
    assert scores["miou"] is not None and 0 <= scores["miou"] <= 1


def test_the_driver_refuses_what_cannot_train_a_segmentation_model(shard_sets: tuple[Path, Path]) -> None:
    shards, plain = shard_sets
    cfg = load_config(SEG_TINY)
    check_segmentation(cfg, ShardSet.open(str(shards)))  # maps, worker pipeline, 19 classes: fine
    with pytest.raises(NoReferenceMaps, match=rf"shard set {plain}: the shards have no reference_map column"):
        check_segmentation(cfg, ShardSet.open(str(plain)))
    with pytest.raises(ValueError, match=r"data.pipeline ray_data collates bands and labels, not reference maps"):
        check_segmentation(load_config(SEG_TINY, ["data.pipeline=ray_data"]), ShardSet.open(str(shards)))
    check_segmentation(load_config(SEG_TINY, ["data.pipeline=ray_data"]), ShardSet.open(str(shards)), "local")
    with pytest.raises(ValueError, match=r"segmentation maps have the 19 classes; data\.nomenclature is 43"):
        check_segmentation(load_config(SEG_TINY, ["data.nomenclature=43"]), ShardSet.open(str(shards)))
    check_segmentation(load_config(None), ShardSet.open(str(plain)))  # a classifier needs no maps


def test_the_tracking_artefacts_of_a_segmentation_run() -> None:
    from bigearth.training.tracking import artefacts

    metric = SegmentationMetrics(19)
    metric.update(torch.zeros(1, 120, 120, dtype=torch.long), torch.zeros(1, 120, 120, dtype=torch.uint8))
    scores = metric.compute()
    history = [{"epoch": 1, "train_loss": 1.0, "val_loss": 0.9, "val_miou": 0.3, "val_pixel_accuracy": 0.5}]
    files = artefacts(history, scores, "validation")
    assert set(files) == {"curves.png", "metrics.jsonl", "per_class.png", "metrics.json"}
    assert all(files[k].startswith(b"\x89PNG") for k in ("curves.png", "per_class.png"))
