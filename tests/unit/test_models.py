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


@pytest.mark.parametrize("name", list_models("classification"))
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
    registered = "early, late, s1, s2, seg-early, seg-late, seg-s1, seg-s2, seg-tiny, tiny"
    with pytest.raises(ValueError, match=rf"unknown model 'vit-huge'; registered: {registered}"):
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


def _small(name: str, retrieval: dict[str, Any] | None = None) -> BigEarthModel:
    kwargs = {} if name == "tiny" else {"backbone": "test_resnet"}
    model: BigEarthModel = create_model(name, retrieval=retrieval, **kwargs)
    return model


def _serve_items(batch: dict[str, torch.Tensor], groups: list[str] | tuple[str, ...]) -> list[dict[str, np.ndarray]]:
    return [{g: batch[g][i : i + 1].numpy() for g in groups} for i in range(len(batch["s1"]))]


@pytest.mark.parametrize(
    ("name", "retrieval"),
    [(n, None) for n in list_models("classification")]
    + [(n, {"cross_modal": "aligned", "dim": 16}) for n in ("late", "tiny")],
)
def test_every_model_embeds_saves_loads_and_serves_through_the_contract(
    name: str, retrieval: dict[str, Any] | None, tmp_path: Path
) -> None:
    from bigearth.serving.deployments import Classifier

    model = _small(name, retrieval).eval()
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
    clf = Classifier(str(tmp_path / "ck"), cpus=1, max_batch_size=8, batch_wait_timeout_s=0)
    described = clf.describe()
    assert described["vectors"] == spec.vector_sizes and described["model"]["version"].endswith(loaded.digest)
    vname = sorted(spec.vectors, key=lambda n: len(spec.vectors[n].groups))[0]
    items = _serve_items(batch, list(spec.groups)) + _serve_items(batch, described["vector_groups"][vname])
    import asyncio

    out = asyncio.run(Classifier.infer.__wrapped__(clf, items))  # the batch function, without Serve's queue
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
        clf = Classifier(str(tmp_path / "ck"), cpus=1, max_batch_size=8, batch_wait_timeout_s=0)
        assert clf.describe()["groups"] == {"s2_10m": ["B02", "B03", "B04", "B08"]}
        assert clf.describe()["vectors"] == {"fused": 8, "s2": 19}
        import asyncio

        (out,) = asyncio.run(Classifier.infer.__wrapped__(clf, _serve_items(_batch(1), ["s2_10m"])))
        assert out["probabilities"].shape == (19,) and set(out["vectors"]) == {"fused", "s2"}
        from bigearth.training.config import TrainConfig  # a builder without `retrieval` is not given one

        assert "retrieval" not in TrainConfig.model_validate({"model": {"name": "mean-bands"}}).model_kwargs()
        assert "retrieval" in TrainConfig.model_validate({"model": {"name": "tiny"}}).model_kwargs()
        runner = ModelRunner(load(tmp_path / "ck"), "cpu")
        with pytest.raises(ValueError, match="lacks groups the model needs"):
            runner.predict({"s1": _batch(1)["s1"]})
    finally:
        _REGISTRY.pop("mean-bands", None)


# ------------------------------------------------------------------------------------------------ aligned vectors
ALIGNED = {"cross_modal": "aligned", "dim": 16}


def test_aligned_late_fusion_projects_s1_and_s2_into_one_space_without_touching_the_classifier() -> None:
    torch.manual_seed(0)
    aligned = create_model("tiny", retrieval=ALIGNED)
    torch.manual_seed(0)
    logits_model = create_model("tiny", retrieval={"cross_modal": "logits"})
    plain = {k: v for k, v in aligned.state_dict().items() if not k.startswith("align.")}
    assert plain.keys() == logits_model.state_dict().keys()  # same classifier, same initial weights
    assert all(torch.equal(v, logits_model.state_dict()[k]) for k, v in plain.items())
    spec = aligned.spec.vectors
    assert (spec["s1"].size, spec["s1"].kind, spec["s2"].kind) == (16, "aligned", "aligned")
    assert logits_model.spec.vectors["s1"].kind == "logits" and logits_model.spec.vectors["s1"].size == 19
    batch = {**_batch(6), "labels": (torch.rand(6, 19, generator=torch.Generator().manual_seed(1)) > 0.7).float()}
    aligned.eval(), logits_model.eval()
    logits, aux = aligned(batch, aux=True)
    assert torch.allclose(logits, logits_model(batch), atol=1e-6) and aux is not None and torch.isfinite(aux)
    assert logits_model(batch, aux=True)[1] is None  # logits: training is what it was
    aux.backward()
    assert all(p.grad is None for p in aligned.encoders.parameters())  # the alignment never reaches the encoders
    assert all(p.grad is None for p in aligned.head.parameters())
    assert all(p.grad is not None for p in aligned.align.parameters())
    with torch.no_grad():
        s1_only = aligned.embed({"s1": batch["s1"]})
    assert set(s1_only) == {"s1"} and torch.allclose(s1_only["s1"].norm(dim=1), torch.ones(6), atol=1e-5)


@pytest.mark.parametrize("name", ["early", "s1", "s2"])
def test_models_without_two_modality_encoders_have_nothing_to_align(name: str) -> None:
    model = create_model(name, backbone="test_resnet", retrieval=ALIGNED)
    assert not model.aligned and not hasattr(model, "align")
    assert all(v.kind in ("features", "logits") for v in model.spec.vectors.values())
    assert model(_batch(2), aux=True)[1] is None
    if name == "early":  # one network on stacked channels: only fused vectors, nothing from one modality
        assert set(model.spec.vectors) == {"fused"} and model.embed({"s1": _batch(2)["s1"]}) == {}


def test_alignment_loss_rewards_matched_pairs_and_label_positives() -> None:
    import torch.nn.functional as F

    from bigearth.models.align import AlignConfig, alignment_loss, soft_targets

    labels = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 0, 1]], dtype=torch.float32)
    t = soft_targets(labels, 4, 0.5, torch.device("cpu"))
    assert torch.allclose(t.sum(1), torch.ones(4)) and torch.all(t.diagonal() >= 0.5)
    assert t[0, 2] == 0 and t[2, 3] > 0 and t[0, 1] > 0  # no shared label: no pull; shared: some
    g = torch.Generator().manual_seed(0)
    z = F.normalize(torch.randn(32, 8, generator=g), dim=1)
    cfg = AlignConfig(cross_modal="aligned", label_positives=0.0, intra=0.0)
    matched = alignment_loss(z, z, None, cfg)
    shuffled = alignment_loss(z, z[torch.randperm(32, generator=g)], None, cfg)
    assert matched < shuffled
    # label-aware: with labels, a batch whose S2 side is ordered by label beats one that is not
    y = torch.eye(4)[torch.arange(32) % 4]
    by_label = F.normalize(y @ torch.randn(4, 8, generator=g) + 0.05 * torch.randn(32, 8, generator=g), dim=1)
    full = AlignConfig(cross_modal="aligned")
    assert alignment_loss(by_label, by_label, y, full) < alignment_loss(by_label, z, y, full)
    for n in (1, 2):  # tiny batches and batches where no pair shares a label stay finite
        assert torch.isfinite(alignment_loss(z[:n], z[:n], torch.eye(n), full))
    # a pair without labels (its target: itself) and an intra term that keeps only some rows
    partial = torch.tensor([[0, 0, 0], [1, 0, 0], [1, 0, 0], [0, 1, 0]], dtype=torch.float32)
    assert torch.allclose(soft_targets(partial, 4, 1.0, torch.device("cpu"))[0], torch.eye(4)[0])
    loss = alignment_loss(z[:4], z[:4], partial, full)
    assert torch.isfinite(loss) and loss > 0
    # both directions of the cross term see targets that sum to 1 (the S2 -> S1 direction uses the same rows)
    z1, z2 = z[:4].clone().requires_grad_(), z[4:8].clone().requires_grad_()
    alignment_loss(z1, z2, partial, AlignConfig(cross_modal="aligned", intra=0.0)).backward()
    assert z1.grad is not None and z2.grad is not None and torch.isfinite(z2.grad).all()
    with pytest.raises(ValueError, match=r"retrieval\.cross_modal must be one of"):
        AlignConfig.from_dict({"cross_modal": "both"})


def test_a_checkpoint_written_before_specs_and_aligned_vectors_loads_as_it_was(tmp_path: Path) -> None:
    """meta.json without `spec` and a model section without `retrieval`: the logits vectors it was indexed with."""
    import json

    model = _small("late").eval()  # no retrieval argument: the model of older checkpoints
    save(str(tmp_path / "ck"), model, {"model": {"name": "late", "backbone": "test_resnet"}, "num_classes": 19})
    meta = json.loads((tmp_path / "ck" / "meta.json").read_text())
    del meta["spec"]
    (tmp_path / "ck" / "meta.json").write_text(json.dumps(meta))
    ref = resolve(tmp_path / "ck")
    assert "spec" not in ref.meta and ref.spec.vectors["s1"] == VectorSpec(19, ("s1",), "logits")
    loaded = load(ref)
    assert not hasattr(loaded.model, "align") and loaded.spec == model.spec
    batch = _batch(2)
    with torch.no_grad():
        assert torch.allclose(loaded.model.embed(batch)["s2"], model.embed(batch)["s2"])


def test_the_weights_digest_is_one_helper_shared_by_loading_and_indexing(tmp_path: Path) -> None:
    """`checkpoints.weights_digest` (what an index records) is `LoadedModel.digest` (what a service reports),
    computed by the one helper: the indexer keeps no copy of its own."""
    import hashlib

    from bigearth.models import checkpoints
    from bigearth.retrieval import indexer

    save(str(tmp_path), create_model("tiny", num_classes=19), {"model": {"name": "tiny"}, "num_classes": 19})
    raw = (tmp_path / checkpoints.MODEL_FILE).read_bytes()
    digest = checkpoints.weights_digest(str(tmp_path))
    assert digest == load(str(tmp_path)).digest == hashlib.sha256(raw).hexdigest()[:12]
    assert not hasattr(indexer, "weights_digest") or indexer.weights_digest is checkpoints.weights_digest
    (tmp_path / checkpoints.MODEL_FILE).unlink()
    with pytest.raises(checkpoints.CheckpointError, match=r"no model\.pt"):
        checkpoints.weights_digest(str(tmp_path))
