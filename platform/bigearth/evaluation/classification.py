"""Evaluate a checkpoint on a split: batch inference through an executor (`Predictor`, one model per worker: a Ray
Data actor pool by default, or in this process), the paper's metrics, a Markdown table, a per-class bar chart and
the predictions as Parquet (`jobs/evaluate.py`)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bigearth.core import labels as lab
from bigearth.core.records import write_bytes_atomic, write_json_atomic
from bigearth.core.secrets import redact
from bigearth.core.storage import StorageOptions, join, open_fs
from bigearth.execution.executors import Executor, Resources, default_executor
from bigearth.metrics.charts import per_class_chart, percent
from bigearth.models.checkpoints import Checkpoint
from bigearth.shards.shardset import label_column


class Predictor:
    """The unit of evaluation, a callable class for an executor's `map_batches`: loads the model once per worker (a
    `ModelRunner`); predicts one batch: Arrow rows of a shard in, probabilities out."""

    def __init__(
        self, checkpoint: str | Checkpoint, device: str | None = None, storage: StorageOptions | None = None
    ) -> None:
        from bigearth.models.runner import ModelRunner

        self.runner = ModelRunner.from_checkpoint(checkpoint, device, storage)
        self.nomenclature = self.runner.nomenclature

    def __call__(self, table: pa.Table) -> dict[str, Any]:
        batch = self.runner.batch_from_table(table)
        probs = self.runner.predict(batch).cpu().numpy()
        column = label_column(self.nomenclature)
        return {
            "patch_id": np.asarray(batch["patch_id"], dtype=object),
            "probabilities": probs,
            "labels": np.asarray([json.dumps(v) for v in table.column(column).to_pylist()], dtype=object),
        }


def predict(
    checkpoint: str | Checkpoint,
    data: str,
    split: str,
    storage: StorageOptions | None = None,
    batch_size: int = 128,
    actors: int = 1,
    gpus_per_actor: float = 0,
    executor: Executor | None = None,
) -> Any:
    """Batches (dicts of numpy columns) of `patch_id`, `probabilities`, `labels` (JSON list) for every pair of
    `split`, predicted by `Predictor` through `executor` (default: Ray), and the checkpoint used (resolved once,
    here). Actors holding a GPU predict on CUDA or fail (never silently on the CPU)."""
    from functools import partial

    from bigearth.input.raydata import shard_tables, split_files
    from bigearth.models.checkpoints import resolve

    ref = resolve(checkpoint, storage=storage)
    spec = ref.spec
    files, columns = split_files(data, split, bands=list(spec.bands), nomenclature=spec.num_classes, storage=storage)
    batches = default_executor(executor).map_batches(
        Predictor,
        files,
        read=partial(shard_tables, columns=columns, url=data, storage=storage),
        unit_kwargs={"checkpoint": ref, "storage": storage, "device": "cuda" if gpus_per_actor else None},
        batch_size=batch_size,
        desc=f"predict {split}",
        resources=Resources(gpus=gpus_per_actor, concurrency=actors),
    )
    return batches, ref


def evaluate(
    checkpoint: str,
    data: str,
    split: str,
    out: str,
    storage: StorageOptions | None = None,
    actors: int = 1,
    executor: Executor | None = None,
    gpus_per_actor: float = 0,
) -> dict[str, Any]:
    """Write metrics.json, metrics.md, per_class.png and predictions.parquet to `out`; return the metrics.
    `executor`: where the predictions run (default: Ray; `LocalExecutor`: in this process, no Ray);
    `gpus_per_actor`: GPUs each of its `actors` holds (Ray)."""
    from bigearth.metrics.multilabel import MultilabelMetrics

    batches, ref = predict(
        checkpoint, data, split, storage, actors=actors, gpus_per_actor=gpus_per_actor, executor=executor
    )
    best = ref.path
    classes = ref.spec.num_classes
    names = lab.class_names(classes)  # type: ignore[arg-type]
    ids: list[str] = []
    probs: list[np.ndarray] = []
    truth: list[list[str]] = []
    for b in batches:
        ids.extend(str(x) for x in b["patch_id"])
        probs.append(np.asarray(b["probabilities"], dtype=np.float32))
        truth.extend(json.loads(x) for x in b["labels"])
    p = np.concatenate(probs) if probs else np.zeros((0, classes), np.float32)
    import torch

    metrics = MultilabelMetrics(classes)
    metrics.update(torch.from_numpy(p), torch.from_numpy(lab.encode_many(truth, classes)))  # type: ignore[arg-type]
    result = {"checkpoint": redact(best), "split": split, "data": redact(data), **metrics.compute()}
    fs, root = open_fs(out, storage)  # a local folder or a URL (s3://...: a RayJob on Kubernetes)
    fs.makedirs(root, exist_ok=True)
    write_json_atomic(fs, join(root, "metrics.json"), result, indent=1)  # each output whole or not at all
    write_bytes_atomic(fs, join(root, "metrics.md"), metrics_markdown(result).encode())
    write_bytes_atomic(fs, join(root, "per_class.png"), per_class_chart(result))
    table = pa.table(
        {
            "patch_id": pa.array(ids, pa.string()),
            "probabilities": pa.FixedSizeListArray.from_arrays(pa.array(p.reshape(-1), pa.float32()), classes),
            "labels": pa.array(truth, pa.list_(pa.string())),
        }
    )
    with fs.open(join(root, "predictions.parquet"), "wb") as f:
        pq.write_table(table, f, compression="zstd")
    result["class_names"] = list(names)
    return result


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
    return "\n".join(lines)
