"""Every classification figure against scikit-learn on the same predictions (and one-error by hand)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from bigearth.metrics.multilabel import MultilabelMetrics


def _case(seed: int, n: int = 240, c: int = 19) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < 0.2).astype(np.int64)
    y[np.arange(n), rng.integers(0, c, n)] = 1
    y[:, 5] = 0  # a class without positives in the split
    p = np.clip(y * 0.45 + rng.random((n, c)) * 0.6, 0, 1).astype(np.float32)
    p[:20, 3] = p[:20, 4]  # tied scores, one true and one false label in many rows
    p[:20, 7] = 0.5  # exactly at the threshold
    p[20:40] = np.where(y[20:40] == 1, 0.9, 0.1)  # perfect rows: subset accuracy is not 0
    y[40] = 0  # a row without labels (coverage 0, LRAP 1, as scikit-learn)
    y[41] = 1  # and one with every label but the empty class
    y[41, 5] = 0
    return y, p


@pytest.mark.parametrize("seed", [0, 1])
def test_every_metric_matches_scikit_learn(seed: int) -> None:
    y, p = _case(seed)
    m = MultilabelMetrics(19)
    for i in range(0, len(y), 64):  # several updates, as in an epoch
        m.update(torch.from_numpy(p[i : i + 64]), torch.from_numpy(y[i : i + 64]))
    r = m.compute()
    yp = (p > 0.5).astype(np.int64)  # above the threshold, as torchmetrics
    keep = y.sum(0) > 0  # macro figures: the classes with positives in the split (docs/reproduce.md)
    yk, pk, ypk = y[:, keep], p[:, keep], yp[:, keep]
    z = {"zero_division": 0}
    expected = {
        "micro_precision": skm.precision_score(y, yp, average="micro", **z),
        "micro_recall": skm.recall_score(y, yp, average="micro", **z),
        "micro_f1": skm.f1_score(y, yp, average="micro", **z),
        "micro_f2": skm.fbeta_score(y, yp, beta=2, average="micro", **z),
        "micro_ap": skm.average_precision_score(y, p, average="micro"),
        "macro_precision": skm.precision_score(yk, ypk, average="macro", **z),
        "macro_recall": skm.recall_score(yk, ypk, average="macro", **z),
        "macro_f1": skm.f1_score(yk, ypk, average="macro", **z),
        "macro_f2": skm.fbeta_score(yk, ypk, beta=2, average="macro", **z),
        "macro_ap": skm.average_precision_score(yk, pk, average="macro"),
        "samples_precision": skm.precision_score(y, yp, average="samples", **z),
        "samples_recall": skm.recall_score(y, yp, average="samples", **z),
        "samples_f1": skm.f1_score(y, yp, average="samples", **z),
        "samples_f2": skm.fbeta_score(y, yp, beta=2, average="samples", **z),
        "hamming_loss": skm.hamming_loss(y, yp),
        "subset_accuracy": skm.accuracy_score(y, yp),
        "coverage": skm.coverage_error(y, p),
        "ranking_loss": skm.label_ranking_loss(y, p),
        "lrap": skm.label_ranking_average_precision_score(y, p),
        # one-error has no scikit-learn function: the share of rows whose top-scored class is not theirs
        "one_error": float(np.mean(y[np.arange(len(y)), p.argmax(1)] == 0)),
    }
    assert r["subset_accuracy"] > 0 and r["one_error"] > 0
    for key, want in expected.items():
        assert r[key] == pytest.approx(want, abs=1e-5), key
    per_p = skm.precision_score(y, yp, average=None, **z)
    per_f2 = skm.fbeta_score(y, yp, beta=2, average=None, **z)
    names = list(r["per_class"])
    for i, name in enumerate(names):
        row = r["per_class"][name]
        assert row["support"] == int(y[:, i].sum())
        assert row["precision"] == pytest.approx(per_p[i], abs=1e-5)
        assert row["f2"] == pytest.approx(per_f2[i], abs=1e-5)
        if keep[i]:
            assert row["ap"] == pytest.approx(skm.average_precision_score(y[:, i], p[:, i]), abs=1e-5)
        else:
            assert row["ap"] is None and row["recall"] is None
    assert r["classes_without_positives"] == [names[5]]
    assert r["samples"] == len(y)
