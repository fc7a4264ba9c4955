"""The official reBEN (BigEarthNet v2.0) checkpoints, imported into this platform's checkpoint format.

The model cards of `BIFOLD-BigEarthNetv2-0` (Hugging Face) distribute what the reBEN training scripts save with
`PyTorchModelHubMixin.save_pretrained`: `config.json` (ConfigILM's `ILMConfiguration` as a flat JSON: timm model
name, channels, classes, image size, dropout rates) and `model.safetensors` (the state dict of a wrapper whose
`model` is a `ConfigILM`, whose `vision_encoder` is the timm model with its own 19-class head: every key is
`model.vision_encoder.<timm key>`). Its classes are in alphabetical order; its inputs are bands resampled to
120 px with nearest interpolation and normalised with ConfigILM's `120_nearest` statistics, in the v0.2.0 band
order (S1: VV, VH; S2: B02, B03, B04, B05, B06, B07, B08, B8A, B11, B12; S1+S2: both, S1 first).

`import_checkpoint(src, out)` reads both files (a local folder or any fsspec URL, e.g. a Hugging Face
`.../resolve/main` address), builds the matching model here (`s1`, `s2` or `early` by the channels; the same timm
architecture), moves the weights over (the classifier rows reordered to this platform's official class order) and
writes a checkpoint folder that evaluation, indexing and serving load like any other.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch

from bigearth.core import labels as lab
from bigearth.core.bands import BAND_SETS
from bigearth.core.storage import StorageOptions, join, open_fs
from bigearth.models import checkpoints
from bigearth.models.checkpoints import CheckpointError

logger = logging.getLogger(__name__)
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
PREFIX = "model.vision_encoder."
#: channels -> (model here, band order of the v0.2.0 checkpoints)
V020 = {2: ("s1", BAND_SETS["s1"]), 10: ("s2", BAND_SETS["s2-10"]), 12: ("early", BAND_SETS["s1s2-10"])}
#: the band order of the v0.1.1 checkpoints, as their model cards state it (S1: VH, VV; S2: the list below; S1+S2:
#: the S2 list, then VH, VV); their preprocessing is taken to be v0.2.0's (nearest, 120_nearest): not verified
V011 = {
    2: ("s1", ("VH", "VV")),
    10: ("s2", ("B02", "B03", "B04", "B08", "B05", "B06", "B07", "B11", "B12", "B8A")),
    12: ("early", ("B02", "B03", "B04", "B08", "B05", "B06", "B07", "B11", "B12", "B8A", "VH", "VV")),
}
ORDERS = {"v0.2.0": V020, "v0.1.1": V011}


def _read(src: str, storage: StorageOptions | None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    from safetensors.torch import load as load_safetensors

    root_url = src[: -len(WEIGHTS_FILE)].rstrip("/") if src.endswith(WEIGHTS_FILE) else src.rstrip("/")
    fs, root = open_fs(root_url, storage)
    try:
        config = json.loads(fs.cat(join(root, CONFIG_FILE)))
    except FileNotFoundError:
        raise CheckpointError(
            f"{root_url}: no {CONFIG_FILE} (a reBEN checkpoint has config.json and {WEIGHTS_FILE})"
        ) from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{root_url}/{CONFIG_FILE}: not JSON ({e})") from None
    try:
        raw = fs.cat(join(root, WEIGHTS_FILE))
    except FileNotFoundError:
        raise CheckpointError(f"{root_url}: no {WEIGHTS_FILE}") from None
    try:
        state = load_safetensors(raw)
    except Exception as e:
        raise CheckpointError(
            f"{root_url}/{WEIGHTS_FILE}: unreadable safetensors ({type(e).__name__}: {e})"[:400]
        ) from None
    return config, state


def describe(config: dict[str, Any], version: str = "v0.2.0", bands: Sequence[str] | None = None) -> dict[str, Any]:
    """The model here that a reBEN `config.json` describes: `{"name": ..., **builder arguments}`."""
    for key in ("timm_model_name", "channels", "classes"):
        if key not in config:
            raise CheckpointError(f"{CONFIG_FILE}: no {key!r} (expected ConfigILM's ILMConfiguration fields)")
    if int(config.get("network_type", 0)) != 0:
        raise CheckpointError(f"{CONFIG_FILE}: network_type {config['network_type']} is not image classification (0)")
    if config["classes"] != 19:
        raise CheckpointError(f"{CONFIG_FILE}: {config['classes']} classes; reBEN checkpoints have the 19 classes")
    if version not in ORDERS:
        raise CheckpointError(f"unknown reBEN checkpoint version {version!r}; expected one of {sorted(ORDERS)}")
    channels = int(config["channels"])
    if channels not in ORDERS[version] and bands is None:
        raise CheckpointError(
            f"{CONFIG_FILE}: {channels} channels; the reBEN checkpoints have 2 (S1), 10 (S2) or 12 (S1+S2): "
            "name the band order with `bands`"
        )
    name, order = ORDERS[version].get(channels, ("", ()))
    if bands is not None:
        order = tuple(bands)
        if len(order) != channels:
            raise CheckpointError(f"bands {list(order)}: {len(order)} names for a {channels}-channel checkpoint")
        sensors = {"VV", "VH"} & set(order)
        name = "early" if sensors and len(sensors) < len(order) else ("s1" if sensors else "s2")
    kwargs: dict[str, Any] = {
        "name": name,
        "backbone": config["timm_model_name"],
        "stats": "v2-120-nearest",
        "resample": "nearest",
        "img_size": int(config.get("image_size", 120)),
        "drop_rate": float(config.get("drop_rate") or 0.0),
    }
    if config.get("drop_path_rate"):
        kwargs["drop_path_rate"] = float(config["drop_path_rate"])
    if name != "s1":
        kwargs["s2_bands"] = 10 if not {"B01", "B09"} & set(order) else 12
    kwargs["bands"] = list(order)  # always explicit: the checkpoint's channel order is the builder's input
    return kwargs


def convert(
    config: dict[str, Any], state: dict[str, torch.Tensor], version: str = "v0.2.0", bands: Sequence[str] | None = None
) -> tuple[Any, dict[str, Any]]:
    """(model here with the checkpoint's weights, its builder arguments)."""
    from bigearth.models.fusion import create_timm
    from bigearth.models.registry import create_model

    kwargs = describe(config, version, bands)
    foreign = [k for k in state if not k.startswith(PREFIX)]
    if foreign:
        raise CheckpointError(f"{WEIGHTS_FILE}: keys outside {PREFIX!r}, e.g. {foreign[:3]}: not a reBEN classifier")
    timm_state = {k[len(PREFIX) :]: v for k, v in state.items()}
    # the architecture as ConfigILM builds it (its own head), loaded strictly: every weight must fit
    reference = create_timm(
        config["timm_model_name"], num_classes=19, in_chans=int(config["channels"]), img_size=kwargs["img_size"]
    )
    try:
        reference.load_state_dict(timm_state)
    except RuntimeError as e:
        raise CheckpointError(
            f"{WEIGHTS_FILE}: does not fit timm {config['timm_model_name']}: {str(e)[:300]}"
        ) from None
    head: Any = reference.get_classifier()  # type: ignore[operator]
    if not isinstance(head, torch.nn.Linear):
        raise CheckpointError(f"timm {config['timm_model_name']}: classifier is {type(head).__name__}, not Linear")
    weight, bias = head.weight.detach().clone(), head.bias.detach().clone()
    reference.reset_classifier(0)  # type: ignore[operator]
    name = kwargs.pop("name")
    model: Any = create_model(name, num_classes=19, **kwargs)
    (encoder,) = model.encoders.values()
    encoder.backbone.load_state_dict(reference.state_dict())
    theirs = sorted(lab.class_names(19))  # ConfigILM's NEW_LABELS: the 19 names sorted
    order = [theirs.index(n) for n in lab.class_names(19)]
    with torch.no_grad():
        model.head.weight.copy_(weight[order])
        model.head.bias.copy_(bias[order])
    model.eval()
    return model, {"name": name, **kwargs}


def import_checkpoint(
    src: str,
    out: str,
    *,
    version: str = "v0.2.0",
    bands: Sequence[str] | None = None,
    storage: StorageOptions | None = None,
    before_commit: Callable[[], None] | None = None,
) -> str:
    """Read a reBEN checkpoint (folder or its `model.safetensors`, local or URL) and write it to `out` as a
    bigearth checkpoint folder (local or URL); return `out`. `before_commit` runs right before `meta.json`, the
    write that makes the folder a checkpoint (the output lock's `verify`: a writer whose lock was taken over
    stops there)."""
    if version == "v0.1.1":
        logger.warning(
            "%s: v0.1.1 band order from the model cards; resampling and statistics assumed to be v0.2.0's "
            "(nearest, 120_nearest): check against the card before trusting its scores",
            src,
        )
    config, state = _read(src, storage)
    model, builder = convert(config, state, version, bands)
    meta = checkpoints.CheckpointMeta(
        model=builder,
        num_classes=19,
        source={"format": "reben", "url": src, "version": version, "config": config},
    )
    checkpoints.write(out, model, meta, storage=storage, before_commit=before_commit)
    return out
