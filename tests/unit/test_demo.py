"""The demo's config: the repository's configs/tiny-cpu.yaml (the tests' model), not a copy of it."""

from __future__ import annotations

from pathlib import Path

import pytest

import bigearth.demo.run
from bigearth.demo.run import DEMO_CONFIGS, demo_config
from bigearth.training.config import load_config
from helpers import REPO

DEMO_CONFIG = REPO / "configs" / "tiny-cpu.yaml"


def test_the_demo_trains_the_config_file_for_its_epochs_without_early_stop() -> None:
    assert DEMO_CONFIGS[0] == DEMO_CONFIG
    got = demo_config(5)
    assert (got.optim.epochs, got.run.patience) == (5, 5)
    file = load_config(DEMO_CONFIG).model_dump()
    file["optim"]["epochs"] = file["run"]["patience"] = 5
    assert got.model_dump() == file  # everything else (model, batch size, lr, warm-up, bands) as in the file


def test_another_config_is_used_and_a_missing_one_is_named(tmp_path: Path) -> None:
    other = tmp_path / "other.yaml"
    other.write_text(DEMO_CONFIG.read_text().replace("lr: 0.003", "lr: 0.01"))
    assert demo_config(1, other).optim.lr == 0.01
    with pytest.raises(FileNotFoundError, match=r"missing\.yaml"):
        demo_config(1, tmp_path / "missing.yaml")


def test_installed_without_the_checkout_it_takes_configs_from_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # as in the image: the package is a wheel in site-packages, configs/ beside the jobs in the working folder
    monkeypatch.setattr(bigearth.demo.run, "DEMO_CONFIGS", (tmp_path / "site" / "tiny-cpu.yaml", DEMO_CONFIGS[1]))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"none of .*site/tiny-cpu\.yaml, configs/tiny-cpu\.yaml"):
        demo_config(1)
    monkeypatch.chdir(REPO)
    assert demo_config(1).model.name == load_config(DEMO_CONFIG).model.name


def test_the_segmentation_model_is_its_own_config_file_from_the_same_places() -> None:
    from bigearth.demo.run import SEG_CONFIG

    got = demo_config(3, name=SEG_CONFIG)
    assert (got.optim.epochs, got.run.patience) == (3, 3)
    assert got.model.name == load_config(REPO / "configs" / SEG_CONFIG).model.name == "seg-tiny"


def test_two_charts_of_one_name_both_reach_the_report(tmp_path: Path) -> None:
    from bigearth.demo.report import write_report

    for folder, colour in (("eval", b"A"), ("eval-segmentation", b"B")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "by_group.png").write_bytes(colour * 200)
    data = {
        "metrics": {"samples": 1},
        "by_group_png": str(tmp_path / "eval" / "by_group.png"),
        "segmentation": {"patches": 1},
        "seg_by_group_png": str(tmp_path / "eval-segmentation" / "by_group.png"),
    }
    page = Path(write_report(str(tmp_path / "report"), data)).read_text()
    images = tmp_path / "report" / "images"
    assert 'src="images/by_group.png"' in page and 'src="images/eval-segmentation-by_group.png"' in page
    assert (images / "by_group.png").read_bytes()[:1] == b"A"
    assert (images / "eval-segmentation-by_group.png").read_bytes()[:1] == b"B"


def test_an_undefined_segmentation_miou_reads_n_a_not_a_crash_or_zero() -> None:
    from bigearth.demo.run import figure, segmentation_line

    line = segmentation_line({"miou": None, "pixel_accuracy": None, "scored_pixels": 0, "patches": 2})
    assert "mIoU n/a, pixel accuracy n/a over 0 scored pixels of 2 patches" in line
    assert figure(None) == "n/a" and figure(0.12345) == 0.123
