"""What each reBEN config costs to train: parameters and FLOPs per pair (forward + backward at its input size,
counted by torch's FlopCounterMode on the CPU), and from them the compute of one epoch and a bound on the time per
epoch at a stated accelerator throughput. docs/reproduce.md quotes the table.

    .venv/bin/python bench/reben_cost.py --out bench/results/reben-cost.json

The time is an estimate (sustained FLOP/s of the GPU is an input, not a measurement): no GPU was lent to this
project when it was written. Measure it on a node with bench/training.py."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))
TRAIN, VALIDATION = 237_871, 122_342  # reBEN split sizes (metadata.parquet, ../shared FACTS.md 2.4)


def cost(path: Path) -> dict[str, object]:
    from bigearth.core.bands import BANDS, GROUPS
    from bigearth.models.registry import create_model
    from bigearth.training.config import load_config

    cfg = load_config(path)
    model = create_model(cfg.model.name, num_classes=19, **cfg.model_kwargs())
    params = sum(p.numel() for p in model.parameters())
    batch = {g: torch.zeros(2, len(names), BANDS[names[0]].size, BANDS[names[0]].size) for g, names in GROUPS.items()}
    model.train()
    with FlopCounterMode(display=False) as counter:
        model(batch).sum().backward()
    train_flops = counter.get_total_flops() / 2
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(batch)
    eval_flops = counter.get_total_flops() / 2
    return {
        "config": str(path.relative_to(ROOT)),
        "params_m": params / 1e6,
        "train_gflops_per_pair": train_flops / 1e9,
        "eval_gflops_per_pair": eval_flops / 1e9,
        "epoch_pflops": (train_flops * TRAIN + eval_flops * VALIDATION) / 1e15,
        "cpus_per_worker": cfg.scaling.cpus_per_worker,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="*", help="default: every configs/reben/*-all.yaml and resnet50-s1/-s2")
    p.add_argument(
        "--tflops",
        type=float,
        default=40.0,
        help="sustained TFLOP/s assumed per GPU (TF32/bf16 matmuls; ResNet-50 at 224 px reaches ~60 on an A100)",
    )
    p.add_argument(
        "--input-pairs-per-core",
        type=float,
        default=1958.0,
        help="training input rate per CPU core (docs/benchmarks.md, issue 9 (f): 1,958 pairs/s measured here)",
    )
    p.add_argument("--gpus", type=int, default=4, help="GPUs of the node (the configs' scaling.num_workers)")
    p.add_argument("--epochs", type=int, default=20, help="epochs to the best checkpoint (the card: 19)")
    p.add_argument("--out")
    a = p.parse_args(argv)
    reben = ROOT / "configs" / "reben"
    paths = (
        [Path(c).resolve() for c in a.configs]
        if a.configs
        else [*sorted(reben.glob("*-all.yaml")), reben / "resnet50-s1.yaml", reben / "resnet50-s2.yaml"]
    )
    rows = []
    for path in paths:
        r = cost(path)
        cpus = r["cpus_per_worker"]
        compute = r["epoch_pflops"] * 1e15 / (a.tflops * 1e12 * a.gpus)  # type: ignore[operator]
        feed = (TRAIN + VALIDATION) / (a.input_pairs_per_core * cpus * a.gpus)
        seconds = max(compute, feed)
        r["bound"] = "compute" if compute >= feed else "input"
        r["epoch_minutes_at_assumed_rate"] = seconds / 60
        r["run_hours_at_assumed_rate"] = seconds * a.epochs / 3600
        rows.append(r)
        print(
            f"{path.stem:28s} {r['params_m']:7.1f} M params  {r['train_gflops_per_pair']:7.2f} GFLOP/pair (train)  "
            f"{r['epoch_minutes_at_assumed_rate']:6.1f} min/epoch  "
            f"{r['run_hours_at_assumed_rate']:5.2f} h/run ({r['bound']})",
            file=sys.stderr,
        )
    result = {
        "assumed_tflops_per_gpu": a.tflops,
        "input_pairs_per_core": a.input_pairs_per_core,
        "gpus": a.gpus,
        "epochs": a.epochs,
        "models": rows,
    }
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
