"""Evaluate a checkpoint on a split: batch inference through an executor (`Predictor`, one model per worker: a Ray
Data actor pool by default, or in this process), the paper's metrics, overall and per country and season
(`bigearth.evaluation.groups`), a Markdown table, a per-class and a per-group bar chart and the predictions as
Parquet (`jobs/evaluate.py`). A metadata subset (`bigearth.shards.subsets`) evaluates some countries or seasons
only: its rows are filtered before inference."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bigearth.core import labels as lab
from bigearth.core.records import write_bytes_atomic, write_json_atomic
from bigearth.core.secrets import redact
from bigearth.core.storage import StorageOptions, join, open_fs
from bigearth.evaluation.groups import MIN_GROUP_PAIRS, by_group, group_keys
from bigearth.execution.executors import Executor, Resources, default_executor
from bigearth.metrics.charts import by_group_chart, per_class_chart, percent
from bigearth.models.checkpoints import Checkpoint
from bigearth.shards.shardset import label_column
from bigearth.shards.subsets import SUBSET_COLUMNS, MetadataSubset, subset_record


class Predictor:
    """The unit of evaluation, a callable class for an executor's `map_batches`: loads the model once per worker (a
    `ModelRunner`); predicts one batch: Arrow rows of a shard in (only those `subset` selects), probabilities out,
    with each pair's `country` and `s2_acquisition` (datetime64[ms]) when the rows have them."""

    def __init__(
        self,
        checkpoint: str | Checkpoint,
        device: str | None = None,
        storage: StorageOptions | None = None,
        subset: MetadataSubset | None = None,
    ) -> None:
        from bigearth.models.runner import ModelRunner

        self.runner = ModelRunner.from_checkpoint(checkpoint, device, storage)
        self.nomenclature = self.runner.nomenclature
        self.subset = subset if subset is not None and subset.active else None

    def __call__(self, table: pa.Table) -> dict[str, Any]:
        if self.subset is not None:
            table = table.filter(pa.array(self.subset.mask(table)))
        column = label_column(self.nomenclature)
        if table.num_rows:
            batch = self.runner.batch_from_table(table)
            probs, ids = self.runner.predict(batch).cpu().numpy(), batch["patch_id"]
        else:  # nothing of this batch selected (`predict` reads none such: `selected_tables`)
            probs, ids = np.zeros((0, self.runner.spec.num_classes), np.float32), []
        out = {
            "patch_id": np.asarray(ids, dtype=object),
            "probabilities": probs,
            "labels": np.asarray([json.dumps(v) for v in table.column(column).to_pylist()], dtype=object),
        }
        if set(SUBSET_COLUMNS) <= set(table.column_names):
            out["country"] = np.asarray(table.column("country").to_pylist(), dtype=object)
            acquired = table.column("s2_acquisition").cast(pa.timestamp("ms"))
            out["s2_acquisition"] = acquired.to_numpy(zero_copy_only=False).astype("datetime64[ms]")
        return out


def predict(
    checkpoint: str | Checkpoint,
    data: str,
    split: str,
    storage: StorageOptions | None = None,
    batch_size: int = 128,
    actors: int = 1,
    gpus_per_actor: float = 0,
    executor: Executor | None = None,
    subset: MetadataSubset | None = None,
) -> Any:
    """Batches (dicts of numpy columns) of `patch_id`, `probabilities`, `labels` (JSON list), `country`,
    `s2_acquisition` for every pair of `split` (that `subset` selects: an `EmptySubsetError` naming the filter
    when none, before any model is loaded), predicted by `Predictor` through `executor` (default: Ray), and the
    checkpoint used (resolved once, here). Actors holding a GPU predict on CUDA or fail (never silently on the
    CPU)."""
    from functools import partial

    from bigearth.input.raydata import split_files
    from bigearth.models.checkpoints import resolve

    ref = resolve(checkpoint, storage=storage)
    spec = ref.spec
    files, columns = split_files(
        data,
        split,
        bands=list(spec.bands),
        nomenclature=spec.num_classes,
        storage=storage,
        extra_columns=SUBSET_COLUMNS,
    )
    if subset is not None and subset.active:
        from bigearth.input.loader import row_groups

        holding = {g.path for g in row_groups(data, split, storage, subset)}  # the metadata columns only
        files = [f for f in files if f["path"] in holding]  # files without a selected pair are not read
    batches = default_executor(executor).map_batches(
        Predictor,
        files,
        read=partial(selected_tables, columns=columns, url=data, storage=storage, subset=subset),
        unit_kwargs={
            "checkpoint": ref,
            "storage": storage,
            "device": "cuda" if gpus_per_actor else None,
            "subset": subset,
        },
        batch_size=batch_size,
        desc=f"predict {split}",
        resources=Resources(gpus=gpus_per_actor, concurrency=actors),
    )
    return batches, ref


def selected_tables(
    source: dict[str, Any],
    columns: list[str],
    url: str,
    storage: StorageOptions | None,
    subset: MetadataSubset | None = None,
) -> Iterator[pa.Table]:
    """The read of `predict`: `shard_tables` with only the rows `subset` selects, and no table left empty (a batch of
    no rows would reach the model, and Ray Data cannot join an empty batch's result to the others)."""
    from bigearth.input.raydata import shard_tables

    for table in shard_tables(source, columns, url, storage):
        keep = subset.mask(table) if subset is not None and subset.active else None
        if keep is None:
            yield table
        elif keep.any():
            yield table.filter(pa.array(keep))


def evaluate(
    checkpoint: str,
    data: str,
    split: str,
    out: str,
    storage: StorageOptions | None = None,
    actors: int = 1,
    executor: Executor | None = None,
    gpus_per_actor: float = 0,
    subset: MetadataSubset | None = None,
) -> dict[str, Any]:
    """Write metrics.json, metrics.md, per_class.png, by_group.png and predictions.parquet to `out`; return the
    metrics (`by_country`, `by_season`: `bigearth.evaluation.groups`). `executor`: where the predictions run
    (default: Ray; `LocalExecutor`: in this process, no Ray); `gpus_per_actor`: GPUs each of its `actors` holds
    (Ray); `subset`: the pairs evaluated (`bigearth.shards.subsets`; an `EmptySubsetError` when it selects none).
    A segmentation checkpoint writes its own figures (`bigearth.evaluation.segmentation`)."""
    from bigearth.models.checkpoints import resolve

    ref = resolve(checkpoint, storage=storage)
    if ref.spec.produces_maps:
        from bigearth.evaluation import segmentation

        return segmentation.evaluate(ref, data, split, out, storage, actors, executor, gpus_per_actor, subset=subset)
    batches, ref = predict(
        ref,
        data,
        split,
        storage,
        actors=actors,
        gpus_per_actor=gpus_per_actor,
        executor=executor,
        subset=subset,
    )
    best = ref.path
    classes = ref.spec.num_classes
    names = lab.class_names(classes)  # type: ignore[arg-type]
    ids: list[str] = []
    probs: list[np.ndarray] = []
    truth: list[list[str]] = []
    countries: list[Any] = []
    acquired: list[np.ndarray] = []
    for b in batches:
        ids.extend(str(x) for x in b["patch_id"])
        probs.append(np.asarray(b["probabilities"], dtype=np.float32))
        truth.extend(json.loads(x) for x in b["labels"])
        countries.extend(b["country"])
        acquired.append(np.asarray(b["s2_acquisition"], dtype="datetime64[ms]"))
    p = np.concatenate(probs) if probs else np.zeros((0, classes), np.float32)
    targets = lab.encode_many(truth, classes)  # type: ignore[arg-type]
    stamps = np.concatenate(acquired) if acquired else np.zeros(0, "datetime64[ms]")
    keys = group_keys(countries, stamps)

    def scores(rows: np.ndarray) -> dict[str, Any]:
        m = _scores(p[rows], targets[rows], classes)
        return {k: m[k] for k in GROUP_FIGURES}

    result = {
        "checkpoint": redact(best),
        "split": split,
        "data": redact(data),
        "subset": subset_record(subset),
        **_scores(p, targets, classes),
        "by_country": by_group(keys["country"], scores),
        "by_season": by_group(keys["season"], scores),
    }
    fs, root = open_fs(out, storage)  # a local folder or a URL (s3://...: a RayJob on Kubernetes)
    fs.makedirs(root, exist_ok=True)
    write_json_atomic(fs, join(root, "metrics.json"), result, indent=1)  # each output whole or not at all
    write_bytes_atomic(fs, join(root, "metrics.md"), metrics_markdown(result).encode())
    write_bytes_atomic(fs, join(root, "per_class.png"), per_class_chart(result))
    by = {"country": result["by_country"], "season": result["by_season"]}
    write_bytes_atomic(fs, join(root, "by_group.png"), by_group_chart(by, "macro_ap", "macro AP", split))
    table = pa.table(
        {
            "patch_id": pa.array(ids, pa.string()),
            "country": pa.array(countries, pa.string()),
            "s2_acquisition": pa.array(stamps, pa.timestamp("ms")),
            "probabilities": pa.FixedSizeListArray.from_arrays(pa.array(p.reshape(-1), pa.float32()), classes),
            "labels": pa.array(truth, pa.list_(pa.string())),
        }
    )
    with fs.open(join(root, "predictions.parquet"), "wb") as f:
        pq.write_table(table, f, compression="zstd")
    result["class_names"] = list(names)
    return result


#: The figures of each country and season (`by_country`, `by_season`), beside `pairs` and `few_pairs`.
GROUP_FIGURES = ("micro_f1", "macro_f1", "micro_ap", "macro_ap", "samples_f1")


def _scores(probs: np.ndarray, targets: np.ndarray, classes: int) -> dict[str, Any]:
    """The metric suite (`MultilabelMetrics`) of some predictions."""
    import torch

    from bigearth.metrics.multilabel import MultilabelMetrics

    metrics = MultilabelMetrics(classes)
    metrics.update(torch.from_numpy(probs), torch.from_numpy(targets))
    return metrics.compute()


def _plain(v: Any) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def metrics_markdown(m: dict[str, Any]) -> str:
    lines = [
        f"# Evaluation on `{m['split']}` ({m['samples']} pairs)",
        "",
        f"Checkpoint: `{m['checkpoint']}`",
        "",
        "| average | precision | recall | F1 | F2 | AP |",
        "|---|---|---|---|---|---|",
    ]
    for avg in ("micro", "macro", "samples"):
        cells = [percent(m.get(f"{avg}_{k}")) for k in ("precision", "recall", "f1", "f2", "ap")]
        lines.append(f"| {avg} | " + " | ".join(cells) + " |")
    missing = m.get("classes_without_positives") or []
    lines += [
        "",
        "Scores in %, threshold 0.5 for precision / recall / F1 / F2 (a class counts when its probability is above"
        " it); macro figures average over the classes with positives in the split"
        + (f" (none for: {', '.join(missing)})" if missing else "")
        + ".",
        "",
        "| Hamming loss | subset accuracy | one-error | coverage | ranking loss | LRAP |",
        "|---|---|---|---|---|---|",
        f"| {percent(m.get('hamming_loss'))} | {percent(m.get('subset_accuracy'))} | {percent(m.get('one_error'))} | "
        f"{_plain(m.get('coverage'))} | {percent(m.get('ranking_loss'))} | {percent(m.get('lrap'))} |",
        "",
        "In %, except coverage (labels down the ranking to reach every true label, 1 = the top one).",
        "",
        "| class | precision | recall | F1 | AP | support |",
        "|---|---|---|---|---|---|",
    ]
    for name, c in m["per_class"].items():
        lines.append(
            f"| {name} | {percent(c['precision'])} | {percent(c['recall'])} | {percent(c['f1'])} | "
            f"{percent(c['ap'])} | {c['support']} |"
        )
    lines += ["", "![per-class scores](per_class.png)", ""]
    lines += group_markdown(m)
    return "\n".join(lines)


def group_markdown(m: dict[str, Any]) -> list[str]:
    """The tables of `by_country` and `by_season` (groups of fewer than `MIN_GROUP_PAIRS` pairs marked)."""
    lines: list[str] = []
    if m.get("subset"):
        lines += [f"Evaluated on a subset of `{m['split']}`: `{json.dumps(m['subset'])}`.", ""]
    names = {
        "micro_f1": "micro F1",
        "macro_f1": "macro F1",
        "micro_ap": "micro AP",
        "macro_ap": "macro AP",
        "samples_f1": "sample F1",
    }
    for key, title in (("by_country", "country"), ("by_season", "season")):
        groups = m.get(key) or {}
        if not groups:
            continue
        lines += [
            f"## By {title}",
            "",
            f"| {title} | pairs | " + " | ".join(names[f] for f in GROUP_FIGURES) + " |",
            "|---|---|" + "---|" * len(GROUP_FIGURES),
        ]
        for name, g in groups.items():
            mark = " *" if g["few_pairs"] else ""
            cells = " | ".join(percent(g.get(f)) for f in GROUP_FIGURES)
            lines.append(f"| {name}{mark} | {g['pairs']} | {cells} |")
        lines.append("")
    if any(g["few_pairs"] for key in ("by_country", "by_season") for g in (m.get(key) or {}).values()):
        lines += [f"\\* fewer than {MIN_GROUP_PAIRS} pairs: figures noisy, not comparable.", ""]
    if m.get("by_country") or m.get("by_season"):
        lines += ["![scores by country and season](by_group.png)", ""]
    return lines
