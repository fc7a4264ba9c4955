"""Checkpoint files: what a training checkpoint holds and how a model is loaded back (weights only)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bigearth.models.registry import create_model

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


def read_meta(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / META_FILE
    if not path.exists():
        raise CheckpointError(f"{directory}: not a bigearth checkpoint (no {META_FILE})")
    meta: dict[str, Any] = json.loads(path.read_text())
    return meta


def find_best(run_dir: str | Path, metric: str = "val_macro_ap") -> Path:
    """The checkpoint folder of a run with the highest `metric` (a checkpoint folder is returned as is)."""
    run = Path(run_dir)
    if (run / META_FILE).exists():
        return run
    candidates = [
        (read_meta(p).get("metrics", {}).get(metric), p)
        for p in sorted(run.glob("checkpoint_*"))
        if (p / META_FILE).exists()
    ]
    scored = [(m, p) for m, p in candidates if m is not None]
    if not scored:
        raise CheckpointError(f"{run_dir}: no checkpoint with {metric} found (expected checkpoint_*/{META_FILE})")
    return max(scored, key=lambda mp: mp[0])[1]


def load_model(
    checkpoint: str | Path, *, expect_model: str | None = None, expect_classes: int | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Build the checkpoint's model and load its weights with `weights_only=True`."""
    directory = find_best(checkpoint)
    meta = read_meta(directory)
    name, classes = meta["model"]["name"], meta["num_classes"]
    if expect_model is not None and expect_model != name:
        raise CheckpointError(f"{directory}: holds a {name!r} model, expected {expect_model!r}")
    if expect_classes is not None and expect_classes != classes:
        raise CheckpointError(f"{directory}: trained for {classes} classes, expected {expect_classes}")
    kwargs = {k: v for k, v in meta["model"].items() if k != "name"}
    model = create_model(name, num_classes=classes, **kwargs)
    state = torch.load(directory / MODEL_FILE, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{directory}: weights do not fit model {name!r}: {str(e)[:300]}") from None
    model.eval()
    return model, meta
