"""S1/S2 multi-label classifiers: early fusion, late fusion, and single-modality models on timm backbones.

Every model takes the batch of the input pipeline, runs the shared `InputStem` on its device and implements the
model contract (`bigearth.models.base`). Vectors: `fused` (the pooled features the head sees, L2-normalised) and,
for each encoder of a modality (`s1`, `s2`):

- `cross_modal: aligned` (models with an S1 and an S2 encoder: `late`, `tiny` late): a projection head per modality
  into one normalised space, trained with a contrastive objective between the two halves of a pair
  (`bigearth.models.align`); an S1 query is searched against S2 vectors in that space.
- `cross_modal: logits` (and every model with one encoder): that modality's share of the class logits,
  `W[:, slice] @ features`, in the label space.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

from bigearth.models.align import AlignConfig, Projection, alignment_loss
from bigearth.models.base import BigEarthModel, VectorSpec
from bigearth.models.registry import register_model
from bigearth.models.stem import InputStem

logger = logging.getLogger(__name__)


#: timm arguments some architectures do not take; left out for those (with a warning), as ConfigILM does
OPTIONAL_TIMM_ARGS = ("img_size", "drop_path_rate")


def create_timm(name: str, **kwargs: Any) -> nn.Module:
    """`timm.create_model(name, pretrained=False, **kwargs)`. `img_size` (a ViT's position embeddings are sized by
    it; a ResNet has no such argument) and `drop_path_rate` (ConvMixer has none) go only to architectures that take
    them: ConfigILM drops an argument a timm model refuses, so the published reBEN models were built that way."""
    while True:
        try:
            return timm.create_model(name, pretrained=False, **kwargs)
        except TypeError as e:
            refused = [k for k in OPTIONAL_TIMM_ARGS if k in kwargs and f"'{k}'" in str(e)]
            if not refused:
                raise
            if refused[0] != "img_size":  # every CNN refuses img_size: only the others are worth a word
                logger.warning("timm %s takes no %s: built without it (as ConfigILM does)", name, refused[0])
            kwargs.pop(refused[0])


def backbone(name: str, in_chans: int, pretrained: str | None = None, **kwargs: Any) -> nn.Module:
    """A timm model as a pooled feature extractor (`num_classes=0`) for `in_chans` channels, trained from scratch
    unless `pretrained` names a local file or URL of a state dict."""
    model = create_timm(name, num_classes=0, in_chans=in_chans, **kwargs)
    load_pretrained(model, name, in_chans, pretrained)
    return model


def load_pretrained(model: nn.Module, name: str, in_chans: int, pretrained: str | None) -> None:
    """Load a local file's or a URL's state dict into a timm backbone (a classifier head it lacks is not needed)."""
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


class Encoder(nn.Module):
    """InputStem for a band set + a backbone: batch -> pooled embedding."""

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
        self.backbone = backbone(backbone_name, self.stem.in_chans, pretrained, img_size=img_size, **kwargs)
        self.num_features: int = self.backbone.num_features  # type: ignore[assignment]

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        x = self.stem(batch)
        if x.is_cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        out: torch.Tensor = self.backbone(x)
        return out


MODALITY_VECTORS = ("s1", "s2")


class FusionClassifier(BigEarthModel):
    """One encoder per modality group (one for early fusion), features concatenated, a linear head."""

    def __init__(
        self,
        encoders: dict[str, Encoder],
        num_classes: int,
        fusion: str,
        drop_rate: float = 0.0,
        retrieval: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.encoders = nn.ModuleDict(encoders)
        self.fusion = fusion
        self.num_features = sum(e.num_features for e in encoders.values())
        self.num_classes = num_classes
        self.drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes)
        # the projection heads come last, so the encoders and the head start from the same weights either way
        self.align_cfg = AlignConfig.from_dict(retrieval)
        self.aligned = self.align_cfg.cross_modal == "aligned" and set(encoders) == set(MODALITY_VECTORS)
        if self.aligned:
            with torch.random.fork_rng(devices=[]):  # the global RNG as without heads: same dropout masks after
                self.align = nn.ModuleDict(
                    {n: Projection(encoders[n].num_features, self.align_cfg.dim) for n in MODALITY_VECTORS}
                )
        first: Any = next(iter(encoders.values())).stem
        self.stats = first.stats_name
        self.img_size, self.resample = first.size, first.mode

    @property
    def bands(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(b for e in self.encoders.values() for b in e.stem.bands)  # type: ignore[union-attr]

    def aux_parameters(self) -> list[nn.Parameter]:
        return list(self.align.parameters()) if self.aligned else []

    def encoder_groups(self) -> dict[str, tuple[str, ...]]:
        """Encoder name -> the batch groups it reads (`{"s1": ("s1",), "s2": ("s2_10m", "s2_20m")}`)."""
        from bigearth.shards.decode import groups_for

        return {name: tuple(groups_for(list(enc.stem.bands))) for name, enc in self._encoders().items()}

    def _encoders(self) -> dict[str, Encoder]:
        return dict(self.encoders.items())  # type: ignore[arg-type]

    def vector_specs(self) -> dict[str, VectorSpec]:
        specs = {"fused": VectorSpec(int(self.num_features), self.input_groups(), "features")}
        for name, groups in self.encoder_groups().items():
            if name in MODALITY_VECTORS:
                if self.aligned:
                    specs[name] = VectorSpec(self.align_cfg.dim, groups, "aligned")
                else:
                    specs[name] = VectorSpec(int(self.num_classes), groups, "logits")
        return specs

    def _modality_vector(self, name: str, feats: torch.Tensor, offset: int) -> torch.Tensor:
        if self.aligned:
            return F.normalize(self.align[name](feats), dim=1)
        return feats @ self.head.weight.float()[:, offset : offset + feats.shape[1]].T

    def infer(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        present = set(batch)
        needs = self.encoder_groups()
        feats = {n: enc(batch).float() for n, enc in self.encoders.items() if set(needs[n]) <= present}
        vectors: dict[str, torch.Tensor] = {}
        offset = 0
        for name, enc in self._encoders().items():
            if name in feats and name in MODALITY_VECTORS:
                vectors[name] = self._modality_vector(name, feats[name], offset)
            offset += enc.num_features
        logits = None
        if len(feats) == len(self.encoders):
            fused = torch.cat([feats[n] for n in self.encoders], dim=1)
            logits = self.forward_head(fused).float()
            vectors["fused"] = F.normalize(fused, dim=1)
        return logits, vectors

    def forward_modalities(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-encoder embeddings: `{"s1": ..., "s2": ...}` (late fusion), `{"s1s2": ...}` (early)."""
        return {name: enc(batch) for name, enc in self.encoders.items()}

    def forward_features(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        parts = list(self.forward_modalities(batch).values())
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def forward(self, batch: Mapping[str, torch.Tensor], aux: bool = False) -> Any:
        """Logits; with `aux=True` also the alignment loss (None unless aligned), from the same encoder pass.
        The projection heads see the features detached (unless `retrieval.encoders` names encoders to train), so by
        default the alignment never changes the classifier."""
        if not (aux and self.aligned):
            return super().forward(batch, aux)
        feats = self.forward_modalities(batch)
        logits = self.forward_head(torch.cat(list(feats.values()), dim=1))
        trained = {"none": (), "s1": ("s1",), "both": ("s1", "s2")}[self.align_cfg.encoders]
        src = {n: f if n in trained else f.detach() for n, f in feats.items()}
        with torch.autocast(logits.device.type, enabled=False):  # small heads and a softmax: float32 throughout
            z = {n: F.normalize(self.align[n](src[n].float()), dim=1) for n in MODALITY_VECTORS}
            loss = alignment_loss(z["s1"], z["s2"], batch.get("labels"), self.align_cfg)
        return logits, self.align_cfg.weight * loss

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(x)
        if pre_logits:
            return x
        out: torch.Tensor = self.head(x)
        return out


def _bands(bands: Sequence[str] | None, default: str, sensors: str) -> str | tuple[str, ...]:
    """`bands` (an explicit channel order, e.g. an imported checkpoint's) or the default band set; an explicit
    list must hold the sensors the model is for (`s1s2`: both)."""
    if bands is None:
        return default
    from bigearth.core.bands import BANDS

    have = {BANDS[b].sensor for b in bands if b in BANDS}
    want = {"s1s2": {"s1", "s2"}, "s1": {"s1"}, "s2": {"s2"}}[sensors]
    if have != want:
        raise ValueError(f"bands {list(bands)}: expected {' and '.join(sorted(want))} bands for this model")
    return tuple(bands)


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
    retrieval: dict[str, Any] | None = None,
    bands: Sequence[str] | None = None,
    **kwargs: Any,
) -> FusionClassifier:
    """S1 and S2 channels stacked into one backbone (12 or 14 channels). One network sees both modalities, so it
    makes only `fused` vectors: no S1-only or S2-only query, no cross-modal search (`retrieval` has no effect)."""
    enc = Encoder(_bands(bands, f"s1{_s2_set(s2_bands)}", "s1s2"), backbone, stats, pretrained, **kwargs)
    return FusionClassifier({"s1s2": enc}, num_classes, "early", drop_rate, retrieval)


@register_model
def late(
    backbone: str = "resnet50",
    num_classes: int = 19,
    s2_bands: int = 10,
    stats: str = "v2",
    pretrained: str | None = None,
    drop_rate: float = 0.0,
    retrieval: dict[str, Any] | None = None,
    **kwargs: Any,
) -> FusionClassifier:
    """An S1 encoder and an S2 encoder; pooled features concatenated, then the head. `retrieval`
    (`bigearth.models.align.AlignConfig`; default `cross_modal: logits`) adds the aligned S1/S2 projections."""
    if "bands" in kwargs:
        raise ValueError("late fusion takes no `bands`: its encoders read the S1 and the S2 band sets (s2_bands)")
    encoders = {
        "s1": Encoder("s1", backbone, stats, None, **kwargs),
        "s2": Encoder(_s2_set(s2_bands), backbone, stats, pretrained, **kwargs),
    }
    return FusionClassifier(encoders, num_classes, "late", drop_rate, retrieval)


@register_model
def s1(
    backbone: str = "resnet50",
    num_classes: int = 19,
    stats: str = "v2",
    pretrained: str | None = None,
    drop_rate: float = 0.0,
    retrieval: dict[str, Any] | None = None,
    bands: Sequence[str] | None = None,
    **kwargs: Any,
) -> FusionClassifier:
    """Sentinel-1 only (VV, VH): `fused` and `s1` (logits) vectors; nothing to align (`retrieval` has no effect)."""
    enc = Encoder(_bands(bands, "s1", "s1"), backbone, stats, pretrained, **kwargs)
    return FusionClassifier({"s1": enc}, num_classes, "s1", drop_rate, retrieval)


@register_model
def s2(
    backbone: str = "resnet50",
    num_classes: int = 19,
    s2_bands: int = 10,
    stats: str = "v2",
    pretrained: str | None = None,
    drop_rate: float = 0.0,
    retrieval: dict[str, Any] | None = None,
    bands: Sequence[str] | None = None,
    **kwargs: Any,
) -> FusionClassifier:
    """Sentinel-2 only (10 or 12 bands): `fused` and `s2` (logits) vectors; `retrieval` has no effect."""
    enc = Encoder(_bands(bands, _s2_set(s2_bands), "s2"), backbone, stats, pretrained, **kwargs)
    return FusionClassifier({"s2": enc}, num_classes, "s2", drop_rate, retrieval)


@register_model
def tiny(
    num_classes: int = 19,
    fusion: str = "late",
    s2_bands: int = 10,
    stats: str = "v2",
    img_size: int = 60,
    retrieval: dict[str, Any] | None = None,
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
        backbone="test_resnet",
        num_classes=num_classes,
        stats=stats,
        img_size=img_size,
        retrieval=retrieval,
        **extra,
        **kwargs,
    )
