"""The model registry and the common surface of every model (a loop over the registry, timm-style)."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from bigearth.models.fusion import FusionClassifier, backbone
from bigearth.models.registry import create_model, list_models


def _batch(n: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "s1": torch.randn(n, 2, 120, 120, generator=g) * 5 - 12,
        "s2_10m": torch.randint(1, 5000, (n, 4, 120, 120), generator=g).to(torch.uint16),
        "s2_20m": torch.randint(1, 5000, (n, 6, 60, 60), generator=g).to(torch.uint16),
        "s2_60m": torch.randint(1, 5000, (n, 2, 20, 20), generator=g).to(torch.uint16),
    }


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("classes", [19, 43])
def test_every_model_has_the_common_surface(name: str, classes: int) -> None:
    kwargs = {} if name == "tiny" else {"backbone": "test_resnet"}
    model = create_model(name, num_classes=classes, pretrained=None, drop_rate=None, **kwargs)  # None dropped
    assert isinstance(model, FusionClassifier)
    batch = _batch()
    features = model.forward_features(batch)
    assert features.shape == (2, model.num_features)
    logits = model.forward_head(features)
    assert logits.shape == (2, classes) == model(batch).shape and model.num_classes == classes
    modalities = model.forward_modalities(batch)
    assert sum(v.shape[1] for v in modalities.values()) == model.num_features
    logits.sum().backward()


def test_fusion_variants_read_the_right_bands() -> None:
    late = create_model("late", backbone="test_resnet")
    assert set(late.forward_modalities(_batch())) == {"s1", "s2"}
    assert late.bands == ("VV", "VH", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
    early = create_model("early", backbone="test_resnet", s2_bands=12)
    assert len(early.bands) == 14 and set(early.forward_modalities(_batch())) == {"s1s2"}
    assert create_model("s1", backbone="test_resnet").bands == ("VV", "VH")
    assert len(create_model("s2", backbone="test_resnet", s2_bands=12).bands) == 12
    # an S1-only model needs no S2 in the batch
    create_model("s1", backbone="test_resnet")({"s1": _batch()["s1"]})


def test_errors_name_what_was_expected() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'vit-huge'; registered: early, late, s1, s2, tiny"):
        create_model("vit-huge")
    for name in ("s2", "early", "late"):
        with pytest.raises(ValueError, match="s2_bands must be 10 or 12, got 11"):
            create_model(name, backbone="test_resnet", s2_bands=11)


def test_pretrained_weights_from_a_local_file(tmp_path: Path) -> None:
    source = timm.create_model("test_resnet", num_classes=0, in_chans=10)
    path = tmp_path / "w.pt"
    torch.save(source.state_dict(), path)
    loaded = backbone("test_resnet", 10, str(path))
    for k, v in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    with pytest.raises(ValueError, match="weights do not fit test_resnet with 2 input channels"):
        backbone("test_resnet", 2, str(path))
