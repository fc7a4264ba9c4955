"""The official reBEN checkpoints: one built and saved with the real `configilm` (its own venv, numpy 1.x),
imported here, gives ConfigILM's probabilities per class name to 1e-5 on the same raw bands; then it evaluates,
indexes and serves like our own checkpoints (it is one: the import writes a bigearth checkpoint folder)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import configilm_env
from bigearth.core import labels as lab
from bigearth.core.bands import BAND_SETS, BANDS, GROUPS, STATS
from bigearth.models import checkpoints
from bigearth.models.checkpoints import CheckpointError
from bigearth.models.reben import V011, import_checkpoint
from bigearth.models.runner import ModelRunner

HERE = Path(__file__).resolve().parents[1]  # tests/, where configilm_reference.py is


@pytest.fixture(scope="module")
def configilm() -> Path:
    try:
        return configilm_env.python()
    except subprocess.CalledProcessError as e:  # no package registry: say so, do not pass silently
        pytest.fail(f"could not create the configilm venv: {e.stderr or e}")


def _raw(n: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for name, band in BANDS.items():
        shape = (n, band.size, band.size)
        if band.sensor == "s1":
            out[name] = rng.normal(-15, 5, shape).astype(np.float32)
        else:
            out[name] = rng.gamma(2.0, 700.0, shape).clip(0, 20000).astype(np.uint16)
    return out


def _batch(raw: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {g: torch.from_numpy(np.stack([raw[b] for b in names], axis=1)) for g, names in GROUPS.items()}


def _reference(python: Path, tmp: Path, cases: dict[str, tuple[str, int, list[str] | None]]) -> dict[str, Path]:
    """Build every case `{name: (arch, channels, band order or None)}` with the real configilm, in one process."""
    raw = _raw()
    np.savez(tmp / "input.npz", **raw)
    spec = [
        {"arch": a, "channels": c, "seed": 3, "inputs": str(tmp / "input.npz"), "out": str(tmp / n), "bands": b}
        for n, (a, c, b) in cases.items()
    ]
    (tmp / "cases.json").write_text(json.dumps(spec))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    cmd = [str(python), str(HERE / "configilm_reference.py"), str(tmp / "cases.json")]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return {n: tmp / n for n in cases}


CASES = {
    "resnet18-s1": ("resnet18", 2, "s1", None),
    "resnet18-s2": ("resnet18", 10, "s2", None),
    "resnet18-all": ("resnet18", 12, "early", None),
    "convnextv2_atto-all": ("convnextv2_atto", 12, "early", None),  # another head (head.fc) and norm layers
    "resnet18-all-v0.1.1": ("resnet18", 12, "early", "v0.1.1"),  # the older band order, S2 first
}


@pytest.fixture(scope="module")
def references(configilm: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every case of CASES built and saved by configilm (one process: its imports take seconds)."""
    cases = {
        name: (arch, channels, list(V011[channels][1]) if version == "v0.1.1" else None)
        for name, (arch, channels, _, version) in CASES.items()
    }
    return _reference(configilm, tmp_path_factory.mktemp("reben"), cases)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_reben_checkpoint_gives_configilm_probabilities(references: dict[str, Path], tmp_path: Path, case: str) -> None:
    arch, channels, model_name, version = CASES[case]
    order = list(V011[channels][1]) if version == "v0.1.1" else None
    src = references[case]
    assert {"config.json", "model.safetensors"} <= {p.name for p in src.iterdir()}
    config = json.loads((src / "config.json").read_text())
    assert config["timm_model_name"] == arch and config["channels"] == channels and config["network_type"] == 0

    with pytest.raises(CheckpointError, match=r"reBEN .* import it first"):
        checkpoints.resolve(str(src))
    out = import_checkpoint(str(src / "model.safetensors"), str(tmp_path / "ours"), version=version or "v0.2.0")
    loaded = checkpoints.load(out)
    assert loaded.spec.name == model_name and loaded.spec.resample == "nearest"
    assert loaded.spec.stats == "v2-120-nearest"
    assert list(loaded.spec.bands) == (
        order or list(BAND_SETS[{"s1": "s1", "s2": "s2-10", "early": "s1s2-10"}[model_name]])
    )
    assert loaded.meta["source"]["format"] == "reben"

    theirs = np.load(src / "probabilities.npy")
    classes = json.loads((src / "classes.json").read_text())
    assert classes == sorted(lab.class_names(19))  # ConfigILM's order: alphabetical
    ours = ModelRunner(loaded, device="cpu").predict(_batch(_raw())).numpy()
    assert ours.shape == theirs.shape
    assert float(np.std(theirs)) > 0.01  # the random model does not answer the same for everything
    for i, name in enumerate(lab.class_names(19)):  # per class name: the order is mapped
        np.testing.assert_allclose(ours[:, i], theirs[:, classes.index(name)], atol=1e-5, err_msg=name)

    tables = json.loads((src / "stats.json").read_text())  # our statistics tables are ConfigILM's, exactly
    for ours_name, theirs_name in (("v2", "no_interpolation"), ("v2-120-nearest", "120_nearest")):
        for band, (mean, std) in STATS[ours_name].items():
            assert (mean, std) == (tables[theirs_name]["means"][band], tables[theirs_name]["stds"][band])
    for band, (mean, std) in STATS["v2-120-bilinear"].items():
        assert (mean, std) == (tables["120_bilinear"]["means"][band], tables["120_bilinear"]["stds"][band])


def test_the_recipe_schedule_is_configilms(configilm: Path) -> None:
    """reBEN's LinearWarmupCosineAnnealingLR (warm-up from lr/10, cosine to lr/10, per step) against ours."""
    from bigearth.training.loop import lr_lambda

    code = (
        "import json, torch; from configilm.extra.CustomTorchClasses import LinearWarmupCosineAnnealingLR as S\n"
        "opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)\n"
        "s = S(opt, warmup_epochs=10, max_epochs=60, warmup_start_lr=1e-4, eta_min=1e-4); out = []\n"
        "for _ in range(70):\n    out.append(opt.param_groups[0]['lr']); opt.step(); s.step()\n"
        "print(json.dumps(out))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    r = subprocess.run([str(configilm), "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    theirs = json.loads(r.stdout.strip().splitlines()[-1])
    ours = [1e-3 * lr_lambda(step, 10, 60, 0.1, 0.1) for step in range(60)]
    np.testing.assert_allclose(ours, theirs[:60], rtol=1e-9, atol=1e-12)


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_an_imported_checkpoint_evaluates_and_indexes(
    references: dict[str, Path], shards_v2: Path, tmp_path: Path
) -> None:
    from bigearth.evaluation.classification import evaluate
    from bigearth.retrieval import open_index
    from bigearth.retrieval.indexer import build_index

    src = references["resnet18-all"]
    out = import_checkpoint(str(src), str(tmp_path / "resnet18-all"))
    m = evaluate(out, str(shards_v2), "test", str(tmp_path / "eval"))
    assert m["samples"] > 0 and m["macro_ap"] is not None
    target = tmp_path / "index"
    report = build_index(out, str(shards_v2), str(target), progress=False)
    index = open_index(str(target))
    try:
        assert index.count() == report["upserted"] > 0 and set(index.metadata()["vectors"]) == {
            "fused"
        }  # early fusion: fused only
    finally:
        index.close()
