"""S1/S2 multi-label classifiers: early fusion, late fusion, and single-modality models on timm backbones.

Every model takes the batch of the input pipeline, runs the shared `InputStem` on its device and exposes the same
surface: `forward_features(batch) -> embedding` (pooled; retrieval uses it), `forward_head(embedding) -> logits`,
`forward(batch) -> logits`, `num_features`, `num_classes`. Late fusion also gives per-modality embeddings
(`forward_modalities`), so retrieval can search one modality with the other.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import timm
import torch
from torch import nn

from bigearth.models.registry import register_model
from bigearth.models.stem import InputStem


def backbone(name: str, in_chans: int, pretrained: str | None = None, **kwargs: Any) -> nn.Module:
    """A timm model as a pooled feature extractor (`num_classes=0`) for `in_chans` channels, trained from scratch
    unless `pretrained` names a local file or URL of a state dict."""
    model = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_chans, **kwargs)
    if pretrained:
        if "://" in pretrained:
            state = torch.hub.load_state_dict_from_url(pretrained, map_location="cpu", weights_only=True)
        else:
            state = torch.load(pretrained, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        try:
            missing, _unexpected = model.load_state_dict(state, strict=False)  # a classifier head is not needed
        except RuntimeError as e:
            raise ValueError(
                f"{pretrained}: weights do not fit {name} with {in_chans} input channels: {str(e)[:300]}"
            ) from None
        if missing:
            raise ValueError(f"{pretrained}: {len(missing)} backbone weights of {name} missing, e.g. {missing[:3]}")
    return model


class Encoder(nn.Module):
    """InputStem for a band set + a backbone: batch -> pooled embedding."""

    def __init__(
        self, bands: str, backbone_name: str, stats: str, pretrained: str | None, img_size: int = 120, **kwargs: Any
    ) -> None:
        super().__init__()
        self.stem = InputStem(bands, stats=stats, size=img_size)
        self.backbone = backbone(backbone_name, self.stem.in_chans, pretrained, **kwargs)
        self.num_features: int = self.backbone.num_features  # type: ignore[assignment]

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        x = self.stem(batch)
        if x.is_cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        out: torch.Tensor = self.backbone(x)
        return out


class FusionClassifier(nn.Module):
    """One encoder per modality group (one for early fusion), features concatenated, a linear head."""

    def __init__(self, encoders: dict[str, Encoder], num_classes: int, fusion: str, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.encoders = nn.ModuleDict(encoders)
        self.fusion = fusion
        self.num_features = sum(e.num_features for e in encoders.values())
        self.num_classes = num_classes
        self.drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes)

    @property
    def bands(self) -> tuple[str, ...]:
        return tuple(b for e in self.encoders.values() for b in e.stem.bands)  # type: ignore[union-attr]

    def forward_modalities(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-encoder embeddings: `{"s1": ..., "s2": ...}` (late fusion), `{"s1s2": ...}` (early)."""
        return {name: enc(batch) for name, enc in self.encoders.items()}

    def forward_features(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        parts = list(self.forward_modalities(batch).values())
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.drop(features))
        return out

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.forward_head(self.forward_features(batch))


def _s2_set(s2_bands: int) -> str:
    if s2_bands not in (10, 12):
        raise ValueError(f"s2_bands must be 10 or 12, got {s2_bands}")
    return f"s2-{s2_bands}"


@register_model
def early(
    backbone: str = "resnet50",
    num_classes: int = 19,
    s2_bands: int = 10,
    stats: str = "v2",
    pretrained: str | None = None,
    drop_rate: float = 0.0,
    **kwargs: Any,
) -> FusionClassifier:
    """S1 and S2 channels stacked into one backbone (12 or 14 channels)."""
    enc = Encoder(f"s1{_s2_set(s2_bands)}", backbone, stats, pretrained, **kwargs)
    return FusionClassifier({"s1s2": enc}, num_classes, "early", drop_rate)


@register_model
def late(
    backbone: str = "resnet50",
    num_classes: int = 19,
    s2_bands: int = 10,
    stats: str = "v2",
    pretrained: str | None = None,
    drop_rate: float = 0.0,
    **kwargs: Any,
) -> FusionClassifier:
    """An S1 encoder and an S2 encoder; pooled features concatenated, then the head."""
    encoders = {
        "s1": Encoder("s1", backbone, stats, None, **kwargs),
        "s2": Encoder(_s2_set(s2_bands), backbone, stats, pretrained, **kwargs),
    }
    return FusionClassifier(encoders, num_classes, "late", drop_rate)


@register_model
def s1(
    backbone: str = "resnet50",
    num_classes: int = 19,
    stats: str = "v2",
    pretrained: str | None = None,
    drop_rate: float = 0.0,
    **kwargs: Any,
) -> FusionClassifier:
    """Sentinel-1 only (VV, VH)."""
    return FusionClassifier({"s1": Encoder("s1", backbone, stats, pretrained, **kwargs)}, num_classes, "s1", drop_rate)


@register_model
def s2(
    backbone: str = "resnet50",
    num_classes: int = 19,
    s2_bands: int = 10,
    stats: str = "v2",
    pretrained: str | None = None,
    drop_rate: float = 0.0,
    **kwargs: Any,
) -> FusionClassifier:
    """Sentinel-2 only (10 or 12 bands)."""
    enc = Encoder(_s2_set(s2_bands), backbone, stats, pretrained, **kwargs)
    return FusionClassifier({"s2": enc}, num_classes, "s2", drop_rate)


@register_model
def tiny(
    num_classes: int = 19,
    fusion: str = "late",
    s2_bands: int = 10,
    stats: str = "v2",
    img_size: int = 60,
    **kwargs: Any,
) -> FusionClassifier:
    """timm's `test_resnet` backbone in any fusion, on inputs resampled to `img_size` (60 px by default, a
    quarter of the pixels): a model CPU tests train in seconds."""
    builders = {"early": early, "late": late, "s1": s1, "s2": s2}
    if fusion not in builders:
        raise ValueError(f"fusion must be one of {sorted(builders)}, got {fusion!r}")
    extra = {} if fusion == "s1" else {"s2_bands": s2_bands}
    build: Any = builders[fusion]
    return build(  # type: ignore[no-any-return]
        backbone="test_resnet", num_classes=num_classes, stats=stats, img_size=img_size, **extra, **kwargs
    )
