"""Checkpoints: what a checkpoint folder holds, which one of a run is best, and loading one back, in one place.

A checkpoint folder holds `model.pt` (the state dict), `meta.json` (the model's builder arguments, its `spec`, the
epoch's metrics, the training config) and, written by training, `train_state.pt` (optimizer, scheduler, loop).
`resolve(url)` finds the best checkpoint of a run (or takes a checkpoint folder as is) and reads its meta: cheap,
for a driver. `load(url or Checkpoint)` reads the weights once, builds the model and gives a `LoadedModel`
(model, spec, meta, path, digest) that evaluation, indexing and serving share.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from bigearth.core.records import RecordError, read_json, write_json_atomic
from bigearth.core.secrets import redact
from bigearth.core.storage import StorageOptions, join, open_fs
from bigearth.models.base import BigEarthModel, ModelSpec
from bigearth.models.registry import create_model

MODEL_FILE, STATE_FILE, META_FILE = "model.pt", "train_state.pt", "meta.json"

logger = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or does not fit the model asked for."""


def display_name(meta: dict[str, Any]) -> str:
    """`late`, or `tiny/late` for a model built with a fusion argument: what a service and the CLI call it."""
    m = meta["model"]
    return str(m["name"]) + (f"/{m['fusion']}" if "fusion" in m else "")


@dataclass(frozen=True)
class Checkpoint:
    """A resolved checkpoint folder (local path or URL) and its meta, weights not read."""

    path: str
    meta: dict[str, Any]

    @cached_property
    def spec(self) -> ModelSpec:
        """The model's spec; checkpoints written before specs were saved get it by building the model (no
        weights)."""
        if "spec" in self.meta:
            return ModelSpec.from_dict(self.meta["spec"])
        return build(self.meta).spec

    @property
    def name(self) -> str:
        return display_name(self.meta)


@dataclass
class LoadedModel:
    """A checkpoint loaded once: the model (eval mode, on the CPU), its spec and meta, where it came from, and the
    first 12 hex digits of the sha256 of its weights file."""

    model: BigEarthModel
    spec: ModelSpec
    meta: dict[str, Any]
    path: str
    digest: str

    @property
    def name(self) -> str:
        return display_name(self.meta)

    @property
    def version(self) -> str:
        """`<run>/<checkpoint>@<digest>`: names the weights a service answers with."""
        parts = self.path.rstrip("/").rsplit("/", 2)
        return f"{parts[-2]}/{parts[-1]}@{self.digest}" if len(parts) >= 2 else f"{parts[-1]}@{self.digest}"


def save(directory: str, model: BigEarthModel, meta: dict[str, Any], train_state: dict[str, Any] | None = None) -> None:
    """Write a checkpoint folder; the model's spec is added to `meta`, credentials are masked
    (`bigearth.core.secrets`)."""
    os.makedirs(directory, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(directory, MODEL_FILE))
    if train_state is not None:
        torch.save(train_state, os.path.join(directory, STATE_FILE))
    # meta.json last and whole (temporary name, then rename): it is what marks a folder as a checkpoint
    meta = redact({**meta, "spec": model.spec.to_dict()})  # no credentials (a tracking URI's password) in the folder
    write_json_atomic(None, os.path.join(directory, META_FILE), meta, indent=1)


def read_meta(directory: str | Path, storage: StorageOptions | None = None) -> dict[str, Any]:
    """`meta.json` of a checkpoint folder (local path or URL)."""
    fs, root = open_fs(str(directory), storage)
    path = join(root, META_FILE)
    if not fs.exists(path):
        _refuse_foreign(fs, root, str(directory))
        raise CheckpointError(f"{directory}: not a bigearth checkpoint (no {META_FILE})")
    try:
        return read_json(fs, path, "checkpoint's meta")
    except RecordError as e:
        raise CheckpointError(f"{e}: this checkpoint cannot be used; take another of its run") from None


def _refuse_foreign(fs: Any, root: str, url: str) -> None:
    if fs.exists(join(root, "config.json")) and fs.exists(join(root, "model.safetensors")):
        raise CheckpointError(
            f"{url}: a reBEN (ConfigILM) checkpoint, not a bigearth one: import it first with "
            f"`bigearth import-reben {url} OUT` (bigearth.models.reben)"
        )


def find_best(run_dir: str | Path, metric: str = "val_macro_ap", storage: StorageOptions | None = None) -> str:
    """The checkpoint folder (path or URL) of a run with the highest `metric`; a checkpoint folder is returned as
    is."""
    url = str(run_dir)
    fs, root = open_fs(url, storage)
    if fs.exists(join(root, META_FILE)):
        return url
    scored = []
    for meta_path in sorted(fs.glob(join(root, "checkpoint_*", META_FILE))):
        try:
            value = read_json(fs, meta_path, "checkpoint's meta").get("metrics", {}).get(metric)
        except RecordError as e:  # one damaged checkpoint does not hide the run's others
            logger.warning("%s: this checkpoint is skipped", e)
            continue
        if value is not None:
            scored.append((value, meta_path.rsplit("/", 2)[-2]))
    if not scored:
        _refuse_foreign(fs, root, url)
        raise CheckpointError(f"{run_dir}: no checkpoint with {metric} found (expected checkpoint_*/{META_FILE})")
    best = max(scored)[1]
    return url.rstrip("/") + "/" + best if "://" in url else os.path.join(url, best)


def resolve(
    checkpoint: str | Path | Checkpoint,
    *,
    expect_model: str | None = None,
    expect_classes: int | None = None,
    storage: StorageOptions | None = None,
) -> Checkpoint:
    """The best checkpoint of a run (or a checkpoint folder) and its meta, checked against what is expected."""
    if isinstance(checkpoint, Checkpoint):
        ref = checkpoint
    else:
        directory = find_best(checkpoint, storage=storage)
        ref = Checkpoint(directory, read_meta(directory, storage))
    name, classes = ref.meta["model"]["name"], ref.meta["num_classes"]
    if expect_model is not None and expect_model != name:
        raise CheckpointError(f"{ref.path}: holds a {name!r} model, expected {expect_model!r}")
    if expect_classes is not None and expect_classes != classes:
        raise CheckpointError(f"{ref.path}: trained for {classes} classes, expected {expect_classes}")
    return ref


def build(meta: dict[str, Any]) -> BigEarthModel:
    """The (untrained) model a checkpoint's meta describes (`pretrained` is not read again: the checkpoint's weights
    replace it)."""
    kwargs = {k: v for k, v in meta["model"].items() if k not in ("name", "pretrained")}
    model: Any = create_model(meta["model"]["name"], num_classes=meta["num_classes"], **kwargs)
    if not isinstance(model, BigEarthModel):
        raise CheckpointError(f"model {meta['model']['name']!r} is not a BigEarthModel (bigearth.models.base)")
    return model


def load(
    checkpoint: str | Path | Checkpoint,
    *,
    expect_model: str | None = None,
    expect_classes: int | None = None,
    storage: StorageOptions | None = None,
) -> LoadedModel:
    """Resolve (unless given a `Checkpoint`), read the weights once (`weights_only=True`), build and load the
    model; local path or URL."""
    ref = resolve(checkpoint, expect_model=expect_model, expect_classes=expect_classes, storage=storage)
    model = build(ref.meta)
    fs, root = open_fs(ref.path, storage)
    try:
        raw = fs.cat(join(root, MODEL_FILE))
    except FileNotFoundError:
        raise CheckpointError(f"{ref.path}: no {MODEL_FILE}") from None
    try:
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise CheckpointError(f"{ref.path}/{MODEL_FILE}: unreadable weights ({type(e).__name__}: {e})"[:400]) from None
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(
            f"{ref.path}: weights do not fit model {ref.meta['model']['name']!r}: {str(e)[:300]}"
        ) from None
    model.eval()
    return LoadedModel(model, model.spec, ref.meta, ref.path, digest_of([raw]))


def digest_of(chunks: Any) -> str:
    """The first 12 hex digits of the sha256 of the weights' bytes, given in pieces: what `LoadedModel.digest`
    says and an index records as `checkpoint_digest`."""
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()[:12]


def weights_digest(checkpoint: str, storage: StorageOptions | None = None) -> str:
    """`LoadedModel.digest` of a checkpoint folder without loading the model (its weights read in 4 MiB pieces)."""
    fs, root = open_fs(checkpoint, storage)
    try:
        with fs.open(join(root, MODEL_FILE), "rb") as f:
            return digest_of(iter(lambda: f.read(1 << 22), b""))
    except FileNotFoundError:
        raise CheckpointError(f"{checkpoint}: no {MODEL_FILE}") from None
