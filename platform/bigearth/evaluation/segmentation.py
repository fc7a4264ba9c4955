"""Evaluate a segmentation checkpoint on a split (`bigearth evaluate` dispatches here when the checkpoint's spec
produces maps): `Predictor` per batch through an executor (one model per worker) returns each patch's confusion
matrix, predicted class shares and counts; the driver sums them, overall and per country and season, into the figures
of `bigearth.metrics.segmentation` (conventions there and in docs/evaluation.md) and writes metrics.json, metrics.md,
per_class_iou.png, confusion.png and predictions.parquet."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bigearth.core import labels as lab
from bigearth.core.records import write_bytes_atomic, write_json_atomic
from bigearth.core.secrets import redact
from bigearth.core.storage import StorageOptions, join, open_fs
from bigearth.execution.executors import Executor, Resources, default_executor
from bigearth.metrics.charts import by_group_chart, percent
from bigearth.metrics.segmentation import (
    PRESENCE_SHARE,
    class_shares,
    confusion_matrix,
    presence_threshold,
    scores_from_confusion,
)
from bigearth.models.checkpoints import Checkpoint
from bigearth.shards.shardset import label_column
from bigearth.shards.subsets import MetadataSubset, subset_record

#: The shard columns a segmentation evaluation reads besides the bands and the labels.
MAP_COLUMNS = ("reference_map", "country", "s2_acquisition")
#: The image-level figures kept per group (the overall `image` has them all).
GROUP_IMAGE = ("micro_precision", "micro_recall", "micro_f1", "macro_f1", "samples_f1", "micro_ap", "macro_ap")


class Predictor:
    """The unit of a segmentation evaluation, a callable class for an executor's `map_batches`: loads the model once
    per worker (a `ModelRunner`); per batch of shard rows (with `reference_map`), per patch: its confusion matrix
    (flattened [C * C] int64, rows = reference), its predicted class shares, its scored and total pixels, whether it
    has a reference map, its country, acquisition time and labels (JSON list)."""

    def __init__(
        self, checkpoint: str | Checkpoint, device: str | None = None, storage: StorageOptions | None = None
    ) -> None:
        from bigearth.models.runner import ModelRunner

        self.runner = ModelRunner.from_checkpoint(checkpoint, device, storage)
        self.classes = self.runner.nomenclature

    def __call__(self, table: pa.Table) -> dict[str, Any]:
        import torch

        from bigearth.shards.decode import decode_batch, to_torch

        batch = decode_batch(table, self.runner.groups, self.classes, maps=True)
        mask = torch.from_numpy(np.ascontiguousarray(batch.pop("mask")))
        pred = self.runner.segment(to_torch(batch, self.runner.device)).cpu()
        cm = confusion_matrix(pred, mask, self.classes)
        n = len(cm)
        return {
            "patch_id": np.asarray(batch["patch_id"], dtype=object),
            "confusion": cm.reshape(n, -1).numpy(),
            "shares": class_shares(pred, self.classes).numpy(),
            "scored_pixels": cm.sum((1, 2)).numpy(),
            "pixels": np.full(n, mask[0].numel() if n else 0, np.int64),
            "has_map": table.column("reference_map").is_valid().to_numpy(zero_copy_only=False),
            "country": np.asarray(table.column("country").to_pylist(), dtype=object),
            "s2_acquisition": table.column("s2_acquisition").to_numpy(),
            "labels": np.asarray(
                [json.dumps(v) for v in table.column(label_column(self.classes)).to_pylist()], dtype=object
            ),
        }


@dataclass
class PatchResults:
    """Every evaluated patch, in the order predicted: the Predictor's columns gathered by the driver. `confusion` is
    int32 [N, C * C] (a cell counts at most one patch's pixels)."""

    ids: list[str]
    confusion: np.ndarray
    shares: np.ndarray
    scored: np.ndarray
    pixels: np.ndarray
    has_map: np.ndarray
    truth: list[list[str]]
    countries: list[Any]
    acquisitions: list[Any]

    @classmethod
    def gather(cls, batches: Any, classes: int) -> PatchResults:
        ids: list[str] = []
        truth: list[list[str]] = []
        countries: list[Any] = []
        acquisitions: list[Any] = []
        parts: dict[str, list[np.ndarray]] = {k: [] for k in ("confusion", "shares", "scored", "pixels", "has_map")}
        for b in batches:
            ids.extend(str(x) for x in b["patch_id"])
            truth.extend(json.loads(x) for x in b["labels"])
            countries.extend(b["country"])
            acquisitions.extend(b["s2_acquisition"])
            parts["confusion"].append(np.asarray(b["confusion"]).astype(np.int32))
            parts["shares"].append(np.asarray(b["shares"], dtype=np.float32))
            parts["scored"].append(np.asarray(b["scored_pixels"], dtype=np.int64))
            parts["pixels"].append(np.asarray(b["pixels"], dtype=np.int64))
            parts["has_map"].append(np.asarray(b["has_map"], dtype=bool))
        empty: dict[str, np.ndarray] = {
            "confusion": np.zeros((0, classes * classes), np.int32),
            "shares": np.zeros((0, classes), np.float32),
            "scored": np.zeros(0, np.int64),
            "pixels": np.zeros(0, np.int64),
            "has_map": np.zeros(0, bool),
        }
        arrays: dict[str, np.ndarray] = {k: np.concatenate(v) if v else empty[k] for k, v in parts.items()}
        return cls(ids=ids, truth=truth, countries=countries, acquisitions=acquisitions, **arrays)


def figures(
    p: PatchResults,
    indices: np.ndarray | None,
    classes: int,
    presence_share: float = PRESENCE_SHARE,
    image: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """The figures of the patches at `indices` (None: all): the pixel figures of their summed confusion, the patch
    and pixel counts, and the image-level figures (`image`: only those keys; None: all of them)."""
    import torch

    from bigearth.metrics.multilabel import MultilabelMetrics

    idx = np.arange(len(p.ids)) if indices is None else np.asarray(indices, dtype=np.int64)
    names = lab.class_names(classes)  # type: ignore[arg-type]
    cm = p.confusion[idx].sum(0, dtype=np.int64).reshape(classes, classes)
    out = scores_from_confusion(cm, names)
    out["reference_pixels"] = dict(zip(names, (int(x) for x in cm.sum(1)), strict=True))
    out["pixels"] = int(p.pixels[idx].sum())
    out["patches"] = len(idx)
    out["unscored_patches"] = int((p.scored[idx] == 0).sum())
    out["patches_without_map"] = int((~p.has_map[idx]).sum())
    if len(idx):
        metric = MultilabelMetrics(classes, threshold=presence_threshold(presence_share))
        truth = lab.encode_many([p.truth[i] for i in idx], classes)  # type: ignore[arg-type]
        metric.update(torch.from_numpy(p.shares[idx]), torch.from_numpy(truth))
        full = metric.compute()
        out["image"] = full if image is None else {k: full[k] for k in image}
    else:
        out["image"] = None
    return out


def aggregate(p: PatchResults, classes: int, presence_share: float = PRESENCE_SHARE) -> dict[str, Any]:
    """The overall figures, and per country and per season (`bigearth.evaluation.groups.by_group`: the groups
    partition the patches, so their confusions and counts sum to the overall ones)."""
    from bigearth.evaluation.groups import by_group, group_keys

    result = figures(p, None, classes, presence_share)
    result["presence_share"] = presence_share
    keys = group_keys(p.countries, p.acquisitions)

    def of(indices: np.ndarray) -> dict[str, Any]:
        return figures(p, indices, classes, presence_share, image=GROUP_IMAGE)

    result["by_country"] = by_group(keys["country"], of)
    result["by_season"] = by_group(keys["season"], of)
    return result


def subset_tables(source: dict[str, Any], subset: MetadataSubset | None, **read: Any) -> Iterator[pa.Table]:
    """`shard_tables` of one shard file, keeping the rows `subset` selects (all when None); no empty table."""
    from bigearth.input.raydata import shard_tables

    for table in shard_tables(source, **read):
        if subset is not None and subset.active:
            table = table.filter(pa.array(subset.mask(table)))
        if table.num_rows:
            yield table


def predict(
    checkpoint: Checkpoint,
    data: str,
    split: str,
    storage: StorageOptions | None = None,
    batch_size: int = 64,
    actors: int = 1,
    gpus_per_actor: float = 0,
    executor: Executor | None = None,
    subset: MetadataSubset | None = None,
) -> Any:
    """Batches of the Predictor's columns for every pair of `split` (of `subset` only, when given) through
    `executor` (default: Ray). A shard set ingested without reference maps is refused (there is nothing to score
    the maps against); a subset that selects nothing is an `EmptySubsetError` naming the filter."""
    from functools import partial

    from bigearth.input.raydata import read_columns, split_files
    from bigearth.shards.decode import NoReferenceMaps
    from bigearth.shards.shardset import ShardSet
    from bigearth.shards.subsets import check_selected

    manifest = ShardSet.open(data, storage).manifest
    if not manifest.source.get("reference_maps"):
        raise NoReferenceMaps(
            f"{redact(data)}: this shard set has no reference maps (its archive had none when ingested); a"
            " segmentation checkpoint is evaluated on shards ingested from a v2 archive with Reference_Maps"
        )
    spec = checkpoint.spec
    files, columns = split_files(data, split, bands=list(spec.bands), nomenclature=spec.num_classes, storage=storage)
    columns += [c for c in MAP_COLUMNS if c not in columns]
    if subset is not None and subset.active:  # before any model is loaded: an empty selection names its filter
        check_selected(subset, split, read_columns(data, ["country", "s2_acquisition"], split, storage))
    return default_executor(executor).map_batches(
        Predictor,
        files,
        read=partial(subset_tables, subset=subset, columns=columns, url=data, storage=storage),
        unit_kwargs={"checkpoint": checkpoint, "storage": storage, "device": "cuda" if gpus_per_actor else None},
        batch_size=batch_size,
        desc=f"segment {split}",
        resources=Resources(gpus=gpus_per_actor, concurrency=actors),
    )


def evaluate(
    checkpoint: Checkpoint,
    data: str,
    split: str,
    out: str,
    storage: StorageOptions | None = None,
    actors: int = 1,
    executor: Executor | None = None,
    gpus_per_actor: float = 0,
    presence_share: float = PRESENCE_SHARE,
    subset: MetadataSubset | None = None,
) -> dict[str, Any]:
    """Write metrics.json, metrics.md, per_class_iou.png, confusion.png, by_group.png (mIoU by country and season)
    and predictions.parquet to `out`; return
    the metrics (with `class_names`). `subset`: only the pairs of these countries / seasons."""
    from bigearth.metrics.segmentation_charts import confusion_chart, per_class_iou_chart

    classes = checkpoint.spec.num_classes
    names = list(lab.class_names(classes))  # type: ignore[arg-type]
    batches = predict(
        checkpoint, data, split, storage, actors=actors, gpus_per_actor=gpus_per_actor, executor=executor, subset=subset
    )
    p = PatchResults.gather(batches, classes)
    figs = aggregate(p, classes, presence_share)
    result = {
        "checkpoint": redact(checkpoint.path),
        "split": split,
        "data": redact(data),
        "task": "segmentation",
        "subset": subset_record(subset),
    }
    result.update(figs)
    cm = p.confusion.sum(0, dtype=np.int64).reshape(classes, classes)
    fs, root = open_fs(out, storage)
    fs.makedirs(root, exist_ok=True)
    write_json_atomic(fs, join(root, "metrics.json"), result, indent=1)
    write_bytes_atomic(fs, join(root, "metrics.md"), metrics_markdown(result).encode())
    write_bytes_atomic(fs, join(root, "per_class_iou.png"), per_class_iou_chart(result))
    write_bytes_atomic(fs, join(root, "confusion.png"), confusion_chart(cm, names, split))
    by = {"country": result["by_country"], "season": result["by_season"]}
    write_bytes_atomic(fs, join(root, "by_group.png"), by_group_chart(by, "miou", "mIoU", split))
    table = pa.table(
        {
            "patch_id": pa.array(p.ids, pa.string()),
            "shares": pa.FixedSizeListArray.from_arrays(pa.array(p.shares.reshape(-1), pa.float32()), classes),
            "scored_pixels": pa.array(p.scored, pa.int64()),
            "has_map": pa.array(p.has_map, pa.bool_()),
            "confusion": pa.FixedSizeListArray.from_arrays(
                pa.array(p.confusion.reshape(-1), pa.int32()), classes * classes
            ),
            "labels": pa.array(p.truth, pa.list_(pa.string())),
        }
    )
    with fs.open(join(root, "predictions.parquet"), "wb") as f:
        pq.write_table(table, f, compression="zstd")
    result["class_names"] = names
    return result


def _group_rows(groups: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "| group | pairs | mIoU | pixel accuracy | scored pixels | image micro F1 | image macro F1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, g in groups.items():
        image = g.get("image") or {}
        mark = " (few pairs)" if g.get("few_pairs") else ""
        lines.append(
            f"| {name}{mark} | {g['pairs']} | {percent(g['miou'])} | {percent(g['pixel_accuracy'])} | "
            f"{g['scored_pixels']} | {percent(image.get('micro_f1'))} | {percent(image.get('macro_f1'))} |"
        )
    return lines


def metrics_markdown(m: dict[str, Any]) -> str:
    image = m.get("image") or {}
    share = m["presence_share"]
    missing = m.get("classes_without_pixels") or []
    lines = [
        f"# Segmentation evaluation on `{m['split']}` ({m['patches']} pairs)",
        "",
        f"Checkpoint: `{m['checkpoint']}`",
        "",
        *([f"Evaluated on a subset of `{m['split']}`: `{json.dumps(m['subset'])}`.", ""] if m.get("subset") else []),
        "| mIoU | pixel accuracy | frequency-weighted IoU | scored pixels | pixels | unscored pairs |"
        " pairs without a map |",
        "|---|---|---|---|---|---|---|",
        f"| {percent(m['miou'])} | {percent(m['pixel_accuracy'])} | {percent(m['fw_iou'])} | {m['scored_pixels']} |"
        f" {m['pixels']} | {m['unscored_patches']} | {m['patches_without_map']} |",
        "",
        "Scores in %. A pixel is scored when its reference class is one of the 19 (pixels whose CORINE code has no"
        " 19-class target, and every pixel of a pair ingested without a reference map, are ignored); IoU ="
        " TP / (TP + FP + FN) over the scored pixels; mIoU averages the classes with reference pixels"
        + (f" (none for: {', '.join(missing)})" if missing else "")
        + "; frequency-weighted IoU weights each class's IoU by its share of the scored pixels. An unscored pair"
        " has no scored pixel and adds nothing to the pixel figures.",
        "",
        f"Image level: a class is predicted present when its predicted map covers at least {100 * share:g} % of"
        " the pair's pixels; truth: the pair's labels.",
        "",
        "| average | precision | recall | F1 | AP |",
        "|---|---|---|---|---|",
    ]
    for avg in ("micro", "macro", "samples"):
        cells = [percent(image.get(f"{avg}_{k}")) for k in ("precision", "recall", "f1", "ap")]
        lines.append(f"| {avg} | " + " | ".join(cells) + " |")
    lines += ["", "| class | IoU | reference pixels |", "|---|---|---|"]
    for name, iou in m["per_class_iou"].items():
        lines.append(f"| {name} | {percent(iou)} | {m['reference_pixels'][name]} |")
    lines += ["", "![per-class IoU](per_class_iou.png)", "", "![confusion matrix](confusion.png)", ""]
    lines += ["![mIoU by country and season](by_group.png)", ""]
    for title, key in (("By country", "by_country"), ("By season", "by_season")):
        lines += [f"## {title}", "", *_group_rows(m[key]), ""]
    lines.append("Groups marked *few pairs* have too few pairs for their figures to be compared.")
    lines.append("")
    return "\n".join(lines)
