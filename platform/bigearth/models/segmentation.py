"""S1/S2 land-cover segmentation: timm encoders as feature pyramids and a light FPN decoder, one class map per patch.

Same inputs, stem, registry and checkpoints as the classifiers (`bigearth.models.fusion`), another output: per-pixel
class logits `[B, classes, 120, 120]` on the reference maps' grid (BigEarthNet v2.0's CORINE map, 120 x 120 at 10 m),
whatever the stem's `img_size`. Fusions as for classification:

- `early`: one encoder over the S1 and S2 channels stacked;
- `late`: an S1 encoder and an S2 encoder, their feature maps concatenated level by level before the decoder;
- `s1`, `s2`: one modality.

The decoder (FPN style): a 1x1 lateral conv per encoder level, a top-down pathway summing each level with the
coarser one upsampled, a 3x3 conv on the finest merged level, a 1x1 head to the classes, upsampled bilinearly to
120 x 120. A segmentation model writes no vectors (`vector_specs() == {}`); `infer` gives its logits only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bigearth.models.base import BigEarthModel, VectorSpec
from bigearth.models.fusion import _bands, _s2_set, backbone
from bigearth.models.registry import register_segmentation_model
from bigearth.models.stem import InputStem

#: the side of a reference map (pixels): every segmentation model's output grid
MAP_SIZE = 120
#: the encoder levels the decoder reads: stride 4 and coarser (a stride-2 level would make the decoder costly)
MIN_REDUCTION = 4


class PyramidEncoder(nn.Module):
    """InputStem for a band set + a plain timm backbone (as a classifier's, `bigearth.models.fusion.backbone`):
    batch -> feature maps `[B, C, H, W]`, finest first, from timm's `forward_intermediates`.

    The backbone is built and `pretrained` loaded exactly as for a classifier (same state-dict keys, so a
    classifier's S2 backbone loads), then what follows its deepest level (final norm, head) is pruned, so every
    parameter takes part in a step (DDP). The levels read: stride 4 and coarser, the deepest of each stride (a ViT's
    blocks all have stride 16: its last). A backbone timm cannot give feature maps for, or not at `img_size`, is
    refused here, at build time, with a ValueError naming it."""

    def __init__(
        self,
        bands: str | Sequence[str],
        backbone_name: str,
        stats: str,
        pretrained: str | None,
        img_size: int = 120,
        resample: str = "bilinear",
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self.stem = InputStem(bands, stats=stats, size=img_size, mode=resample)
        model: Any = backbone(backbone_name, self.stem.in_chans, pretrained, img_size=img_size, **kwargs)
        info = getattr(model, "feature_info", None)
        if not (callable(getattr(model, "forward_intermediates", None)) and isinstance(info, list) and info):
            raise ValueError(
                f"backbone {backbone_name!r} gives no feature maps (timm's forward_intermediates and feature_info): "
                "it cannot be a segmentation encoder"
            )
        _check_patches(model, backbone_name, img_size)
        reductions = [int(f["reduction"]) for f in info]
        deepest = {r: i for i, r in enumerate(reductions) if r >= MIN_REDUCTION}  # per stride: its last level
        self.levels: list[int] = sorted(deepest.values()) or [len(info) - 1]
        self.channels: list[int] = [int(info[i]["num_chs"]) for i in self.levels]
        if callable(getattr(model, "prune_intermediate_layers", None)):
            model.prune_intermediate_layers(self.levels, prune_norm=True, prune_head=True)
        self.backbone = model
        _dry_run(self, backbone_name, img_size)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        x = self.stem(batch)
        if x.is_cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.features(x)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The backbone's maps of `self.levels` for a stem output `x`, NCHW."""
        maps: list[torch.Tensor] = self.backbone.forward_intermediates(  # type: ignore[operator]
            x, indices=self.levels, intermediates_only=True, output_fmt="NCHW"
        )
        return maps


def _check_patches(model: Any, name: str, img_size: int) -> None:
    """A patch embedding (ViT, Swin...) must tile the input: timm drops the pixels past the last whole patch, which
    would shift the map against the reference grid."""
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    sides = tuple(patch) if isinstance(patch, (tuple, list)) else (patch,) if isinstance(patch, int) else ()
    bad = [int(p) for p in sides if img_size % int(p)]
    if bad:
        raise ValueError(
            f"backbone {name!r}: its patch size {bad[0]} does not divide img_size {img_size} (timm would drop the "
            f"last {img_size % bad[0]} pixels of each row and column); use an img_size divisible by {bad[0]}"
        )


def _dry_run(encoder: PyramidEncoder, name: str, img_size: int) -> None:
    """One forward of a blank image in eval mode (no statistics change): a backbone that fails at `img_size`, or
    gives other channels than its feature_info says, is refused at build time."""
    net: Any = encoder.backbone
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            maps = encoder.features(torch.zeros(1, encoder.stem.in_chans, img_size, img_size))  # type: ignore[arg-type]
    except Exception as e:  # any timm failure, said with the backbone's name
        raise ValueError(
            f"backbone {name!r} gives no feature maps at img_size {img_size}: {type(e).__name__}: {str(e)[:300]}"
        ) from None
    finally:
        net.train(was_training)
    got = [int(m.shape[1]) if m.ndim == 4 else -1 for m in maps]
    if got != encoder.channels:
        raise ValueError(f"backbone {name!r}: feature maps of {got} channels, its feature_info says {encoder.channels}")


class FPNDecoder(nn.Module):
    """Feature maps (finest first) -> class logits `[B, classes, size, size]`."""

    def __init__(self, channels: Sequence[int], num_classes: int, width: int = 128, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, kernel_size=1) for c in channels)
        self.smooth = nn.Sequential(
            nn.Conv2d(width, width, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        self.drop = nn.Dropout2d(drop_rate)
        self.head = nn.Conv2d(width, num_classes, kernel_size=1)

    def forward(self, features: Sequence[torch.Tensor], size: int = MAP_SIZE) -> torch.Tensor:
        laterals = [conv(f) for conv, f in zip(self.lateral, features, strict=True)]
        x = laterals[-1]
        for lat in reversed(laterals[:-1]):  # top-down: the coarser sum upsampled onto the finer level
            x = lat + F.interpolate(x, size=lat.shape[-2:], mode="nearest")
        logits: torch.Tensor = self.head(self.drop(self.smooth(x)))
        return F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)


class SegmentationModel(BigEarthModel):
    """One pyramid encoder per modality group (one for early fusion), feature maps concatenated level by level,
    an FPN decoder: `forward(batch) -> logits [B, classes, 120, 120]`."""

    task = "segmentation"

    def __init__(
        self,
        encoders: dict[str, PyramidEncoder],
        num_classes: int,
        fusion: str,
        decoder_channels: int = 128,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        levels = {len(e.channels) for e in encoders.values()}
        if len(levels) != 1:
            raise ValueError(f"the encoders give different numbers of feature levels: {sorted(levels)}")
        self.encoders = nn.ModuleDict(encoders)
        self.fusion = fusion
        channels = [sum(cs) for cs in zip(*(e.channels for e in encoders.values()), strict=True)]
        self.num_classes = num_classes
        self.num_features = channels[-1]
        self.decoder = FPNDecoder(channels, num_classes, decoder_channels, drop_rate)
        first: Any = next(iter(encoders.values())).stem
        self.stats = first.stats_name
        self.img_size, self.resample = first.size, first.mode

    @property
    def bands(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(b for e in self.encoders.values() for b in e.stem.bands)  # type: ignore[union-attr]

    def forward_features(self, batch: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:  # type: ignore[override]
        """The fused feature maps, finest first (each level: the encoders' maps concatenated)."""
        per_encoder = [enc(batch) for enc in self.encoders.values()]
        return [torch.cat(level, dim=1) if len(level) > 1 else level[0] for level in zip(*per_encoder, strict=True)]

    def forward_head(self, x: Any, pre_logits: bool = False) -> torch.Tensor:
        if pre_logits:
            raise ValueError("a segmentation model has no pre-logits vector (task: segmentation)")
        out: torch.Tensor = self.decoder(x, MAP_SIZE)
        return out

    def forward(self, batch: Mapping[str, torch.Tensor], aux: bool = False) -> Any:
        logits = self.forward_head(self.forward_features(batch))
        return (logits, None) if aux else logits

    def vector_specs(self) -> dict[str, VectorSpec]:
        return {}

    def infer(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        if not set(self.input_groups()) <= set(batch):
            return None, {}
        return self.forward(batch).float(), {}


def _encoder(bands: str | Sequence[str], backbone: str, stats: str, pretrained: str | None, **kw: Any) -> Any:
    return PyramidEncoder(bands, backbone, stats, pretrained, **kw)


@register_segmentation_model
def seg_early(
    backbone: str = "resnet50",
    num_classes: int = 19,
    s2_bands: int = 10,
    stats: str = "v2",
    pretrained: str | None = None,
    drop_rate: float = 0.0,
    decoder_channels: int = 128,
    bands: Sequence[str] | None = None,
    **kwargs: Any,
) -> SegmentationModel:
    """S1 and S2 channels stacked into one encoder (12 or 14 channels), an FPN decoder."""
    enc = _encoder(_bands(bands, f"s1{_s2_set(s2_bands)}", "s1s2"), backbone, stats, pretrained, **kwargs)
    return SegmentationModel({"s1s2": enc}, num_classes, "early", decoder_channels, drop_rate)


@register_segmentation_model
def seg_late(
    backbone: str = "resnet50",
    num_classes: int = 19,
    s2_bands: int = 10,
    stats: str = "v2",
    pretrained: str | None = None,
    drop_rate: float = 0.0,
    decoder_channels: int = 128,
    **kwargs: Any,
) -> SegmentationModel:
    """An S1 encoder and an S2 encoder (`pretrained` weights for the S2 one), feature maps concatenated level by
    level, an FPN decoder."""
    if "bands" in kwargs:
        raise ValueError("late fusion takes no `bands`: its encoders read the S1 and the S2 band sets (s2_bands)")
    encoders = {
        "s1": _encoder("s1", backbone, stats, None, **kwargs),
        "s2": _encoder(_s2_set(s2_bands), backbone, stats, pretrained, **kwargs),
    }
    return SegmentationModel(encoders, num_classes, "late", decoder_channels, drop_rate)


@register_segmentation_model
def seg_s1(
    backbone: str = "resnet50",
    num_classes: int = 19,
    stats: str = "v2",
    pretrained: str | None = None,
    drop_rate: float = 0.0,
    decoder_channels: int = 128,
    bands: Sequence[str] | None = None,
    **kwargs: Any,
) -> SegmentationModel:
    """Sentinel-1 only (VV, VH), an FPN decoder."""
    enc = _encoder(_bands(bands, "s1", "s1"), backbone, stats, pretrained, **kwargs)
    return SegmentationModel({"s1": enc}, num_classes, "s1", decoder_channels, drop_rate)


@register_segmentation_model
def seg_s2(
    backbone: str = "resnet50",
    num_classes: int = 19,
    s2_bands: int = 10,
    stats: str = "v2",
    pretrained: str | None = None,
    drop_rate: float = 0.0,
    decoder_channels: int = 128,
    bands: Sequence[str] | None = None,
    **kwargs: Any,
) -> SegmentationModel:
    """Sentinel-2 only (10 or 12 bands), an FPN decoder."""
    enc = _encoder(_bands(bands, _s2_set(s2_bands), "s2"), backbone, stats, pretrained, **kwargs)
    return SegmentationModel({"s2": enc}, num_classes, "s2", decoder_channels, drop_rate)


@register_segmentation_model
def seg_tiny(
    num_classes: int = 19,
    fusion: str = "late",
    s2_bands: int = 10,
    stats: str = "v2",
    img_size: int = 60,
    decoder_channels: int = 32,
    **kwargs: Any,
) -> SegmentationModel:
    """timm's `test_resnet` (it gives feature maps) in any fusion, inputs resampled to `img_size` (60 px by
    default), a 32-channel decoder: a segmentation model CPU tests train in seconds. Maps stay 120 x 120."""
    builders = {"early": seg_early, "late": seg_late, "s1": seg_s1, "s2": seg_s2}
    if "backbone" in kwargs:
        raise ValueError(f"seg-tiny takes no backbone (it is built on test_resnet): use seg-{fusion} with backbone=...")
    if fusion not in builders:
        raise ValueError(f"fusion must be one of {sorted(builders)}, got {fusion!r}")
    extra = {} if fusion == "s1" else {"s2_bands": s2_bands}
    build: Any = builders[fusion]
    return build(  # type: ignore[no-any-return]
        backbone="test_resnet",
        num_classes=num_classes,
        stats=stats,
        img_size=img_size,
        decoder_channels=decoder_channels,
        **extra,
        **kwargs,
    )
