"""Every segmentation figure against an independent computation with scikit-learn on the flattened scored pixels
(and the image-level ones on the thresholded class shares of each predicted map)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from bigearth.core.labels import IGNORE_INDEX, class_names
from bigearth.metrics.segmentation import (
    SegmentationMetrics,
    class_shares,
    confusion_matrix,
    presence_threshold,
    scores_from_confusion,
)

C = 19
NAMES = class_names(19)


def _maps(seed: int, b: int = 6, h: int = 20, w: int = 24, absent: int | None = 4):
    """Random predicted and reference maps with ignored pixels, one patch wholly ignored, class `absent` never in
    the reference (but predicted), and multi-hot labels loosely tied to the reference."""
    rng = np.random.default_rng(seed)
    target = rng.integers(0, C, (b, h, w)).astype(np.uint8)
    pred = np.where(rng.random((b, h, w)) < 0.6, target, rng.integers(0, C, (b, h, w))).astype(np.uint8)
    if absent is not None:
        target[target == absent] = (absent + 1) % C
        pred[0, :3, :3] = absent  # predicted where it has no reference pixel: false positives only
    target[rng.random((b, h, w)) < 0.15] = IGNORE_INDEX
    target[-1] = IGNORE_INDEX  # a patch without any scored pixel
    labels = np.zeros((b, C), np.int64)
    for i in range(b):
        present = np.unique(target[i][target[i] != IGNORE_INDEX])
        labels[i, present[rng.random(len(present)) < 0.7]] = 1
    labels[-1, [1, 2]] = 1  # the unscored patch still has labels (from the archive's label list)
    return pred, target, labels


def _sk_pixels(pred: np.ndarray, target: np.ndarray) -> dict:
    scored = target != IGNORE_INDEX
    t, p = target[scored].astype(np.int64), pred[scored].astype(np.int64)
    classes = list(range(C))
    present = np.isin(classes, t)
    jac = skm.jaccard_score(t, p, labels=classes, average=None, zero_division=0)
    support = np.bincount(t, minlength=C)
    return {
        "cm": skm.confusion_matrix(t, p, labels=classes),
        "present": present,
        "iou": jac,
        "miou": jac[present].mean(),
        "pixel_accuracy": skm.accuracy_score(t, p),
        "fw_iou": float((support[present] / len(t) * jac[present]).sum()),
        "scored": len(t),
    }


def _check_pixels(r: dict, pred: np.ndarray, target: np.ndarray) -> None:
    e = _sk_pixels(pred, target)
    assert r["scored_pixels"] == e["scored"]
    for i, name in enumerate(NAMES):
        if e["present"][i]:
            assert r["per_class_iou"][name] == pytest.approx(e["iou"][i], abs=1e-12)
        else:
            assert r["per_class_iou"][name] is None
    assert r["classes_without_pixels"] == [n for n, p in zip(NAMES, e["present"], strict=True) if not p]
    assert r["miou"] == pytest.approx(e["miou"], abs=1e-12)
    assert r["pixel_accuracy"] == pytest.approx(e["pixel_accuracy"], abs=1e-12)
    assert r["fw_iou"] == pytest.approx(e["fw_iou"], abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confusion_matrix_per_image_matches_scikit_learn(seed: int) -> None:
    pred, target, _ = _maps(seed)
    cm = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(target), C)
    assert cm.dtype == torch.int64 and cm.shape == (len(pred), C, C)
    for i in range(len(pred) - 1):  # scikit-learn refuses an empty patch: the last one, checked below
        keep = target[i] != IGNORE_INDEX
        expected = skm.confusion_matrix(target[i][keep], pred[i][keep], labels=list(range(C)))
        np.testing.assert_array_equal(cm[i].numpy(), expected)
    assert int(cm[-1].sum()) == 0  # the wholly ignored patch counts nowhere


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pixel_figures_match_scikit_learn(seed: int) -> None:
    pred, target, _ = _maps(seed)
    cm = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(target), C).sum(0).numpy()
    np.testing.assert_array_equal(cm, _sk_pixels(pred, target)["cm"])
    r = scores_from_confusion(cm, NAMES)
    _check_pixels(r, pred, target)
    assert r["per_class_iou"][NAMES[4]] is None and NAMES[4] in r["classes_without_pixels"]


def _sk_image(pred: np.ndarray, labels: np.ndarray, share: float) -> dict:
    b = len(pred)
    counts = np.stack([np.bincount(pred[i].ravel(), minlength=C) for i in range(b)])
    shares = counts / pred[0].size
    yp = (counts >= share * pred[0].size - 1e-9).astype(np.int64)  # present: at least `share` of the pixels
    keep = labels.sum(0) > 0
    z = {"zero_division": 0}
    return {
        "shares": shares,
        "micro_precision": skm.precision_score(labels, yp, average="micro", **z),
        "micro_recall": skm.recall_score(labels, yp, average="micro", **z),
        "micro_f1": skm.f1_score(labels, yp, average="micro", **z),
        "macro_precision": skm.precision_score(labels[:, keep], yp[:, keep], average="macro", **z),
        "macro_recall": skm.recall_score(labels[:, keep], yp[:, keep], average="macro", **z),
        "macro_f1": skm.f1_score(labels[:, keep], yp[:, keep], average="macro", **z),
        "samples_f1": skm.f1_score(labels, yp, average="samples", **z),
        "macro_ap": skm.average_precision_score(labels[:, keep], shares[:, keep], average="macro"),
    }


@pytest.mark.parametrize(("seed", "share"), [(0, 0.01), (1, 0.05), (2, 0.1)])
def test_metric_matches_scikit_learn_pixels_and_images(seed: int, share: float) -> None:
    pred, target, labels = _maps(seed)
    m = SegmentationMetrics(C, presence_share=share)
    logits = torch.nn.functional.one_hot(torch.from_numpy(pred).long(), C).permute(0, 3, 1, 2).float()
    m.update(logits[:2], torch.from_numpy(target[:2]), torch.from_numpy(labels[:2]))  # logits: argmax taken
    m.update(torch.from_numpy(pred[2:]), torch.from_numpy(target[2:]), torch.from_numpy(labels[2:]))  # a class map
    r = m.compute()
    _check_pixels(r, pred, target)
    assert r["patches"] == len(pred) and r["unscored_patches"] == 1 and r["presence_share"] == share
    e = _sk_image(pred, labels, share)
    np.testing.assert_allclose(class_shares(torch.from_numpy(pred), C).numpy(), e["shares"], atol=1e-6)
    assert r["image"]["samples"] == len(pred)
    for key, value in e.items():
        if key != "shares":
            assert r["image"][key] == pytest.approx(value, abs=1e-5), key


def test_all_pixels_ignored() -> None:
    pred = torch.randint(0, C, (3, 8, 8), dtype=torch.uint8)
    mask = torch.full((3, 8, 8), IGNORE_INDEX, dtype=torch.uint8)
    m = SegmentationMetrics(C)
    m.update(pred, mask, None)
    r = m.compute()
    assert r["miou"] is None and r["pixel_accuracy"] is None and r["fw_iou"] is None
    assert r["scored_pixels"] == 0 and r["patches"] == 3 and r["unscored_patches"] == 3
    assert r["classes_without_pixels"] == list(NAMES) and set(r["per_class_iou"].values()) == {None}
    assert r["image"] is None  # no labels given: no image-level figures


def test_invalid_inputs_are_refused() -> None:
    pred = torch.zeros((1, 4, 4), dtype=torch.uint8)
    bad = torch.full((1, 4, 4), 19, dtype=torch.uint8)  # neither a class nor the ignore index
    with pytest.raises(ValueError, match="reference classes"):
        confusion_matrix(pred, bad, C)
    with pytest.raises(ValueError, match="predicted classes"):
        confusion_matrix(bad, pred, C)
    with pytest.raises(ValueError, match=r"\[B, H, W\]"):
        confusion_matrix(pred[0], pred[0], C)
    for share in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="presence_share"):
            SegmentationMetrics(C, presence_share=share)
    m = SegmentationMetrics(C)
    m.update(pred, pred, torch.zeros((1, C)))
    with pytest.raises(ValueError, match="one size per metric"):
        m.update(
            torch.zeros((1, 5, 5), dtype=torch.uint8), torch.zeros((1, 5, 5), dtype=torch.uint8), torch.zeros((1, C))
        )


@pytest.mark.parametrize("share", [0.01, 0.0125, 1 / 3, 0.5, 1.0])
def test_a_class_covering_exactly_the_presence_share_is_present(share: float) -> None:
    """ "At least" the share, exactly: the pixel count that reaches it counts, one pixel fewer does not."""
    pixels = 120 * 120
    need = int(np.ceil(share * pixels - 1e-9))
    pred = torch.zeros((2, 120, 120), dtype=torch.uint8)  # class 0 everywhere, then class 1 on `need` pixels
    pred[0].view(-1)[:need] = 1
    pred[1].view(-1)[: need - 1] = 1
    labels = torch.zeros((2, C))
    labels[:, 1] = 1.0
    m = SegmentationMetrics(C, presence_share=share)
    m.update(pred, pred, labels)
    r = m.compute()["image"]
    assert r["per_class"][NAMES[1]]["recall"] == pytest.approx(0.5)  # the first map has it, the second does not
    assert presence_threshold(share) < need / pixels and presence_threshold(share) > (need - 1) / pixels


def test_reset_and_forward_accumulate() -> None:
    pred, target, labels = _maps(3)
    args = (torch.from_numpy(pred), torch.from_numpy(target), torch.from_numpy(labels))
    m = SegmentationMetrics(C)
    m.update(*args)
    m.reset()
    assert m(*args) is None  # forward accumulates, as update
    r = m.compute()
    assert r["patches"] == len(pred) and r["image"]["samples"] == len(pred)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    b=st.integers(1, 7),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    used=st.integers(1, C),
    ignore=st.floats(0, 1),
    chunks=st.integers(1, 4),
)
def test_metric_over_chunks_equals_one_pass(
    seed: int, b: int, h: int, w: int, used: int, ignore: float, chunks: int
) -> None:
    rng = np.random.default_rng(seed)
    classes = rng.choice(C, used, replace=False)
    target = classes[rng.integers(0, used, (b, h, w))].astype(np.uint8)
    target[rng.random((b, h, w)) < ignore] = IGNORE_INDEX
    pred = rng.integers(0, C, (b, h, w)).astype(np.uint8)
    labels = (rng.random((b, C)) < 0.3).astype(np.int64)
    whole, parts = SegmentationMetrics(C), SegmentationMetrics(C)
    whole.update(torch.from_numpy(pred), torch.from_numpy(target), torch.from_numpy(labels))
    for idx in np.array_split(np.arange(b), chunks):
        if len(idx):
            parts.update(torch.from_numpy(pred[idx]), torch.from_numpy(target[idx]), torch.from_numpy(labels[idx]))
    a, c = whole.compute(), parts.compute()
    assert a["patches"] == c["patches"] == b
    assert a["unscored_patches"] == c["unscored_patches"] == int((target == IGNORE_INDEX).all((1, 2)).sum())
    for key in ("per_class_iou", "miou", "pixel_accuracy", "fw_iou", "scored_pixels", "classes_without_pixels"):
        assert a[key] == c[key], key
    for key in ("micro_f1", "macro_f1", "samples_f1", "hamming_loss", "subset_accuracy"):
        assert a["image"][key] == pytest.approx(c["image"][key], abs=1e-9), key
    if (target != IGNORE_INDEX).any():
        _check_pixels(c, pred, target)
