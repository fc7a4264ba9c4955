"""Segmentation models (`bigearth.models.segmentation`): output on the reference maps' grid for every fusion and
input size, the registry, checkpoints that keep the task and the weights, and the runner's maps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bigearth.models.base import ModelSpec
from bigearth.models.checkpoints import load, resolve, save
from bigearth.models.registry import create_model, list_models
from bigearth.models.runner import ModelRunner
from bigearth.models.segmentation import SegmentationModel
from helpers import random_checkpoint

FUSIONS = ("early", "late", "s1", "s2")


def _batch(n: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "s1": torch.randn(n, 2, 120, 120, generator=g) * 5 - 12,
        "s2_10m": torch.randint(1, 5000, (n, 4, 120, 120), generator=g).to(torch.uint16),
        "s2_20m": torch.randint(1, 5000, (n, 6, 60, 60), generator=g).to(torch.uint16),
        "s2_60m": torch.randint(1, 5000, (n, 2, 20, 20), generator=g).to(torch.uint16),
        "mask": torch.zeros(n, 120, 120, dtype=torch.uint8),
        "labels": torch.zeros(n, 19),
    }


def test_the_registry_lists_the_segmentation_models_apart() -> None:
    assert list_models("segmentation") == ["seg-early", "seg-late", "seg-s1", "seg-s2", "seg-tiny"]
    assert not set(list_models("segmentation")) & set(list_models("classification"))
    assert set(list_models()) == set(list_models("segmentation")) | set(list_models("classification"))


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("img_size", [60, 120])
def test_every_fusion_gives_maps_on_the_reference_grid(fusion: str, img_size: int) -> None:
    model = create_model("seg-tiny", fusion=fusion, img_size=img_size, num_classes=19)
    assert isinstance(model, SegmentationModel) and model.task == "segmentation" and model.img_size == img_size
    batch = _batch(3)
    logits = model(batch)
    assert logits.shape == (3, 19, 120, 120) and logits.dtype == torch.float32
    out, extra = model(batch, aux=True)
    assert out.shape == logits.shape and extra is None
    spec = model.spec
    assert spec.task == "segmentation" and spec.produces_maps and spec.vectors == {} and model.vector_specs() == {}
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    model.eval()
    with torch.no_grad():
        inferred, vectors = model.infer(batch)
        assert vectors == {} and inferred is not None and torch.allclose(inferred, model(batch), atol=1e-5)
        if fusion != "s1":  # the S2 groups are needed: without them no map
            assert model.infer({"s1": batch["s1"]}) == (None, {})
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_fusions_read_the_right_bands_and_late_fusion_concatenates_levels() -> None:
    late = create_model("seg-late", backbone="test_resnet", decoder_channels=16)
    assert late.bands == ("VV", "VH", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
    s1, s2 = late.encoders["s1"], late.encoders["s2"]
    assert [lat.in_channels for lat in late.decoder.lateral] == [
        a + b for a, b in zip(s1.channels, s2.channels, strict=True)
    ]
    assert len(create_model("seg-early", backbone="test_resnet", s2_bands=12).bands) == 14
    assert create_model("seg-s1", backbone="test_resnet").bands == ("VV", "VH")
    assert create_model("seg-s1", backbone="test_resnet")({"s1": _batch()["s1"]}).shape == (2, 19, 120, 120)
    with pytest.raises(ValueError, match="fusion must be one of"):
        create_model("seg-tiny", fusion="middle")
    with pytest.raises(ValueError, match="s2_bands must be 10 or 12, got 11"):
        create_model("seg-s2", backbone="test_resnet", s2_bands=11)
    with pytest.raises(ValueError, match="no pre-logits vector"):
        late.forward_head(late.forward_features(_batch()), pre_logits=True)


def test_pretrained_encoder_weights_from_a_local_file(tmp_path: Path) -> None:
    import timm

    source = timm.create_model("test_resnet", num_classes=0, in_chans=10)
    path = tmp_path / "w.pt"
    torch.save(source.state_dict(), path)
    model = create_model("seg-s2", backbone="test_resnet", pretrained=str(path))
    got = model.encoders["s2"].backbone.state_dict()
    shared = [k for k in source.state_dict() if k in got]
    assert len(shared) == len(got) and all(torch.equal(got[k], source.state_dict()[k]) for k in shared)
    with pytest.raises(ValueError, match="weights do not fit test_resnet with 2 input channels"):
        create_model("seg-s1", backbone="test_resnet", pretrained=str(path))


#: the backbones verified as segmentation encoders (docs/training.md), as small variants: name, builder arguments
BACKBONES = {
    "test_resnet": {},
    "test_convnext": {"img_size": 60},
    "test_efficientnet": {"img_size": 60},
    "vit_tiny_patch16_224": {"img_size": 64, "depth": 2},  # timm arguments: a 2-block ViT
    "swin_tiny_patch4_window7_224": {"img_size": 56, "embed_dim": 24, "depths": (1, 1, 1, 1), "num_heads": (1,) * 4},
}


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_cnn_vit_and_swin_backbones_give_maps_in_every_fusion(backbone: str, fusion: str) -> None:
    model = create_model(f"seg-{fusion}", backbone=backbone, decoder_channels=16, **BACKBONES[backbone])
    encoder = next(iter(model.encoders.values()))
    maps = encoder(_batch())
    assert [m.shape[1] for m in maps] == encoder.channels and all(m.ndim == 4 for m in maps)  # NCHW, Swin too
    assert [m.shape[-1] for m in maps] == sorted((m.shape[-1] for m in maps), reverse=True)  # finest first
    if backbone.startswith("vit"):
        assert encoder.levels == [1]  # every block has stride 16: the last one is read
    logits = model(_batch())
    assert logits.shape == (2, 19, 120, 120)
    logits.sum().backward()  # the final norm / head past the deepest level were pruned: every weight trains (DDP)
    assert all(p.grad is not None for p in model.parameters())


def test_backbones_that_cannot_give_maps_are_refused_at_build_time() -> None:
    with pytest.raises(ValueError, match=r"'vit_tiny_patch16_224': its patch size 16 does not divide img_size 120"):
        create_model("seg-s1", backbone="vit_tiny_patch16_224", depth=1)
    with pytest.raises(ValueError, match=r"'test_maxvit' gives no feature maps at img_size 60: RuntimeError"):
        create_model("seg-s1", backbone="test_maxvit", img_size=60)
    with pytest.raises(ValueError, match=r"seg-tiny takes no backbone .* use seg-late with backbone="):
        create_model("seg-tiny", backbone="resnet18")


@pytest.mark.parametrize("backbone", ["convnext_atto", "resnet18", "test_efficientnet"])
def test_a_classifiers_s2_backbone_loads_as_the_seg_s2_encoder(backbone: str, tmp_path: Path) -> None:
    from bigearth.models.fusion import backbone as classifier_backbone

    source = classifier_backbone(backbone, 10).state_dict()
    torch.save(source, tmp_path / "s2.pt")
    for name in ("seg-s2", "seg-late"):
        model = create_model(name, backbone=backbone, pretrained=str(tmp_path / "s2.pt"), img_size=64)
        got = model.encoders["s2"].backbone.state_dict()
        assert set(got) <= set(source) and all(torch.equal(got[k], source[k]) for k in got)  # a classifier's keys
    if backbone == "convnext_atto":
        assert "stages.0.blocks.0.conv_dw.weight" in got  # not features_only's `stages_0`


def test_config_keys_a_model_does_not_take_are_refused_by_name() -> None:
    from bigearth.training.config import ConfigError, TrainConfig

    def kwargs(**model: object) -> dict[str, object]:
        return TrainConfig.model_validate({"model": model}).model_kwargs()

    with pytest.raises(ConfigError, match=r"model.backbone: model 'seg-tiny' \(segmentation\) takes no backbone"):
        kwargs(name="seg-tiny", backbone="resnet18")
    with pytest.raises(ConfigError, match=r"model.decoder_channels: model 'late' \(classification\) takes no"):
        kwargs(name="late", decoder_channels=64)
    with pytest.raises(ConfigError, match=r"model.fusion: model 'seg-late' \(segmentation\) takes no fusion"):
        kwargs(name="seg-late", fusion="early")
    assert kwargs(name="seg-late", backbone="resnet18", decoder_channels=8)["decoder_channels"] == 8
    assert kwargs(name="seg-tiny", fusion="s1", decoder_channels=8)["fusion"] == "s1"


@pytest.mark.parametrize("fusion", FUSIONS)
def test_a_checkpoint_keeps_the_task_and_the_weights(fusion: str, tmp_path: Path) -> None:
    model = create_model("seg-tiny", fusion=fusion)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    model.eval()
    save(str(tmp_path / "ck"), model, {"model": {"name": "seg-tiny", **model.builder_kwargs}, "num_classes": 19})
    ref = resolve(tmp_path / "ck")
    assert ref.spec.task == "segmentation" and ref.spec.produces_maps and ref.spec == model.spec
    loaded = load(ref)
    assert loaded.spec.task == "segmentation" and isinstance(loaded.model, SegmentationModel)
    before, after = model.state_dict(), loaded.model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    batch = _batch()
    with torch.no_grad():
        assert torch.allclose(loaded.model(batch), model(batch), atol=1e-6)


def test_a_run_of_segmentation_checkpoints_ranks_by_val_score(tmp_path: Path) -> None:
    for epoch, miou in ((0, 0.2), (1, 0.5), (2, 0.3)):
        random_checkpoint(
            tmp_path / f"checkpoint_{epoch:06d}",
            model="seg-tiny",
            epoch=epoch,
            metrics={"epoch": epoch, "val_miou": miou, "val_score": miou},
        )
    ref = resolve(tmp_path)
    assert ref.path.endswith("checkpoint_000001") and ref.spec.task == "segmentation"


def test_the_runner_segments_and_refuses_the_classifier_calls(tmp_path: Path) -> None:
    runner = ModelRunner(load(random_checkpoint(tmp_path / "ck", model="seg-tiny")), "cpu")
    batch = _batch(3)
    probs = runner.map_probabilities(batch)
    assert probs.shape == (3, 19, 120, 120) and probs.dtype == torch.float32
    assert torch.allclose(probs.sum(dim=1), torch.ones(3, 120, 120), atol=1e-5)
    classes = runner.segment(batch)
    assert classes.shape == (3, 120, 120) and classes.dtype == torch.uint8 and classes.device.type == "cpu"
    assert torch.equal(classes, probs.argmax(dim=1).to(torch.uint8))
    with pytest.raises(ValueError, match=r"infer is for classification models; .* task is segmentation: use segment"):
        runner.infer(batch)
    with pytest.raises(ValueError, match="task is segmentation"):
        runner.predict(batch)
    with pytest.raises(ValueError, match="lacks groups the model needs"):
        runner.segment({"s1": batch["s1"]})
    classifier = ModelRunner(load(random_checkpoint(tmp_path / "clf")), "cpu")
    with pytest.raises(ValueError, match=r"segment is for segmentation models; .* task is classification"):
        classifier.segment(batch)
