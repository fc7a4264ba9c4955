"""The GPU check's pre-flight (issue 25): the CUDA paths that need only torch, timm and numpy, in about 10 s, so the
first device call finds a broken CUDA path before the wheels are carried and the check runs.

    PYTHONPATH=platform python3 bench/gpu_preflight.py [--device cuda|cpu] [--out FILE]

Parts, in order, each timed (a part that raises is recorded and the rest still run; exit 1 if any failed):
1. flips: `bigearth.training.augment.random_flips` on uint16 tensors on the device (the loader's dtype);
2. stem: `bigearth.models.stem.InputStem` (normalise, resample 20 m / 60 m bands to 120 px) on those;
3. resnet50: a timm ResNet-50 forward and backward, bf16 autocast, channels-last, a few steps (pairs/s);
4. pinned: a pinned-memory batch copied to the device with non_blocking=True, checked equal after a synchronise.
It prints one JSON document (also written to --out).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

#: Pairs a batch and native sizes of the groups (10 m: 120 px, 20 m: 60 px, 60 m: 20 px; S1 at 10 m).
BATCH = {"cuda": 128, "cpu": 4}
#: Timed ResNet-50 steps, after one untimed.
STEPS = {"cuda": 20, "cpu": 2}
SIZES = {"s1": 120, "s2_10m": 120, "s2_20m": 60, "s2_60m": 20}


def uint16_batch(n: int, device: Any) -> dict[str, Any]:
    """A batch of `n` random pairs, every group as uint16 [n, C, H, W] on `device`."""
    import torch

    from bigearth.core.bands import GROUPS

    gen = torch.Generator().manual_seed(25)
    return {
        g: torch.randint(0, 10000, (n, len(GROUPS[g]), s, s), generator=gen).to(torch.uint16).to(device)
        for g, s in SIZES.items()
    }


def sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def part_flips(device: Any, n: int) -> dict[str, Any]:
    import torch

    from bigearth.training.augment import random_flips

    batch = uint16_batch(n, device)
    out = random_flips(batch, torch.Generator().manual_seed(1))
    sync(device)
    for g, x in out.items():
        if x.dtype != torch.uint16 or x.shape != batch[g].shape or x.device != batch[g].device:
            raise RuntimeError(f"{g}: flipped to {x.dtype} {tuple(x.shape)} on {x.device}")
    return {"groups": len(out)}


def part_stem(device: Any, n: int) -> dict[str, Any]:
    import torch

    from bigearth.models.stem import InputStem

    stem = InputStem("s1s2-12").to(device)
    x = stem(uint16_batch(n, device))
    sync(device)
    if x.shape != (n, stem.in_chans, 120, 120) or not torch.isfinite(x).all():
        raise RuntimeError(f"stem output {tuple(x.shape)}, finite: {bool(torch.isfinite(x).all())}")
    return {"shape": list(x.shape)}


def part_resnet50(device: Any, n: int) -> dict[str, Any]:
    """ResNet-50 (12 bands in, 19 classes) trained a few steps in bf16 autocast, channels-last."""
    import timm
    import torch

    model = timm.create_model("resnet50", pretrained=False, in_chans=12, num_classes=19).to(device)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(n, 12, 120, 120, device=device).to(memory_format=torch.channels_last)
    y = (torch.rand(n, 19, device=device) < 0.2).float()

    def step() -> float:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    step()  # allocation, autotuning
    sync(device)
    t0 = time.perf_counter()
    steps = STEPS[device.type]
    losses = [step() for _ in range(steps)]
    sync(device)
    seconds = time.perf_counter() - t0
    if not all(math.isfinite(v) for v in losses):
        raise RuntimeError(f"losses not finite: {losses}")
    return {"batch": n, "steps": steps, "pairs_per_s": round(n * steps / seconds, 1)}


def part_pinned(device: Any, n: int) -> dict[str, Any]:
    import torch

    host = torch.randint(0, 10000, (n, 12, 120, 120)).to(torch.uint16)
    pinned = host.pin_memory() if device.type == "cuda" else host
    copy = pinned.to(device, non_blocking=True)
    sync(device)
    if not torch.equal(copy.cpu(), host):
        raise RuntimeError("the non-blocking copy differs from its source")
    return {"pinned": bool(pinned.is_pinned()), "mib": round(host.numel() * 2 / 2**20, 1)}


PARTS: dict[str, Callable[[Any, int], dict[str, Any]]] = {
    "flips": part_flips,
    "stem": part_stem,
    "resnet50": part_resnet50,
    "pinned": part_pinned,
}


def run(device_name: str) -> dict[str, Any]:
    """Every part on `device_name`, each timed; a part's error is recorded and the next still runs."""
    import torch

    device = torch.device(device_name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_preflight: --device cuda but torch sees no CUDA device")
    doc: dict[str, Any] = {
        "device": device_name,
        "machine": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "parts": {},
    }
    t0 = time.perf_counter()
    for name, part in PARTS.items():
        t = time.perf_counter()
        try:
            row: dict[str, Any] = {"ok": True, **part(device, BATCH[device.type])}
        except Exception as e:
            traceback.print_exc()
            row = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        doc["parts"][name] = {"seconds": round(time.perf_counter() - t, 2), **row}
    doc["total_s"] = round(time.perf_counter() - t0, 1)
    doc["failed"] = [n for n, r in doc["parts"].items() if not r["ok"]]
    return doc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--out", help="also write the JSON here")
    a = ap.parse_args(argv)
    doc = run(a.device)
    text = json.dumps(doc, indent=1)
    print(text, flush=True)
    if a.out:
        Path(a.out).write_text(text)
    return 1 if doc["failed"] else 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "platform"))
    sys.exit(main())
