"""The segmentation model of a service as plain methods: a checkpoint of a model that produces maps, loaded once,
what it is (`describe`), and a batch of patches turned into class maps (`segment_batch`). Serve batches requests
into it (`bigearth.serving.deployments.Segmenter`); `bigearth.serving.local` calls it in-process. No Ray."""

from __future__ import annotations

from typing import Any

import numpy as np

from bigearth.api.schemas import ModelInfo
from bigearth.core.labels import BEN19


class NotASegmentationModel(ValueError):
    """`segmentation_checkpoint` names a checkpoint whose model makes no maps (a classifier)."""


class ModelSegmenter:
    """One segmentation model, loaded from `checkpoint` (a run folder, a checkpoint folder or a URL) with `cpus`
    threads, on `device` (default: CUDA when there is one; `ModelRunner`)."""

    def __init__(self, checkpoint: str, cpus: float = 1.0, device: str | None = None) -> None:
        from bigearth.core.storage import StorageOptions
        from bigearth.models.checkpoints import load
        from bigearth.models.runner import ModelRunner

        loaded = load(checkpoint, storage=StorageOptions.from_env())
        spec = loaded.spec
        if not spec.produces_maps:
            raise NotASegmentationModel(
                f"segmentation_checkpoint {checkpoint!r}: its model {loaded.name!r} is a {spec.task} model, it makes "
                "no class maps; give the checkpoint of a segmentation model (seg-tiny, seg-late, ...)"
            )
        if list(spec.classes) != list(BEN19):
            raise NotASegmentationModel(
                f"segmentation_checkpoint {checkpoint!r}: maps are drawn in the 19 classes' colours; its model "
                f"{loaded.name!r} has {spec.num_classes} classes"
            )
        self.runner = ModelRunner(loaded, device, threads=int(cpus) if cpus >= 1 else None)
        self.info = ModelInfo(
            name=loaded.name,
            version=loaded.version,
            bands=list(spec.bands),
            num_classes=spec.num_classes,
            classes=list(spec.classes),
        )

    def describe(self) -> dict[str, Any]:
        """The model (`ModelInfo`) and its input groups (every one of them is needed)."""
        return {"model": self.info.model_dump(), "groups": {g: list(b) for g, b in self.runner.groups.items()}}

    def segment_batch(self, items: list[dict[str, np.ndarray]]) -> list[dict[str, Any]]:
        """A batch of patches (`{group: [1,C,H,W]}`, every group of the model) -> per patch: `map`, uint8 class
        indices `[120, 120]`, and the batch size. Patches of the same groups run as one batch."""
        import torch

        results: list[dict[str, Any]] = [{} for _ in items]
        by_keys: dict[tuple[str, ...], list[int]] = {}
        for i, item in enumerate(items):
            by_keys.setdefault(tuple(sorted(item)), []).append(i)
        for keys, rows in by_keys.items():
            device = self.runner.device
            batch = {k: torch.from_numpy(np.concatenate([items[i][k] for i in rows])).to(device) for k in keys}
            maps = self.runner.segment(batch).cpu().numpy().astype(np.uint8, copy=False)
            for j, i in enumerate(rows):
                results[i] = {"map": maps[j], "batch_size": len(items)}
        return results
