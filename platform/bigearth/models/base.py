"""The model contract: what every registered model implements, and the config it carries into its checkpoints.

Evaluation, indexing and serving only ever talk to a model through this surface (`bigearth.models.runner`), so a
new model is one new file with a `@register_model` builder and no change anywhere else:

- `forward_features(batch) -> [B, num_features]`: the pooled features the head sees.
- `forward_head(x, pre_logits=False)`: the head (`pre_logits=True`: what enters its last linear layer).
- `forward(batch) -> logits`; `forward(batch, aux=True) -> (logits, auxiliary loss or None)` in training, so a
  model that owns a second objective computes it inside the one forward DDP sees; `aux_parameters()` lists the
  parameters only that objective trains.
- `vector_specs() -> {vector name: VectorSpec(size, batch groups it needs)}`: the vectors it writes to an index.
- `infer(batch) -> (logits or None, {vector name: [B, size]})`: one pass for both; logits need every group, a
  vector only the groups of its `VectorSpec` (an S1-only query gives the vectors S1 alone can make).
- `embed(batch)`: the vectors of `infer`.
- `spec`: a `ModelSpec` (registry name and builder arguments, bands, statistics, input size, resampling,
  nomenclature and class order, vectors, task), saved with every checkpoint.

A segmentation model (`task = "segmentation"`, `bigearth.models.segmentation`) keeps the same surface with maps:
`forward(batch)` gives per-pixel class logits `[B, classes, 120, 120]`, `infer` those logits and no vectors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class VectorSpec:
    """One named vector of a model: its size, the batch groups computing it needs, and what it is."""

    size: int
    groups: tuple[str, ...]
    kind: str = "features"  # features | logits | aligned


@dataclass(frozen=True)
class ModelSpec:
    """What a checkpoint's model is and what input it expects (`meta.json` key `spec`)."""

    name: str
    kwargs: dict[str, Any]
    num_classes: int
    classes: tuple[str, ...]
    bands: tuple[str, ...]
    stats: str | None
    img_size: int
    resample: str
    vectors: dict[str, VectorSpec] = field(default_factory=dict)
    #: what the model produces: `classification` (multi-label logits `[B, classes]`) or `segmentation` (class
    #: logits per pixel `[B, classes, 120, 120]`, on the reference maps' grid; no vectors)
    task: str = "classification"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["classes"], d["bands"] = list(self.classes), list(self.bands)
        d["vectors"] = {n: {**asdict(v), "groups": list(v.groups)} for n, v in self.vectors.items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelSpec:
        vectors = {
            n: VectorSpec(int(v["size"]), tuple(v["groups"]), v.get("kind", "features"))
            for n, v in d.get("vectors", {}).items()
        }
        return cls(
            name=d["name"],
            kwargs=dict(d.get("kwargs", {})),
            num_classes=int(d["num_classes"]),
            classes=tuple(d["classes"]),
            bands=tuple(d["bands"]),
            stats=d.get("stats"),
            img_size=int(d.get("img_size", 120)),
            resample=d.get("resample", "bilinear"),
            vectors=vectors,
            task=d.get("task", "classification"),
        )

    @property
    def produces_maps(self) -> bool:
        """A segmentation model: its output is a class map per patch, not one vector of class scores."""
        return self.task == "segmentation"

    @property
    def vector_sizes(self) -> dict[str, int]:
        return {n: v.size for n, v in self.vectors.items()}

    @property
    def early_fusion(self) -> bool:
        """One network over S1 and S2 together: bands of both sensors and no vector made from one sensor alone (no
        single-modality or cross-modal query). A spec saved without vectors: its builder and arguments say."""
        if len({"s1" if b in ("VV", "VH") else "s2" for b in self.bands}) < 2:
            return False
        if not self.vectors:
            return "early" in (self.name, self.kwargs.get("fusion"))
        return not [v for v in self.vectors.values() if len({g.split("_")[0] for g in v.groups}) == 1]

    @property
    def groups(self) -> dict[str, tuple[str, ...]]:
        """Batch group -> its bands, for every band of the model."""
        from bigearth.shards.decode import groups_for

        return groups_for(list(self.bands))


class BigEarthModel(nn.Module):
    """Base class of every registered model. Subclasses set `num_classes`, `num_features` and `bands` and implement
    `forward_features` and `forward_head`; the rest has defaults that fit a single-input model (one `fused`
    vector, the L2-normalised features)."""

    num_classes: int
    num_features: int
    bands: tuple[str, ...]
    stats: str | None = None
    img_size: int = 120
    resample: str = "bilinear"
    # set by `create_model`: the registry name and the builder's arguments, so a checkpoint rebuilds the model
    registry_name: str = ""
    builder_kwargs: dict[str, Any]
    #: `ModelSpec.task`: a segmentation model sets "segmentation"
    task: str = "classification"

    # ------------------------------------------------------------------ the contract
    def forward_features(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, batch: Mapping[str, torch.Tensor], aux: bool = False) -> Any:
        logits = self.forward_head(self.forward_features(batch))
        return (logits, None) if aux else logits

    def aux_parameters(self) -> list[nn.Parameter]:
        """Parameters trained only by the model's own second objective (`forward(aux=True)`): training clips their
        gradients apart from the classifier's, so that objective never rescales the classifier's step."""
        return []

    def input_groups(self) -> tuple[str, ...]:
        from bigearth.shards.decode import groups_for

        return tuple(groups_for(list(self.bands)))

    def vector_specs(self) -> dict[str, VectorSpec]:
        return {"fused": VectorSpec(int(self.num_features), self.input_groups(), "features")}

    def infer(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        if not set(self.input_groups()) <= set(batch):
            return None, {}
        features = self.forward_features(batch).float()
        return self.forward_head(features), {"fused": F.normalize(features, dim=1)}

    def embed(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.infer(batch)[1]

    # ------------------------------------------------------------------ what a checkpoint records
    @property
    def spec(self) -> ModelSpec:
        from bigearth.core.labels import class_names

        return ModelSpec(
            name=self.registry_name,
            kwargs=dict(getattr(self, "builder_kwargs", {})),
            num_classes=int(self.num_classes),
            classes=tuple(class_names(int(self.num_classes))),  # type: ignore[arg-type]
            bands=tuple(self.bands),
            stats=self.stats,
            img_size=int(self.img_size),
            resample=self.resample,
            vectors=self.vector_specs(),
            task=self.task,
        )
