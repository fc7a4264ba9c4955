"""Fill an index with every pair of a shard set: an executor's workers embed (`Embedder`, the model loaded once per
worker: a Ray Data actor pool by default, a GPU each when asked for, or this process), the driver upserts into the
index in batches (`jobs/index.py`).

Every run builds a new version of the collection and switches to it only once it holds every pair it should
(`VectorIndex.rebuild` / `publish`): a service keeps answering from the live version throughout, a failed or killed
run leaves it as it was (the half-built version is removed then, or by the next run), and nothing of an earlier
model or of pairs no longer in the shards survives. `add=True` instead upserts into the live version, and only when
it was built from the same checkpoint (weights digest), shard set, bands and vectors (e.g. to add a split)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from bigearth.core.secrets import redact
from bigearth.core.storage import StorageOptions
from bigearth.execution.executors import Executor, Resources, default_executor
from bigearth.retrieval.backends import DEFAULT_COLLECTION, IndexSettings, VectorIndex, VectorIndexError, open_index

log = logging.getLogger(__name__)
PAYLOAD_COLUMNS = [
    "s1_name",
    "labels",
    "split",
    "country",
    "tile",
    "s2_acquisition",
    "epsg",
    "ulx",
    "uly",
    "contains_seasonal_snow",
    "contains_cloud_or_shadow",
]


class Embedder:
    """The unit of indexing, a callable class for an executor's `map_batches`: loads the model once per worker (a
    `ModelRunner`); embeds one batch: Arrow rows of a shard in; vectors (`v_<name>` columns) and JSON payloads out
    (`upsert_embedded` writes them)."""

    def __init__(self, checkpoint: Any, device: str | None = None, storage: StorageOptions | None = None) -> None:
        from bigearth.models.runner import ModelRunner

        self.runner = ModelRunner.from_checkpoint(checkpoint, device, storage)

    def __call__(self, table: pa.Table) -> dict[str, Any]:
        from bigearth.retrieval.schema import payloads

        _, vectors = self.runner.infer(self.runner.batch_from_table(table))
        rows = {c: table.column(c).to_pylist() for c in ["patch_id", *PAYLOAD_COLUMNS]}
        out: dict[str, Any] = {
            "patch_id": np.asarray(rows["patch_id"], dtype=object),
            "payload": np.asarray([json.dumps(p) for p in payloads(rows)], dtype=object),
        }
        for name, v in vectors.items():
            out[f"v_{name}"] = v.cpu().numpy().astype(np.float32)
        return out


def upsert_embedded(
    target: VectorIndex, batch: dict[str, Any], vectors: Sequence[str], per_split: dict[str, int] | None = None
) -> int:
    """Upsert one embedded batch (`Embedder`'s output) into `target`; count its pairs per split into `per_split`;
    return how many pairs it held."""
    ids = [str(x) for x in batch["patch_id"]]
    pl = [json.loads(x) for x in batch["payload"]]
    target.upsert(ids, {name: batch[f"v_{name}"] for name in vectors}, pl)
    if per_split is not None:
        for p in pl:
            per_split[p["split"]] = per_split.get(p["split"], 0) + 1
    return len(ids)


def build_index(
    checkpoint: str,
    data: str,
    target: str,
    collection: str = DEFAULT_COLLECTION,
    splits: list[str] | None = None,
    storage: StorageOptions | None = None,
    api_key: str | None = None,
    batch_size: int = 128,
    upsert_batch: int = 512,
    actors: int = 1,
    gpus_per_actor: float = 0,
    recreate: bool = False,
    settings: IndexSettings | None = None,
    progress: bool = True,
    add: bool = False,
    break_lock: bool = False,
    executor: Executor | None = None,
) -> dict[str, Any]:
    """Embed every pair of `splits` (default: all) of the shard set `data` into a new version of the collection and
    switch to it when complete (`recreate` is what every run does now; kept for callers); `add`: upsert into the
    live version instead (same checkpoint and shard set only); return a report.

    One job writes a collection at a time: its writer lock (`VectorIndex.writer_lock`: a lock file beside the
    embedded engine's folder, a marker collection on Qdrant) is held throughout and checked right before the
    switch (a job whose lock was taken over stops there, its version discarded); `break_lock` takes another's
    over. `executor`: where the embedding runs (default: Ray; `LocalExecutor`: in this process, no Ray)."""
    index = open_index(target, collection, api_key=api_key, settings=settings)
    try:
        with index.writer_lock("index", break_lock=break_lock) as lock:  # before any work: a second job stops here
            return _build_locked(
                index,
                lock,
                checkpoint,
                data,
                target,
                collection,
                splits,
                storage,
                batch_size,
                upsert_batch,
                actors,
                gpus_per_actor,
                progress,
                add,
                default_executor(executor),
            )
    finally:
        index.close()


def _build_locked(
    index: VectorIndex,
    lock: Any,
    checkpoint: str,
    data: str,
    target: str,
    collection: str,
    splits: list[str] | None,
    storage: StorageOptions | None,
    batch_size: int,
    upsert_batch: int,
    actors: int,
    gpus_per_actor: float,
    progress: bool,
    add: bool,
    executor: Executor,
) -> dict[str, Any]:
    from functools import partial

    from tqdm import tqdm

    from bigearth.input.raydata import shard_tables, split_files
    from bigearth.models.checkpoints import resolve, weights_digest
    from bigearth.shards.shardset import ShardSet

    t0 = time.perf_counter()
    ref = resolve(checkpoint, storage=storage)
    best, meta, spec = ref.path, ref.meta, ref.spec
    if spec.produces_maps:  # before any work: it would fail in every embedding worker instead
        raise ValueError(
            f"checkpoint {redact(checkpoint)!r} is a segmentation model (task: {spec.task}): it makes class maps, no "
            "vectors to index; index a classification model's checkpoint"
        )
    if spec.num_classes != 19:
        raise ValueError(f"{best}: the index uses the 19-class labels; this checkpoint has {spec.num_classes}")
    sizes = spec.vector_sizes
    total = sum(e.rows for e in ShardSet.open(data, storage).files(splits))  # an unknown split: named here

    described = {
        "model": meta["model"],
        "checkpoint": redact(best),
        "checkpoint_digest": weights_digest(best, storage),
        "bands": list(spec.bands),
        "num_classes": 19,
        "data": redact(data),
        "vector_kinds": {n: v.kind for n, v in spec.vectors.items()},
        "early_fusion": spec.early_fusion,  # from the spec: the service says why S1 -> S2 fails
    }
    builder = _target_version(index, sizes, described, add)
    try:
        files, columns = split_files(
            data, splits, bands=list(spec.bands), storage=storage, extra_columns=PAYLOAD_COLUMNS
        )
        batches = executor.map_batches(
            Embedder,
            files,
            read=partial(shard_tables, columns=columns, url=data, storage=storage),
            unit_kwargs={"checkpoint": ref, "storage": storage, "device": "cuda" if gpus_per_actor else None},
            batch_size=batch_size,
            out_batch_size=upsert_batch,
            desc=f"embed {collection}",
            resources=Resources(gpus=gpus_per_actor, concurrency=actors),
        )
        per_split: dict[str, int] = {}
        upserted = 0
        with tqdm(total=total, desc=f"index {collection}", unit="pair", disable=not progress) as bar:
            for b in batches:
                n = upsert_embedded(builder, b, list(sizes), per_split)
                upserted += n
                bar.update(n)
        t_embed = time.perf_counter() - t0
        if upserted != total:  # before the switch: the live version stays
            raise RuntimeError(f"indexed {upserted} pairs but the manifest lists {total} for splits {splits or 'all'}")
        builder.finish()
        count = builder.count()
        lock.verify()  # taken over meanwhile: another job writes this collection now, ours is discarded
        if not add:
            builder.publish(exclusive=True)
    except BaseException:
        if not add:
            log.error("indexing failed: %s keeps its live version; removing the unfinished one", index.describe())
            builder.discard()
        raise
    finally:
        builder.close()
    return {
        "target": redact(target),
        "collection": collection,
        "version": builder.version,
        "checkpoint": redact(best),
        "data": redact(data),
        "vectors": sizes,
        "vector_kinds": {n: v.kind for n, v in spec.vectors.items()},
        "upserted": upserted,
        "per_split": per_split,
        "points_in_collection": count,
        "embed_and_upsert_s": round(t_embed, 1),
        "total_s": round(time.perf_counter() - t0, 1),
    }


def _target_version(index: VectorIndex, sizes: dict[str, int], described: dict[str, Any], add: bool) -> VectorIndex:
    """Where a run writes: a new version (a rebuild), or with `add` the live one, if it was built from the same."""
    if not add:
        return index.rebuild(sizes, described, exclusive=True)  # the writer lock is held
    differs = index.differences(sizes, described)
    if differs.get("early_fusion", (0, 0))[0] is None:  # built before the capability was recorded: not a difference
        del differs["early_fusion"]
    if differs:
        said = "; ".join(f"{k} {a!r} there, {b!r} now" for k, (a, b) in differs.items())
        raise VectorIndexError(
            f"{index.describe()}: --add upserts only into a version built from the same checkpoint and shard set "
            f"({said}); run without --add to rebuild it"
        )
    return index
