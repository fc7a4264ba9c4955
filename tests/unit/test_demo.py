"""The demo's config: the repository's configs/tiny-cpu.yaml (the tests' model), not a copy of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from bigearth.demo.run import DEMO_CONFIG, demo_config
from bigearth.training.config import load_config
from helpers import REPO


def test_the_demo_trains_the_config_file_for_its_epochs_without_early_stop() -> None:
    assert DEMO_CONFIG == REPO / "configs" / "tiny-cpu.yaml"
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
