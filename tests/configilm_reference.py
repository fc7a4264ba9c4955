"""Run by the configilm venv (tests/configilm_env.py), never imported by the suite.

`python configilm_reference.py CASES.json` (each case: ARCH, CHANNELS, SEED, INPUT.npz, OUT_DIR, BANDS): builds
reBEN's classifier with the real `configilm` (random weights, BatchNorm statistics and affine parameters randomised
so every layer matters), saves it as the reBEN training scripts do (`PyTorchModelHubMixin.save_pretrained(dir,
config=ILMConfiguration)`: config.json + model.safetensors), and writes the probabilities reBEN's evaluation path
gives for the raw bands in INPUT.npz (one array per band, `[B, H, W]` at native size; BANDS: a channel order other
than v0.2.0's): `stack_and_interpolate` (nearest, 120 px), the `120_nearest` statistics of `band_combi_to_mean_std`,
ConfigILM's `default_transform`, the model, a sigmoid. Output: OUT_DIR/probabilities.npy and OUT_DIR/classes.json
(ConfigILM's class order), OUT_DIR/stats.json (its tables).
"""

import json
import sys

import numpy as np
import torch
from configilm import ConfigILM
from configilm.ConfigILM import ILMConfiguration, ILMType
from configilm.extra import BENv2_utils
from configilm.extra._defaults import default_transform
from huggingface_hub import PyTorchModelHubMixin


class BigEarthNetv2_0_ImageClassifier(torch.nn.Module, PyTorchModelHubMixin):
    """What reBEN's class of that name saves (reben_publication/BigEarthNetv2_0_ImageClassifier.py), without the
    Lightning training hooks: `self.model = ConfigILM(config)`, forward = the model."""

    def __init__(self, config: ILMConfiguration):
        super().__init__()
        self.config = config
        self.model = ConfigILM.ConfigILM(config)

    def forward(self, batch):
        return self.model(batch)


def build(arch: str, channels: int, seed: int, inputs: str, out: str, bands: list[str] | None) -> None:
    torch.manual_seed(seed)
    config = ILMConfiguration(
        network_type=ILMType.IMAGE_CLASSIFICATION,
        classes=19,
        image_size=120,
        drop_rate=0.15,
        drop_path_rate=0.15,
        timm_model_name=arch,
        channels=channels,
    )
    model = BigEarthNetv2_0_ImageClassifier(config)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    model.eval()
    model.save_pretrained(out, config=config)

    bands = bands or BENv2_utils.STANDARD_BANDS[channels]
    mean, std = BENv2_utils.band_combi_to_mean_std(bands, "120_nearest")
    transform = default_transform((120, 120), mean, std)
    raw = np.load(inputs)
    n = len(raw[bands[0]])
    x = torch.stack(
        [
            transform(BENv2_utils.stack_and_interpolate({b: raw[b][i] for b in bands}, order=bands, img_size=120))
            for i in range(n)
        ]
    )
    with torch.no_grad():
        probs = torch.sigmoid(model(x)).numpy()
    np.save(f"{out}/probabilities.npy", probs)
    with open(f"{out}/classes.json", "w") as f:
        json.dump(list(BENv2_utils.NEW_LABELS), f)
    with open(f"{out}/stats.json", "w") as f:
        json.dump({k: {"means": BENv2_utils.means[k], "stds": BENv2_utils.stds[k]} for k in BENv2_utils.means}, f)


def main() -> None:
    """`CASES.json`: a list of {arch, channels, seed, inputs, out, bands (or null)}, built in one process."""
    with open(sys.argv[1]) as f:
        for case in json.load(f):
            build(case["arch"], case["channels"], case["seed"], case["inputs"], case["out"], case.get("bands"))


if __name__ == "__main__":
    main()
