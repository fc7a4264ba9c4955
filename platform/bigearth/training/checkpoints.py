"""Checkpoint files: what a training checkpoint holds and how a model is loaded back (weights only)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bigearth.models.registry import create_model
from bigearth.storage import StorageOptions, join, open_fs

MODEL_FILE, STATE_FILE, META_FILE = "model.pt", "train_state.pt", "meta.json"


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or does not fit the model asked for."""


def save(directory: str, model: nn.Module, meta: dict[str, Any], train_state: dict[str, Any] | None = None) -> None:
    os.makedirs(directory, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(directory, MODEL_FILE))
    if train_state is not None:
        torch.save(train_state, os.path.join(directory, STATE_FILE))
    with open(os.path.join(directory, META_FILE), "w") as f:
        json.dump(meta, f, indent=1)


def read_meta(directory: str | Path, storage: StorageOptions | None = None) -> dict[str, Any]:
    """`meta.json` of a checkpoint folder (local path or URL)."""
    fs, root = open_fs(str(directory), storage)
    path = join(root, META_FILE)
    if not fs.exists(path):
        raise CheckpointError(f"{directory}: not a bigearth checkpoint (no {META_FILE})")
    meta: dict[str, Any] = json.loads(fs.cat(path))
    return meta


def find_best(run_dir: str | Path, metric: str = "val_macro_ap", storage: StorageOptions | None = None) -> str:
    """The checkpoint folder (path or URL) of a run with the highest `metric`; a checkpoint folder is returned as
    is."""
    url = str(run_dir)
    fs, root = open_fs(url, storage)
    if fs.exists(join(root, META_FILE)):
        return url
    scored = []
    for meta_path in sorted(fs.glob(join(root, "checkpoint_*", META_FILE))):
        value = json.loads(fs.cat(meta_path)).get("metrics", {}).get(metric)
        if value is not None:
            scored.append((value, meta_path.rsplit("/", 2)[-2]))
    if not scored:
        raise CheckpointError(f"{run_dir}: no checkpoint with {metric} found (expected checkpoint_*/{META_FILE})")
    best = max(scored)[1]
    return url.rstrip("/") + "/" + best if "://" in url else os.path.join(url, best)


def load_model(
    checkpoint: str | Path,
    *,
    expect_model: str | None = None,
    expect_classes: int | None = None,
    storage: StorageOptions | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Build the checkpoint's model and load its weights with `weights_only=True` (local path or URL)."""
    directory = find_best(checkpoint, storage=storage)
    meta = read_meta(directory, storage)
    name, classes = meta["model"]["name"], meta["num_classes"]
    if expect_model is not None and expect_model != name:
        raise CheckpointError(f"{directory}: holds a {name!r} model, expected {expect_model!r}")
    if expect_classes is not None and expect_classes != classes:
        raise CheckpointError(f"{directory}: trained for {classes} classes, expected {expect_classes}")
    kwargs = {k: v for k, v in meta["model"].items() if k != "name"}
    model = create_model(name, num_classes=classes, **kwargs)
    fs, root = open_fs(directory, storage)
    with fs.open(join(root, MODEL_FILE), "rb") as f:
        state = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{directory}: weights do not fit model {name!r}: {str(e)[:300]}") from None
    model.eval()
    return model, meta
