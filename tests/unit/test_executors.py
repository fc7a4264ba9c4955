"""Executors without Ray: LocalExecutor's semantics, and ingest, evaluation, indexing and statistics run in this
process through it, with Ray neither started nor imported."""

from __future__ import annotations

import json
import pickle
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bigearth.core.storage import StorageAccessDenied, StorageUnavailable, open_fs
from bigearth.execution.executors import (
    LocalExecutor,
    RayExecutor,
    Resources,
    _call_pickled,
    executor_for,
    rebatch,
    unwrap,
)
from bigearth.shards.format import Manifest


def _ray_imported() -> bool:
    return "ray" in sys.modules


def test_map_runs_every_item_in_order_and_lazily() -> None:
    seen: list[int] = []

    def square(x: int) -> int:
        seen.append(x)
        return x * x

    results = LocalExecutor(progress=False).map(square, [3, 1, 2], desc="squares", resources=Resources(cpus=1))
    assert seen == []  # nothing runs before the results are asked for
    assert list(results) == [9, 1, 4] and seen == [3, 1, 2]


def test_map_raises_the_units_exception_as_itself() -> None:
    def fail(x: int) -> int:
        if x == 2:
            raise StorageUnavailable("s3://bucket: down for 5 s")
        return x

    results = LocalExecutor(progress=False).map(fail, [1, 2, 3])
    assert next(results) == 1
    with pytest.raises(StorageUnavailable, match="down for 5 s"):
        next(results)


class _Doubler:
    built = 0

    def __init__(self, factor: int) -> None:
        type(self).built += 1
        self.factor = factor

    def __call__(self, table: pa.Table) -> dict[str, Any]:
        x = table.column("x").to_numpy()
        return {"x": x * self.factor, "n": np.full(len(x), len(x))}


def test_map_batches_builds_the_unit_once_and_cuts_batches_across_sources() -> None:
    _Doubler.built = 0

    def read(source: int) -> Iterator[pa.Table]:  # two "row groups" of 3 rows per source
        for k in range(2):
            yield pa.table({"x": np.arange(3) + 10 * source + 3 * k})

    out = list(
        LocalExecutor(progress=False).map_batches(
            _Doubler, [0, 1, 2], read=read, unit_kwargs={"factor": 2}, batch_size=4, out_batch_size=5
        )
    )
    assert _Doubler.built == 1
    got = np.concatenate([b["x"] for b in out])
    expected = 2 * np.concatenate([np.arange(3) + 10 * s + 3 * k for s in range(3) for k in range(2)])
    assert got.tolist() == expected.tolist()  # every row once, in order
    assert [len(b["x"]) for b in out] == [5, 5, 5, 3]  # out batches of out_batch_size, the last shorter
    assert np.concatenate([b["n"] for b in out]).tolist() == [4] * 16 + [2] * 2  # unit batches of batch_size


def test_map_batches_with_a_function_and_no_batch_size_passes_batches_as_read() -> None:
    def read(source: int) -> Iterator[dict[str, np.ndarray]]:
        yield {"x": np.arange(source)}

    out = list(LocalExecutor(progress=False).map_batches(lambda b: {"len": [len(b["x"])]}, [2, 5], read=read))
    assert [b["len"].tolist() for b in out] == [[2], [5]]


def test_rebatch_tables_and_dicts() -> None:
    tables = [pa.table({"a": [1, 2]}), pa.table({"a": [3]}), pa.table({"a": [4, 5, 6, 7]})]
    assert [t.column("a").to_pylist() for t in rebatch(tables, 3)] == [[1, 2, 3], [4, 5, 6], [7]]
    dicts = [{"a": np.arange(5)}]
    assert [d["a"].tolist() for d in rebatch(dicts, 2)] == [[0, 1], [2, 3], [4]]
    assert list(rebatch(iter(tables), None)) == tables


def test_executor_for() -> None:
    assert isinstance(executor_for("local"), LocalExecutor)
    ray_ex = executor_for("ray", address="10.0.0.1:6379")
    assert isinstance(ray_ex, RayExecutor) and ray_ex.address == "10.0.0.1:6379"
    with pytest.raises(ValueError, match="unknown executor 'dask'"):
        executor_for("dask")


@pytest.mark.parametrize("error", [StorageUnavailable("s3://b: down"), StorageAccessDenied("s3://b: 403")])
def test_a_storage_fault_crosses_processes_as_itself(error: Exception) -> None:
    """What a Ray task sends back for a unit that raised: the exception itself (pickled), with its remote
    traceback as a note, so the driver raises the same type (no traceback text to read)."""

    def unit(_: Any) -> Any:
        raise error

    row = _call_pickled({"item": pickle.dumps(1)}, unit)
    assert row["result"] == b""
    back = pickle.loads(row["error"])
    assert type(back) is type(error) and str(back) == str(error)
    assert isinstance(back, OSError)
    assert any("Traceback" in n and type(error).__name__ in n for n in back.__notes__)
    ok = _call_pickled({"item": pickle.dumps(2)}, lambda x: x + 1)
    assert pickle.loads(ok["result"]) == 3 and ok["error"] == b""


def test_unwrap_finds_the_original_in_a_chain() -> None:
    original = StorageUnavailable("down")
    outer = RuntimeError("wrapper")
    outer.__cause__ = original
    assert unwrap(original) is original  # not a Ray exception: itself
    assert unwrap(outer) is outer


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_local_ingest_writes_the_documented_shard_set_without_ray(synth_v2: Path, tmp_path: Path) -> None:
    from bigearth.ingest.job import ingest

    imported_before = _ray_imported()
    out = tmp_path / "shards"
    m = ingest(str(synth_v2), str(out), shard_size=30, executor=LocalExecutor(progress=False), progress=False)
    meta = pq.read_table(synth_v2 / "metadata.parquet")
    assert m.pairs == meta.num_rows and m.quarantined_pairs == 0
    assert sorted(s.path for s in m.shards) == [
        "test/part-00000.parquet",
        "train/part-00000.parquet",
        "train/part-00001.parquet",
        "validation/part-00000.parquet",
    ]
    ids = [r for s in m.shards for r in pq.read_table(out / s.path, columns=["patch_id"])["patch_id"].to_pylist()]
    assert sorted(ids) == sorted(meta["patch_id"].to_pylist())
    assert Manifest.load(*open_fs(str(out))).to_json() == m.to_json()
    if not imported_before:
        assert not _ray_imported(), "the local path imported Ray"


def test_shards_v2_fixture_is_the_local_ingest(synth_v2: Path, shards_v2: Path, tmp_path: Path) -> None:
    """A re-run into the same folder finds every shard done (its reports) and rewrites nothing else."""
    from bigearth.ingest.job import ingest

    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(shards_v2, copy)
    before = _tree(copy)
    ingest(str(synth_v2), str(copy), shard_size=30, executor=LocalExecutor(progress=False), progress=False)
    after = _tree(copy)
    assert after.keys() == before.keys()
    assert {k for k in after if after[k] != before[k]} <= {"manifest.json", "_ingest/excluded.parquet"}


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init `tiny` (late fusion) checkpoint written through `models.checkpoints.save`: no training."""
    import torch

    from bigearth.models.checkpoints import save
    from bigearth.models.registry import create_model

    torch.manual_seed(0)
    model: Any = create_model("tiny", num_classes=19)
    out = tmp_path_factory.mktemp("ck") / "checkpoint_000"
    save(str(out), model, {"model": {"name": "tiny"}, "num_classes": 19})
    return out


def test_predict_one_batch_and_evaluate_locally(random_checkpoint: Path, shards_v2: Path, tmp_path: Path) -> None:
    from bigearth.evaluation.classification import Predictor, evaluate
    from bigearth.input.raydata import shard_tables, split_files

    imported_before = _ray_imported()
    files, columns = split_files(str(shards_v2), "test", nomenclature=19)
    table = next(iter(shard_tables(files[0], columns, str(shards_v2), None)))
    out = Predictor(str(random_checkpoint), device="cpu")(table)
    assert out["probabilities"].shape == (table.num_rows, 19)
    assert ((out["probabilities"] >= 0) & (out["probabilities"] <= 1)).all()
    assert list(out["patch_id"]) == table.column("patch_id").to_pylist()
    assert [json.loads(x) for x in out["labels"]] == table.column("labels").to_pylist()

    m = evaluate(str(random_checkpoint), str(shards_v2), "test", str(tmp_path / "ev"), executor=LocalExecutor(False))
    test_rows = Manifest.load(*open_fs(str(shards_v2))).splits["test"]
    assert m["samples"] == test_rows
    preds = pq.read_table(tmp_path / "ev" / "predictions.parquet")
    assert preds.num_rows == test_rows and len(set(preds.column("patch_id").to_pylist())) == test_rows
    assert {p.name for p in (tmp_path / "ev").iterdir()} >= {"metrics.json", "metrics.md", "per_class.png"}
    if not imported_before:
        assert not _ray_imported(), "the local path imported Ray"


def test_embed_one_batch_and_build_an_index_locally(random_checkpoint: Path, shards_v2: Path, tmp_path: Path) -> None:
    from bigearth.input.raydata import shard_tables, split_files
    from bigearth.retrieval.backends import open_index
    from bigearth.retrieval.indexer import PAYLOAD_COLUMNS, Embedder, build_index, upsert_embedded

    imported_before = _ray_imported()
    files, columns = split_files(str(shards_v2), "train", extra_columns=PAYLOAD_COLUMNS)
    table = next(iter(shard_tables(files[0], columns, str(shards_v2), None)))
    embedder = Embedder(str(random_checkpoint), device="cpu")
    out = embedder(table)
    sizes = embedder.runner.spec.vector_sizes
    assert {f"v_{n}" for n in sizes} <= set(out) and len(out["patch_id"]) == table.num_rows
    for n, size in sizes.items():
        assert out[f"v_{n}"].shape == (table.num_rows, size) and out[f"v_{n}"].dtype == np.float32
    assert [json.loads(p)["split"] for p in out["payload"]] == ["train"] * table.num_rows

    target = tmp_path / "unit-index"
    index = open_index(str(target), "one")
    try:
        builder = index.rebuild(sizes, {"model": "tiny"}, exclusive=False)
        per_split: dict[str, int] = {}
        assert upsert_embedded(builder, out, list(sizes), per_split) == table.num_rows
        builder.finish()
        assert builder.count() == table.num_rows and per_split == {"train": table.num_rows}
        builder.close()
    finally:
        index.close()

    report = build_index(
        str(random_checkpoint), str(shards_v2), str(tmp_path / "edge"), progress=False, executor=LocalExecutor(False)
    )
    manifest = Manifest.load(*open_fs(str(shards_v2)))
    assert report["upserted"] == report["points_in_collection"] == manifest.pairs
    assert report["per_split"] == manifest.splits
    if not imported_before:
        assert not _ray_imported(), "the local path imported Ray"


def test_band_stats_locally(shards_v2: Path) -> None:
    from bigearth.core.bands import ALL_BANDS
    from bigearth.input.stats import band_stats

    imported_before = _ray_imported()
    stats = band_stats(str(shards_v2), "train", executor=LocalExecutor(progress=False))
    manifest = Manifest.load(*open_fs(str(shards_v2)))
    rows = [pq.read_table(shards_v2 / s.path) for s in manifest.shards if s.split == "train"]
    b = next(band for band in ALL_BANDS if band.name == "B04")
    from bigearth.input.raydata import band_view

    pixels = np.concatenate([band_view(c, "B04").astype(np.float64).ravel() for t in rows for c in t["B04"].chunks])
    assert stats["B04"]["count"] == pixels.size == manifest.splits["train"] * b.size * b.size
    assert stats["B04"]["mean"] == pytest.approx(pixels.mean(), rel=1e-9)
    assert stats["B04"]["std"] == pytest.approx(pixels.std(), rel=1e-6)
    assert set(stats) == {band.name for band in ALL_BANDS}
    if not imported_before:
        assert not _ray_imported(), "the local path imported Ray"


@pytest.mark.parametrize("command", ["ingest", "evaluate", "index", "stats"])
def test_the_commands_take_an_executor_default_ray(command: str) -> None:
    from bigearth.cli import build_parser

    required = {
        "ingest": ["--archive", "a", "--out", "o"],
        "evaluate": ["--checkpoint", "c", "--data", "d", "--out", "o"],
        "index": ["--checkpoint", "c", "--data", "d", "--index", "i"],
        "stats": ["--shards", "s"],
    }[command]
    parser = build_parser()
    assert parser.parse_args([command, *required]).executor == "ray"
    assert parser.parse_args([command, *required, "--executor", "local"]).executor == "local"
    with pytest.raises(SystemExit):
        parser.parse_args([command, *required, "--executor", "dask"])


def test_stats_command_with_the_local_executor_runs_without_ray(
    shards_v2: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bigearth.cli import build_parser

    imported_before = _ray_imported()
    args = build_parser().parse_args(
        [
            "stats",
            "--shards",
            str(shards_v2),
            "--split",
            "validation",
            "--executor",
            "local",
            "--out",
            str(tmp_path / "s"),
        ]
    )
    assert args.func(args) == 0
    written = json.loads((tmp_path / "s").read_text())
    assert written["B02"]["count"] == Manifest.load(*open_fs(str(shards_v2))).splits["validation"] * 120 * 120
    if not imported_before:
        assert not _ray_imported(), "--executor local imported Ray"
