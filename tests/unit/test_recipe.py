"""The papers' recipes as configs: every shipped config builds its model with the recipe's input (resampling,
statistics, bands) and regularisation; the reBEN settings are what its scripts use; global batch and flips."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bigearth.models.registry import create_model
from bigearth.training.augment import random_flips
from bigearth.training.config import ConfigError, load_config
from helpers import REPO

CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))
REBEN = sorted((REPO / "configs" / "reben").glob("*.yaml"))


def test_the_published_reben_models_have_configs() -> None:
    names = {p.stem for p in REBEN}
    assert {"resnet50-s1", "resnet50-s2", "resnet50-all"} <= names
    assert {"vit_base_patch8_224-all", "convnextv2_base-all", "mobilevit_s-s1", "convmixer_768_32-all"} <= names
    for path in [*REBEN, *(REPO / "configs" / "bigearthnet-mm").glob("*.yaml")]:
        assert path.read_text().startswith("# "), f"{path}: the header cites its source"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_every_config_builds_its_model(path: Path) -> None:
    cfg = load_config(path)
    with torch.device("meta"):  # no weights allocated: the structure is what is checked
        model = create_model(cfg.model.name, num_classes=cfg.data.nomenclature, **cfg.model_kwargs())
    spec = model.spec
    assert spec.resample == (cfg.model.resample or "bilinear")
    assert spec.stats == cfg.model.stats
    if cfg.model.drop_path_rate and not (cfg.model.backbone or "").startswith("convmixer"):  # ConvMixer has none
        rates = [m.drop_prob for m in model.modules() if type(m).__name__ == "DropPath"]
        assert rates and max(rates) == pytest.approx(cfg.model.drop_path_rate), path
    if cfg.model.name == "early":
        assert {"VV", "VH"} < set(spec.bands) and set(spec.vectors) == {"fused"}


@pytest.mark.parametrize("path", REBEN, ids=lambda p: p.stem)
def test_reben_configs_follow_the_published_recipe(path: Path) -> None:
    cfg = load_config(path)
    m, d, o, r = cfg.model, cfg.data, cfg.optim, cfg.run
    assert (m.stats, m.resample, m.img_size, m.drop_rate, m.drop_path_rate) == (
        "v2-120-nearest",
        "nearest",
        120,
        0.15,
        0.15,
    )
    assert m.s2_bands in (None, 10)
    assert (d.global_batch_size, d.augment) == (512, "flips")
    assert (o.lr, o.weight_decay, o.warmup_steps, o.warmup_start, o.final_lr, o.grad_clip) == (
        1e-3,
        0.01,
        1000,
        0.1,
        0.1,
        0,
    )
    assert (o.epochs, r.patience, r.seed, o.precision) == (100, 5, 42, "fp32")
    assert cfg.worker_batch_size() * cfg.scaling.num_workers == 512
    modality = path.stem.rsplit("-", 1)[1]
    assert m.name == {"s1": "s1", "s2": "s2", "all": "early"}[modality]


def test_global_batch_is_split_over_the_workers_or_refused() -> None:
    cfg = load_config(REBEN[0], ["scaling.num_workers=8"])
    assert cfg.worker_batch_size() == 64 and cfg.worker_batch_size(2) == 256
    with pytest.raises(ConfigError, match=r"global_batch_size 512 does not divide among 3 workers.*510 or 513"):
        load_config(REBEN[0], ["scaling.num_workers=3"])
    assert load_config(None, ["data.batch_size=7", "scaling.num_workers=3"]).worker_batch_size() == 7


def test_flips_move_every_group_of_a_pair_together() -> None:
    n = 256
    base = torch.arange(120 * 120, dtype=torch.float32).view(1, 1, 120, 120)
    small = torch.arange(60 * 60, dtype=torch.float32).view(1, 1, 60, 60)
    batch = {"s1": base.repeat(n, 2, 1, 1), "s2_20m": small.repeat(n, 6, 1, 1), "labels": torch.ones(n, 19)}
    out = random_flips(batch, torch.Generator().manual_seed(0))
    again = random_flips(batch, torch.Generator().manual_seed(0))
    assert all(torch.equal(out[k], again[k]) for k in batch)  # seeded: reproducible
    assert out["labels"] is batch["labels"]
    seen: list[str] = []
    for i in range(n):
        kinds = []
        for g, ref in (("s1", base[0, 0]), ("s2_20m", small[0, 0])):
            x = out[g][i, 0]
            kind = next(
                k
                for k, f in {"none": ref, "lr": ref.flip(-1), "tb": ref.flip(-2), "both": ref.flip(-1).flip(-2)}.items()
                if torch.equal(x, f)
            )
            kinds.append(kind)
            assert all(torch.equal(out[g][i, c], x) for c in range(out[g].shape[1]))  # every band alike
        assert kinds[0] == kinds[1]  # S1 and S2 of one pair flip together
        seen.append(kinds[0])
    assert set(seen) == {"none", "lr", "tb", "both"}
    for flipped in (("lr", "both"), ("tb", "both")):  # each flip about half the time (n = 256: 4.6 sigma)
        assert 90 < sum(k in flipped for k in seen) < 166


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "bigearthnet-mm").glob("*.yaml")), ids=lambda p: p.stem)
def test_bigearthnet_mm_configs_follow_the_v1_code(path: Path) -> None:
    from bigearth.training.loop import lr_lambda

    cfg = load_config(path)
    m, o = cfg.model, cfg.optim
    assert (m.stats, m.resample, m.img_size, cfg.data.augment, cfg.data.nomenclature) == (
        "v1",
        "bicubic",
        120,
        "none",
        19,
    )
    s2 = ["B04", "B03", "B02", "B08", "B05", "B06", "B07", "B8A", "B11", "B12"]
    assert m.bands == {"early": [*s2, "VV", "VH"], "s2": s2, "s1": ["VV", "VH"]}[m.name]
    assert (o.weight_decay, o.grad_clip) == (0, 0)
    assert all(lr_lambda(s, 0, 1000, o.warmup_start, o.final_lr) == 1.0 for s in range(0, 1000, 7))  # constant lr
    assert cfg.run.patience >= o.epochs  # no early stopping


def test_flips_move_the_mask_with_its_pair() -> None:
    """A segmentation batch: each pair's `mask` flips exactly as its image groups (a pixel's class stays under it),
    and the coin tosses are those of the same batch without a mask."""
    n = 64
    g = torch.Generator().manual_seed(1)
    mask = torch.randint(0, 19, (n, 120, 120), generator=g, dtype=torch.uint8)
    mask[:, :3] = 255  # ignored pixels flip too
    s1 = torch.stack([mask.float(), -mask.float()], dim=1)  # an image that is its mask
    s2_20m = mask[:, ::2, ::2].float().unsqueeze(1).repeat(1, 6, 1, 1)
    batch = {"s1": s1, "s2_20m": s2_20m, "mask": mask, "labels": torch.ones(n, 19)}
    out = random_flips(batch, torch.Generator().manual_seed(0))
    plain = random_flips({k: v for k, v in batch.items() if k != "mask"}, torch.Generator().manual_seed(0))
    assert out["mask"].dtype == torch.uint8 and out["mask"].shape == mask.shape
    assert torch.equal(out["s1"][:, 0], out["mask"].float()) and torch.equal(out["s1"][:, 1], -out["mask"].float())
    assert torch.equal(out["s1"], plain["s1"]) and torch.equal(out["s2_20m"], plain["s2_20m"])
    flipped = sum(not torch.equal(out["mask"][i], mask[i]) for i in range(n))
    assert 30 < flipped < 64  # three of four pairs flip one way or both
    for i in range(n):  # the 20 m group went the way its mask went
        ways = {"none": lambda x: x, "lr": lambda x: x.flip(-1), "tb": lambda x: x.flip(-2)}
        ways["both"] = lambda x: x.flip(-1).flip(-2)
        way = [k for k, f in ways.items() if torch.equal(out["mask"][i], f(mask[i]))]
        assert way and any(torch.equal(out["s2_20m"][i], ways[k](s2_20m[i])) for k in way)
