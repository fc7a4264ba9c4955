"""`bigearth evaluate` of a segmentation checkpoint (seg-tiny, random weights) on synthetic v2 shards with reference
maps, one test pair without its map: metrics.json against scikit-learn on the saved predictions, pixel and patch
counts against the shards' own maps; the local executor and Ray give the same figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn import metrics as skm

from bigearth.core.labels import CLC_LUT_19, IGNORE_INDEX, class_names, encode_many
from bigearth.core.storage import open_fs
from bigearth.evaluation.classification import evaluate
from bigearth.execution.executors import LocalExecutor
from bigearth.shards.format import Manifest
from bigearth.synth.archive import synthesize
from helpers import random_checkpoint

C = 19
NAMES = class_names(19)


@pytest.fixture(scope="module")
def seg_shards(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Synthetic v2 shards with reference maps; the first test pair's map removed before the ingest (its id)."""
    from bigearth.archive.layouts import layout_for
    from bigearth.ingest.job import ingest

    root = tmp_path_factory.mktemp("segeval")
    src = root / "src"
    synthesize(str(src), layout="v2", pairs=40, seed=7, progress=False, workers=1, reference_maps=True)
    rows = pq.read_table(src / "metadata.parquet").to_pylist()
    without = next(r["patch_id"] for r in rows if r["split"] == "test")
    Path(layout_for("v2", str(src)).reference_map(without)).unlink()
    out = root / "shards"
    ingest(str(src), str(out), shard_size=8, executor=LocalExecutor(progress=False))
    return out, without


@pytest.fixture(scope="module")
def seg_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_checkpoint(tmp_path_factory.mktemp("segck") / "ck", model="seg-tiny", model_kwargs={})


def _test_rows(shards: Path) -> pa.Table:
    manifest = Manifest.load(*open_fs(str(shards)))
    tables = [pq.read_table(shards / s.path) for s in manifest.shards if s.split == "test"]
    return pa.concat_tables(tables).select(["patch_id", "reference_map", "country"])


def test_segmentation_metrics_match_scikit_learn(
    seg_shards: tuple[Path, str], seg_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bigearth import cli

    shards, without = seg_shards
    out = tmp_path / "eval"
    assert cli.main(
        ["evaluate", "--checkpoint", str(seg_checkpoint), "--data", str(shards), "--split", "test",
         "--out", str(out), "--executor", "local"]
    ) == 0  # fmt: skip
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    m = json.loads((out / "metrics.json").read_text())
    assert m["subset"] is None  # the key is always there, as in classification's metrics.json
    assert {k: printed[k] for k in ("miou", "pixel_accuracy", "fw_iou", "patches")} == {
        k: m[k] for k in ("miou", "pixel_accuracy", "fw_iou", "patches")
    }
    for name in ("metrics.md", "per_class_iou.png", "confusion.png", "by_group.png"):
        assert (out / name).stat().st_size > 0
    # counts against the shards' own maps
    rows = _test_rows(shards)
    assert m["patches"] == rows.num_rows == len(pq.read_table(out / "predictions.parquet"))
    assert m["patches_without_map"] == 1 and m["pixels"] == rows.num_rows * 120 * 120
    scored_of: dict[str, int] = {}
    for pid, raw in zip(rows["patch_id"].to_pylist(), rows["reference_map"].to_pylist(), strict=True):
        codes = None if raw is None else np.frombuffer(raw, np.uint16)
        scored_of[pid] = 0 if codes is None else int((CLC_LUT_19[codes] != IGNORE_INDEX).sum())
    assert scored_of[without] == 0
    assert m["unscored_patches"] == sum(v == 0 for v in scored_of.values()) >= 1
    assert m["scored_pixels"] == sum(scored_of.values()) > 0
    pred = pq.read_table(out / "predictions.parquet").to_pydict()
    assert dict(zip(pred["patch_id"], pred["scored_pixels"], strict=True)) == scored_of
    # the pixel figures against scikit-learn on the saved confusion (a weighted sample per cell)
    cm = np.asarray(pred["confusion"], np.int64).sum(0).reshape(C, C)
    t, p = np.divmod(np.arange(C * C), C)
    w = cm.reshape(-1)
    present = cm.sum(1) > 0
    jac = skm.jaccard_score(t, p, labels=list(range(C)), average=None, sample_weight=w, zero_division=0)
    assert m["scored_pixels"] == int(w.sum())
    assert m["pixel_accuracy"] == pytest.approx(skm.accuracy_score(t, p, sample_weight=w))
    assert m["miou"] == pytest.approx(jac[present].mean())
    assert m["fw_iou"] == pytest.approx(float((cm.sum(1)[present] / w.sum() * jac[present]).sum()))
    for i, name in enumerate(NAMES):
        assert m["per_class_iou"][name] == (pytest.approx(jac[i]) if present[i] else None)
    # image level: the saved shares thresholded at the presence share, against the pairs' labels
    shares = np.asarray(pred["shares"], np.float32)
    truth = encode_many(pred["labels"], 19)
    yp = (np.rint(shares * 14400) >= m["presence_share"] * 14400 - 1e-9).astype(np.int64)  # at least the share
    assert m["image"]["samples"] == len(truth)
    assert m["image"]["micro_f1"] == pytest.approx(skm.f1_score(truth, yp, average="micro", zero_division=0))
    assert m["image"]["samples_f1"] == pytest.approx(skm.f1_score(truth, yp, average="samples", zero_division=0))
    # groups: pairs per country as in the shards, and the groups' pixels sum to the overall ones
    countries = rows["country"].to_pylist()
    assert {g: v["pairs"] for g, v in m["by_country"].items()} == {c: countries.count(c) for c in set(countries)}
    for key in ("by_country", "by_season"):
        assert sum(v["scored_pixels"] for v in m[key].values()) == m["scored_pixels"]
        assert sum(v["patches_without_map"] for v in m[key].values()) == 1


def test_ray_executor_gives_the_local_figures(
    seg_shards: tuple[Path, str], seg_checkpoint: Path, tmp_path: Path, ray_local: None
) -> None:
    shards, _ = seg_shards
    local = evaluate(str(seg_checkpoint), str(shards), "test", str(tmp_path / "a"), executor=LocalExecutor(False))
    ray = evaluate(str(seg_checkpoint), str(shards), "test", str(tmp_path / "b"))
    for key in ("miou", "per_class_iou", "pixel_accuracy", "fw_iou", "scored_pixels", "patches", "unscored_patches"):
        assert ray[key] == local[key], key
    assert ray["by_season"] == local["by_season"]


def test_a_subset_evaluates_its_pairs_only(seg_shards: tuple[Path, str], seg_checkpoint: Path, tmp_path: Path) -> None:
    from bigearth.evaluation.segmentation import evaluate as evaluate_maps
    from bigearth.models.checkpoints import resolve
    from bigearth.shards.subsets import EmptySubsetError, MetadataSubset

    shards, _ = seg_shards
    countries = _test_rows(shards)["country"].to_pylist()
    first = countries[0]
    ref = resolve(str(seg_checkpoint))
    subset = MetadataSubset.of(countries=[first])
    m = evaluate_maps(ref, str(shards), "test", str(tmp_path / "a"), executor=LocalExecutor(False), subset=subset)
    assert m["patches"] == countries.count(first) and list(m["by_country"]) == [first]
    saved = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert m["subset"] == saved["subset"] == {"countries": {"include": [first]}}  # as classification records it
    assert f'`{{"countries": {{"include": ["{first}"]}}}}`' in (tmp_path / "a" / "metrics.md").read_text()
    with pytest.raises(EmptySubsetError, match="Atlantis"):
        evaluate_maps(
            ref, str(shards), "test", str(tmp_path / "b"), executor=LocalExecutor(False),
            subset=MetadataSubset.of(countries=["Atlantis"]),
        )  # fmt: skip


def test_shards_without_reference_maps_are_refused(seg_checkpoint: Path, tmp_path: Path) -> None:
    from bigearth.ingest.job import ingest
    from bigearth.shards.decode import NoReferenceMaps

    synthesize(str(tmp_path / "src"), layout="v2", pairs=6, seed=7, progress=False, workers=1)
    ingest(str(tmp_path / "src"), str(tmp_path / "shards"), executor=LocalExecutor(progress=False))
    with pytest.raises(NoReferenceMaps, match="no reference maps"):
        evaluate(str(seg_checkpoint), str(tmp_path / "shards"), "train", str(tmp_path / "e"), executor=LocalExecutor())
