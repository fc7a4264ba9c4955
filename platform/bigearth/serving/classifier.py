"""The model of a service as plain methods: a checkpoint loaded once, what it is (`describe`), and a batch of
patches classified and embedded (`infer_batch`). Serve batches requests into it (`bigearth.serving.deployments`);
`bigearth.serving.local` calls it in-process. No Ray."""

from __future__ import annotations

from typing import Any

import numpy as np

from bigearth.api.schemas import ModelInfo


class NotAClassificationModel(ValueError):
    """`checkpoint` names a checkpoint whose model makes maps (a segmentation model): no probabilities, no vectors."""


class ModelClassifier:
    """One model, loaded from `checkpoint` (a run folder, a checkpoint folder or a URL) with `cpus` threads, on
    `device` (default: CUDA when there is one; `ModelRunner`). A segmentation model's checkpoint is refused here,
    at start (`NotAClassificationModel`), not by every request after."""

    def __init__(self, checkpoint: str, cpus: float = 1.0, device: str | None = None) -> None:
        from bigearth.core.secrets import redact
        from bigearth.core.storage import StorageOptions
        from bigearth.models.checkpoints import load
        from bigearth.models.runner import ModelRunner

        loaded = load(checkpoint, storage=StorageOptions.from_env())  # resolved, read and digested once
        if loaded.spec.produces_maps:
            raise NotAClassificationModel(
                f"checkpoint {redact(checkpoint)!r} is a segmentation model (task: {loaded.spec.task}): serve it with "
                "segmentation_checkpoint (bigearth serve --segmentation-checkpoint)"
            )
        self.runner = ModelRunner(loaded, device, threads=int(cpus) if cpus >= 1 else None)
        spec = loaded.spec
        self.info = ModelInfo(
            name=loaded.name,
            version=loaded.version,
            bands=list(spec.bands),
            num_classes=spec.num_classes,
            classes=list(spec.classes),
        )

    def describe(self) -> dict[str, Any]:
        """The model (`ModelInfo`), its input groups, the groups each vector needs, the vector sizes, and whether it
        is an early-fusion model (from its spec)."""
        spec = self.runner.spec
        return {
            "model": self.info.model_dump(),
            "groups": {g: list(b) for g, b in self.runner.groups.items()},
            "vector_groups": {n: list(g) for n, g in self.runner.vector_groups.items()},
            "vectors": spec.vector_sizes,
            "early_fusion": spec.early_fusion,
        }

    def infer_batch(self, items: list[dict[str, np.ndarray]]) -> list[dict[str, Any]]:
        """A batch of patches (`{group: [1,C,H,W]}`) -> per patch: probabilities (when every group the head needs
        is present), vectors, and the batch size."""
        results = self.runner.infer_items(items)
        for r in results:
            r["batch_size"] = len(items)
        return results
