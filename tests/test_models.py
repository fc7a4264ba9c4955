"""The model registry and the common surface of every model (a loop over the registry, timm-style)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
import torch

from bigearth.models.base import BigEarthModel, ModelSpec, VectorSpec
from bigearth.models.checkpoints import load, resolve, save
from bigearth.models.fusion import backbone
from bigearth.models.registry import _REGISTRY, create_model, list_models, register_model
from bigearth.models.runner import ModelRunner


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
    assert isinstance(model, BigEarthModel)
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


def _small(name: str) -> BigEarthModel:
    kwargs = {} if name == "tiny" else {"backbone": "test_resnet"}
    model: BigEarthModel = create_model(name, **kwargs)
    return model


def _serve_items(batch: dict[str, torch.Tensor], groups: list[str] | tuple[str, ...]) -> list[dict[str, np.ndarray]]:
    return [{g: batch[g][i : i + 1].numpy() for g in groups} for i in range(len(batch["s1"]))]


@pytest.mark.parametrize("name", list_models())
def test_every_model_embeds_saves_loads_and_serves_through_the_contract(name: str, tmp_path: Path) -> None:
    from bigearth.serving.deployments import Classifier

    model = _small(name).eval()
    spec = model.spec
    assert spec.name == name and spec.num_classes == 19 and len(spec.classes) == 19 and spec.vectors
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    batch = _batch(3)
    with torch.no_grad():
        logits, vectors = model.infer(batch)
        assert logits is not None and torch.allclose(logits, model(batch), atol=1e-5)
        assert {n: v.shape for n, v in vectors.items()} == {n: (3, v.size) for n, v in spec.vectors.items()}
        for vname, v in spec.vectors.items():  # each vector from only the groups it says it needs
            part = {g: batch[g] for g in v.groups}
            assert torch.allclose(model.embed(part)[vname], vectors[vname], atol=1e-5)
    save(str(tmp_path / "ck"), model, {"model": {"name": name, **model.builder_kwargs}, "num_classes": 19})
    ref = resolve(tmp_path / "ck")
    assert ref.spec == spec
    loaded = load(ref)
    assert loaded.spec == spec and len(loaded.digest) == 12 and loaded.path == str(tmp_path / "ck")
    runner = ModelRunner(loaded, "cpu")
    probs = runner.predict(batch)
    assert torch.allclose(probs, torch.sigmoid(logits), atol=1e-5)
    # the Serve Classifier (its replica class, without Serve): full uploads and one-vector uploads in one batch
    clf = Classifier(str(tmp_path / "ck"), cpus=1)
    described = clf.describe()
    assert described["vectors"] == spec.vector_sizes and described["model"]["version"].endswith(loaded.digest)
    vname = sorted(spec.vectors, key=lambda n: len(spec.vectors[n].groups))[0]
    items = _serve_items(batch, list(spec.groups)) + _serve_items(batch, described["vector_groups"][vname])
    import asyncio

    out = asyncio.run(clf.infer(items))
    assert len(out) == 6 and all(o["batch_size"] == 6 for o in out)
    assert np.allclose(np.stack([o["probabilities"] for o in out[:3]]), probs.numpy(), atol=1e-5)
    for i in range(3):
        assert np.allclose(out[3 + i]["vectors"][vname], vectors[vname][i].numpy(), atol=1e-4)


class MeanBands(BigEarthModel):
    """A model that is not a FusionClassifier: per-band means of S2 10 m through a linear layer (two vectors)."""

    def __init__(self, num_classes: int = 19) -> None:
        super().__init__()
        self.num_classes, self.num_features, self.bands = num_classes, 8, ("B02", "B03", "B04", "B08")
        self.proj = torch.nn.Linear(4, 8)
        self.head = torch.nn.Linear(8, num_classes)

    def forward_features(self, batch: Any) -> torch.Tensor:
        out: torch.Tensor = self.proj(batch["s2_10m"].float().mean(dim=(2, 3)) / 1000)
        return out

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.head(x)

    def vector_specs(self) -> dict[str, VectorSpec]:
        return {**super().vector_specs(), "s2": VectorSpec(self.num_classes, ("s2_10m",), "logits")}

    def infer(self, batch: Any) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        logits, vectors = super().infer(batch)
        return logits, {**vectors, **({"s2": logits} if logits is not None else {})}


def test_a_model_that_is_not_a_fusion_classifier_is_one_registered_class(tmp_path: Path) -> None:
    from bigearth.serving.deployments import Classifier

    @register_model
    def mean_bands(num_classes: int = 19) -> MeanBands:
        return MeanBands(num_classes)

    try:
        model = create_model("mean-bands").eval()
        save(str(tmp_path / "ck"), model, {"model": {"name": "mean-bands"}, "num_classes": 19})
        clf = Classifier(str(tmp_path / "ck"), cpus=1)
        assert clf.describe()["groups"] == {"s2_10m": ["B02", "B03", "B04", "B08"]}
        assert clf.describe()["vectors"] == {"fused": 8, "s2": 19}
        import asyncio

        (out,) = asyncio.run(clf.infer(_serve_items(_batch(1), ["s2_10m"])))
        assert out["probabilities"].shape == (19,) and set(out["vectors"]) == {"fused", "s2"}
        runner = ModelRunner(load(tmp_path / "ck"), "cpu")
        with pytest.raises(ValueError, match="lacks groups the model needs"):
            runner.predict({"s1": _batch(1)["s1"]})
    finally:
        _REGISTRY.pop("mean-bands", None)
