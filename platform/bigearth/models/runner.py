"""One runner for a loaded model: its device, no-grad inference, and the batch groups it needs. Evaluation
(`bigearth.evaluation.classification.Predictor`), indexing (`bigearth.retrieval.indexer.Embedder`) and the Serve
`Classifier` all go through it, so preprocessing, device placement and the vectors they produce cannot drift apart."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from bigearth.models.checkpoints import LoadedModel


class ModelRunner:
    """`loaded` on `device` (default: CUDA when there is one; a CUDA device asked for by name and not there is an
    error, not a silent CPU); CPU threads capped at `threads` when given."""

    def __init__(self, loaded: LoadedModel, device: str | torch.device | None = None, threads: int | None = None):
        self.loaded = loaded
        self.spec = loaded.spec
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {self.device} asked for, but torch sees no CUDA device")
        self.model = loaded.model.to(self.device).eval()
        if self.device.type == "cpu" and threads:
            torch.set_num_threads(int(threads))
        self.groups: dict[str, tuple[str, ...]] = self.spec.groups  # every group the model reads, and its bands
        self.vector_groups = {n: v.groups for n, v in self.spec.vectors.items()}

    @classmethod
    def from_checkpoint(
        cls, checkpoint: Any, device: str | torch.device | None = None, storage: Any = None
    ) -> ModelRunner:
        """The runner of a checkpoint (a folder, a run folder or a resolved `Checkpoint`), loaded here."""
        from bigearth.models.checkpoints import load

        return cls(load(checkpoint, storage=storage), device)

    @property
    def nomenclature(self) -> int:
        return self.spec.num_classes

    def batch_from_table(self, table: Any) -> dict[str, Any]:
        """Arrow rows of a shard -> the model's batch on its device."""
        from bigearth.shards.decode import decode_batch, to_torch

        return to_torch(decode_batch(table, self.groups, self.nomenclature), self.device)

    @staticmethod
    def _inputs(batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        return {k: v for k, v in batch.items() if isinstance(v, torch.Tensor) and k not in ("labels", "mask")}

    def _require_task(self, task: str, call: str) -> None:
        if self.spec.task != task:
            other = "segment or map_probabilities" if self.spec.task == "segmentation" else "infer or predict"
            raise ValueError(
                f"{call} is for {task} models; this {self.spec.name!r} model's task is {self.spec.task}: use {other}"
            )

    @torch.no_grad()
    def map_probabilities(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """A segmentation model's per-pixel class probabilities (softmax), float32 `[B, classes, 120, 120]`."""
        self._require_task("segmentation", "map_probabilities")
        logits, _ = self.model.infer(self._inputs(batch))
        if logits is None:
            raise ValueError(
                f"the batch lacks groups the model needs: it has {sorted(batch)}, needs {list(self.groups)}"
            )
        return torch.softmax(logits.float(), dim=1)

    @torch.no_grad()
    def segment(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """A segmentation model's class map per patch: uint8 `[B, 120, 120]` class indices (argmax), on the CPU."""
        self._require_task("segmentation", "segment")
        logits, _ = self.model.infer(self._inputs(batch))
        if logits is None:
            raise ValueError(
                f"the batch lacks groups the model needs: it has {sorted(batch)}, needs {list(self.groups)}"
            )
        return logits.argmax(dim=1).to(torch.uint8).cpu()

    @torch.no_grad()
    def infer(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """(class probabilities, or None when a group the head needs is missing; vectors), float32. A
        classification model's only: a segmentation model's maps come from `segment`/`map_probabilities`."""
        self._require_task("classification", "infer")
        tensors = self._inputs(batch)
        logits, vectors = self.model.infer(tensors)
        probs = None if logits is None else torch.sigmoid(logits.float())
        return probs, {n: v.float() for n, v in vectors.items()}

    def predict(self, batch: Mapping[str, Any]) -> torch.Tensor:
        probs, _ = self.infer(batch)
        if probs is None:
            raise ValueError(
                f"the batch lacks groups the model needs: it has {sorted(batch)}, needs {list(self.groups)}"
            )
        return probs

    def infer_items(self, items: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, Any]]:
        """Patches of different group sets (`{group: [1, C, H, W]}`): each set stacked and run once; per patch
        `probabilities` (or None) and `vectors` as numpy."""
        results: list[dict[str, Any]] = [{} for _ in items]
        by_keys: dict[tuple[str, ...], list[int]] = {}
        for i, item in enumerate(items):
            by_keys.setdefault(tuple(sorted(item)), []).append(i)
        for keys, rows in by_keys.items():
            batch = {k: torch.from_numpy(np.concatenate([items[i][k] for i in rows])).to(self.device) for k in keys}
            probs, vectors = self.infer(batch)
            p = None if probs is None else probs.cpu().numpy()
            v = {n: t.cpu().numpy() for n, t in vectors.items()}
            for j, i in enumerate(rows):
                results[i] = {"probabilities": None if p is None else p[j], "vectors": {n: a[j] for n, a in v.items()}}
        return results
