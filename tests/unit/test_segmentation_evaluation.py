"""The segmentation evaluation's driver without a model or Ray: per-patch columns as the Predictor returns them,
gathered, summed overall and per group (the groups' sums are the overall ones), the report and charts."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from bigearth.core.labels import IGNORE_INDEX, class_names
from bigearth.evaluation.segmentation import PatchResults, aggregate, metrics_markdown
from bigearth.metrics.segmentation import class_shares, confusion_matrix, scores_from_confusion
from bigearth.metrics.segmentation_charts import confusion_chart, per_class_iou_chart

C = 19
NAMES = class_names(19)
COUNTRIES = ["Austria", "Finland", "Portugal", None]
MONTHS = [1, 4, 7, 10]


def _batches(seed: int, n: int = 23, size: int = 6, hw: int = 12) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """Batches of the Predictor's columns for `n` random patches (two without a map, one with no scored pixel
    although it has one), and the maps they were computed from."""
    rng = np.random.default_rng(seed)
    target = rng.integers(0, 7, (n, hw, hw)).astype(np.uint8)
    pred = np.where(rng.random((n, hw, hw)) < 0.5, target, rng.integers(0, 9, (n, hw, hw))).astype(np.uint8)
    target[rng.random((n, hw, hw)) < 0.2] = IGNORE_INDEX
    has_map = np.ones(n, bool)
    has_map[[3, 11]] = False
    target[~has_map] = IGNORE_INDEX
    target[5] = IGNORE_INDEX  # a map whose every code has no 19-class target
    batches = []
    for i in range(0, n, size):
        p, t = torch.from_numpy(pred[i : i + size]), torch.from_numpy(target[i : i + size])
        cm = confusion_matrix(p, t, C)
        rows = range(i, min(i + size, n))
        batches.append(
            {
                "patch_id": np.asarray([f"P{j}" for j in rows], dtype=object),
                "confusion": cm.reshape(len(cm), -1).numpy(),
                "shares": class_shares(p, C).numpy(),
                "scored_pixels": cm.sum((1, 2)).numpy(),
                "pixels": np.full(len(cm), hw * hw, np.int64),
                "has_map": has_map[i : i + size],
                "country": np.asarray([COUNTRIES[j % 4] for j in rows], dtype=object),
                "s2_acquisition": np.asarray(
                    [dt.datetime(2018, MONTHS[(j // 2) % 4], 3) for j in rows], dtype="datetime64[ms]"
                ),
                "labels": np.asarray([json.dumps([NAMES[j % 7], NAMES[(j + 2) % 7]]) for j in rows], dtype=object),
            }
        )
    return batches, pred, target


def test_groups_sum_to_the_overall_figures() -> None:
    batches, pred, target = _batches(0)
    p = PatchResults.gather(iter(batches), C)
    assert len(p.ids) == len(pred) and p.confusion.dtype == np.int32
    m = aggregate(p, C, presence_share=0.05)
    scored = target != IGNORE_INDEX
    expected = scores_from_confusion(skm.confusion_matrix(target[scored], pred[scored], labels=list(range(C))), NAMES)
    for key in ("miou", "per_class_iou", "pixel_accuracy", "fw_iou", "scored_pixels", "classes_without_pixels"):
        assert m[key] == pytest.approx(expected[key]), key
    assert m["patches"] == 23 and m["patches_without_map"] == 2 and m["unscored_patches"] == 3
    assert m["pixels"] == 23 * 144 and m["presence_share"] == 0.05
    assert m["image"]["samples"] == 23
    for key in ("by_country", "by_season"):
        groups = m[key]
        assert sum(g["pairs"] for g in groups.values()) == sum(g["patches"] for g in groups.values()) == 23
        for count in ("scored_pixels", "pixels", "unscored_patches", "patches_without_map"):
            assert sum(g[count] for g in groups.values()) == m[count], (key, count)
        for name in NAMES:
            assert sum(g["reference_pixels"][name] for g in groups.values()) == m["reference_pixels"][name]
        assert all(g["few_pairs"] for g in groups.values())  # every group is far below MIN_GROUP_PAIRS
        assert all(
            set(g["image"])
            == {"micro_precision", "micro_recall", "micro_f1", "macro_f1", "samples_f1", "micro_ap", "macro_ap"}
            for g in groups.values()
        )
    assert set(m["by_country"]) == {"Austria", "Finland", "Portugal", "unknown"}
    assert set(m["by_season"]) == {"winter", "spring", "summer", "autumn"}
    # a group's figures are those of its own pixels
    austria = np.asarray([i % 4 == 0 for i in range(23)])
    keep = scored & austria[:, None, None]
    jac = skm.jaccard_score(target[keep], pred[keep], labels=list(range(C)), average=None, zero_division=0)
    present = np.isin(range(C), target[keep])
    assert m["by_country"]["Austria"]["miou"] == pytest.approx(jac[present].mean())
    assert m["by_country"]["Austria"]["pixel_accuracy"] == pytest.approx(skm.accuracy_score(target[keep], pred[keep]))


def test_report_and_charts() -> None:
    batches, _, _ = _batches(1)
    p = PatchResults.gather(iter(batches), C)
    m = {"checkpoint": "ck", "split": "test", **aggregate(p, C)}
    md = metrics_markdown(m)
    assert f"({m['patches']} pairs)" in md and "| Austria (few pairs) |" in md and "## By season" in md
    assert "none for: " + m["classes_without_pixels"][0] in md
    assert "subset" not in md and "subset" not in metrics_markdown({**m, "subset": None})
    subset = {"countries": {"exclude": ["Portugal"]}}
    assert 'Evaluated on a subset of `test`: `{"countries": {"exclude": ["Portugal"]}}`' in metrics_markdown(
        {**m, "subset": subset}
    )
    cm = p.confusion.sum(0).reshape(C, C)
    for png in (per_class_iou_chart(m), confusion_chart(cm, NAMES, "test")):
        assert png.startswith(b"\x89PNG")


def test_no_patch_at_all() -> None:
    p = PatchResults.gather(iter([]), C)
    m = aggregate(p, C)
    assert m["patches"] == 0 and m["miou"] is None and m["image"] is None and m["by_country"] == {}
