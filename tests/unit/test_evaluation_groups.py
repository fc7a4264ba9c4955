"""Evaluation by country and season (`bigearth.evaluation.classification.evaluate` with the local executor, no Ray):
`by_country` / `by_season` in metrics.json, their tables and chart; metadata subsets applied before inference,
from the API and the `bigearth evaluate` options."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from bigearth.core import labels as lab
from bigearth.core.seasons import season
from bigearth.evaluation.classification import GROUP_FIGURES, evaluate
from bigearth.evaluation.groups import MIN_GROUP_PAIRS
from bigearth.execution.executors import LocalExecutor
from bigearth.metrics.multilabel import MultilabelMetrics
from bigearth.shards.subsets import EmptySubsetError, MetadataSubset
from helpers import random_checkpoint, split_rows


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return random_checkpoint(tmp_path_factory.mktemp("ck") / "checkpoint_000001")


def _figures(preds: dict[str, tuple[list[float], list[str]]], ids: list[str]) -> dict[str, float | None]:
    """The group's figures computed anew from predictions.parquet's rows of its pairs."""
    m = MultilabelMetrics(19)
    probs = torch.tensor(np.array([preds[i][0] for i in ids], dtype=np.float32))
    m.update(probs, torch.from_numpy(lab.encode_many([preds[i][1] for i in ids], 19)))
    out = m.compute()
    return {k: out[k] for k in GROUP_FIGURES}


def test_figures_per_country_and_season(checkpoint: Path, shards_v2: Path, tmp_path: Path) -> None:
    out = tmp_path / "ev"
    m = evaluate(str(checkpoint), str(shards_v2), "test", str(out), executor=LocalExecutor(False))
    rows = split_rows(shards_v2, "test")
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["subset"] is None
    table = pq.read_table(out / "predictions.parquet").to_pylist()
    preds = {r["patch_id"]: (r["probabilities"], r["labels"]) for r in table}
    assert {r["patch_id"]: r["country"] for r in table} == {i: r["country"] for i, r in rows.items()}
    for key, of in (("by_country", lambda r: r["country"]), ("by_season", lambda r: season(r["s2_acquisition"].month))):
        groups: dict[str, list[str]] = {}
        for pid, r in rows.items():
            groups.setdefault(of(r), []).append(pid)
        assert saved[key] == m[key] and list(saved[key]) == sorted(groups)
        assert sum(g["pairs"] for g in saved[key].values()) == saved["samples"] == len(rows)
        for name, ids in groups.items():
            g = saved[key][name]
            assert g["pairs"] == len(ids) and g["few_pairs"] is (len(ids) < MIN_GROUP_PAIRS)
            assert {k: g[k] for k in GROUP_FIGURES} == pytest.approx(_figures(preds, ids))
    md = (out / "metrics.md").read_text()
    country, g = next(iter(saved["by_country"].items()))
    assert "## By country" in md and "## By season" in md
    assert f"| {country} * | {g['pairs']} | {100 * g['micro_f1']:.2f} |" in md  # few pairs: marked
    assert f"\\* fewer than {MIN_GROUP_PAIRS} pairs" in md
    assert (out / "by_group.png").read_bytes()[:4] == b"\x89PNG"
    # the demo's report shows the chart beside the per-class one
    from bigearth.demo.report import write_report

    page = Path(write_report(str(tmp_path / "report"), {"metrics": saved, "by_group_png": str(out / "by_group.png")}))
    assert '<img src="images/by_group.png" alt="scores by country and season">' in page.read_text()
    assert (tmp_path / "report" / "images" / "by_group.png").read_bytes() == (out / "by_group.png").read_bytes()


def test_a_subset_is_applied_before_inference(checkpoint: Path, shards_v2: Path, tmp_path: Path) -> None:
    rows = split_rows(shards_v2, "test")
    subset = MetadataSubset(countries={"include": ["Austria", "Serbia"]})
    m = evaluate(str(checkpoint), str(shards_v2), "test", str(tmp_path), executor=LocalExecutor(False), subset=subset)
    want = sorted(i for i, r in rows.items() if r["country"] in ("Austria", "Serbia"))
    assert 0 < len(want) < len(rows)
    assert m["samples"] == len(want) and list(m["by_country"]) == ["Austria", "Serbia"]
    assert sorted(pq.read_table(tmp_path / "predictions.parquet").column("patch_id").to_pylist()) == want
    assert m["subset"] == {"countries": {"include": ["Austria", "Serbia"]}}
    assert "Evaluated on a subset of `test`" in (tmp_path / "metrics.md").read_text()


def test_bigearth_evaluate_takes_the_subset_options(
    checkpoint: Path, shards_v2: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bigearth.cli import main
    from helpers import cli_subparser

    base = ["evaluate", "--checkpoint", str(checkpoint), "--data", str(shards_v2), "--split", "test", "--executor"]
    base += ["local", "--out"]
    rows = split_rows(shards_v2, "test")
    assert main([*base, str(tmp_path / "a"), "--exclude-countries", "Austria", "--seasons", "summer", "autumn"]) == 0
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())
    want = [r for r in rows.values() if r["country"] != "Austria" and season(r["s2_acquisition"].month) != "spring"]
    assert m["samples"] == len(want) > 0 and "Austria" not in m["by_country"] and "spring" not in m["by_season"]
    capsys.readouterr()
    assert main([*base, str(tmp_path / "b"), "--countries", "Narnia"]) == 2
    err = capsys.readouterr().err
    assert "data.countries include ['Narnia'] selects no pair of split 'test'; its countries: Austria (" in err
    assert not (tmp_path / "b").exists()
    with pytest.raises(EmptySubsetError, match=r"data.seasons include \['winter'\]"):
        evaluate(
            str(checkpoint),
            str(shards_v2),
            "test",
            str(tmp_path / "c"),
            executor=LocalExecutor(False),
            subset=MetadataSubset(seasons={"include": ["winter"]}),
        )
    parser = cli_subparser("evaluate")
    for bad in (["--countries", "A", "--exclude-countries", "B"], ["--seasons", "monsoon"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["--checkpoint", "c", "--data", "d", "--out", "o", *bad])


def test_the_read_and_the_predictor_keep_the_selected_rows_only(checkpoint: Path, shards_v2: Path) -> None:
    from bigearth.evaluation.classification import Predictor, selected_tables
    from bigearth.input.raydata import shard_tables, split_files
    from bigearth.shards.subsets import SUBSET_COLUMNS

    subset = MetadataSubset(countries={"exclude": ["Austria"]})
    files, columns = split_files(str(shards_v2), "test", extra_columns=SUBSET_COLUMNS)
    tables = [t for f in files for t in selected_tables(f, columns, str(shards_v2), None, subset)]
    assert all(t.num_rows for t in tables)  # no empty table reaches the model (nor Ray Data's join)
    want = sorted(i for i, r in split_rows(shards_v2, "test").items() if r["country"] != "Austria")
    assert sorted(i for t in tables for i in t.column("patch_id").to_pylist()) == want
    whole = next(
        t
        for f in files
        for t in shard_tables(f, columns, str(shards_v2), None)
        if "Austria" in t["country"].to_pylist()
    )
    out = Predictor(str(checkpoint), device="cpu", subset=subset)(whole)
    kept = [c != "Austria" for c in whole.column("country").to_pylist()]
    assert list(out["patch_id"]) == [i for i, k in zip(whole.column("patch_id").to_pylist(), kept, strict=True) if k]
    assert out["probabilities"].shape == (sum(kept), 19) and "Austria" not in list(out["country"])
    assert out["s2_acquisition"].dtype == np.dtype("datetime64[ms]")
    none = Predictor(str(checkpoint), device="cpu", subset=MetadataSubset(countries={"include": ["Narnia"]}))(whole)
    assert none["probabilities"].shape == (0, 19) and len(none["patch_id"]) == 0
