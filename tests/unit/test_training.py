"""The training config: every shipped config parses, and a bad key or value is an error naming the key."""

from __future__ import annotations

import pytest

from bigearth.training.config import ConfigError, load_config
from helpers import REPO

TINY = str(REPO / "configs" / "tiny-cpu.yaml")


def test_every_shipped_config_is_valid() -> None:
    for path in sorted((REPO / "configs").glob("*.yaml")):
        cfg = load_config(path)
        classifiers, segmentation = {"tiny", "early", "late", "s1", "s2"}, {"seg-tiny", "seg-late"}
        assert cfg.model.name in classifiers | segmentation, path
    assert load_config(TINY, ["optim.lr=3e-4", "scaling.num_workers=2"]).optim.lr == 3e-4


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lrr=1", "optim.lrr: Extra inputs are not permitted"),
        ("optim.lr=-1", "optim.lr: Input should be greater than 0"),
        ("model.s2_bands=11", "model.s2_bands: Input should be 10 or 12"),
        ("optim", "expected key=value"),
        ("retrieval.cross_modal=both", "retrieval.cross_modal: Input should be 'aligned' or 'logits'"),
    ],
)
def test_bad_config_names_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(TINY, [override])
