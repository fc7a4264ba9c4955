"""The GPU check (issue 25): one prepared command that runs every CUDA path of the platform in order, each step
timed, and writes its figures to DIR/gpu_check.json and a Markdown table DIR/gpu_check.md (also printed).

    PYTHONPATH=platform python3 bench/gpu_check.py --out DIR [--budget-s 480]     # one GPU, 16 cores: <= 8 min
    PYTHONPATH=platform python3 bench/gpu_check.py --device cpu --out DIR         # the same steps, a tiny config

Steps, in order:
1. probe: device, torch / CUDA / Ray versions, the GPU (torch, nvidia-smi), cores.
2. data: a synthetic v2 archive synthesised and ingested (Ray); it sizes itself: after a warm-up run, two small
   calibration runs give seconds per pair and fixed seconds, then it makes as many pairs as fit the step's share
   of the budget, never fewer than the training steps need, never more than --max-pairs (the disk); the
   arithmetic goes into the JSON.
3. train: the config (default: reBEN ResNet-50 S1+S2) through Ray Train, one worker with every core and the GPU,
   with the real loader (`bigearth.training.loop`: `setup`, `epoch_loader`, `fit_epoch`) for a fixed number of
   steps, for bf16 and fp32 (`optim.precision`): pairs/s, GPU utilisation while the steps run (NVML or
   nvidia-smi; null on CPU), peak GPU memory, and the input-bound fraction 1 - rate(loader) / rate(the same steps
   on one batch held on the device). The trained weights come back as a checkpoint.
4. evaluate, 5. index: `evaluate` and `build_index` of that checkpoint on the test split, on the GPU (one actor,
   one GPU): pairs/s.
6. serve: the checkpoint behind Ray Serve on the GPU (bench/serve.py's measurement): requests/s at 32 clients
   with batch size 1 and with dynamic batching, p50/p99.

The first step that fails stops the check: the JSON names it (`failed`: {step, error}), the line
`gpu_check: step <name> failed: <error>` is printed and the exit status is 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

STEPS = ("probe", "data", "train", "evaluate", "index", "serve")
PRECISIONS = ("bf16", "fp32")
#: Train pairs a synthetic v2 archive keeps, as a share of its pairs, at least: half are train, and the ingest
#: drops the pairs with snow, cloud or no label of the 19 (about 10 %).
TRAIN_SHARE = 0.42
#: Share of the budget the data step sizes itself to.
DATA_SHARE = 0.25

#: Per device: the config, training steps (after warm-up steps), calibration sizes, pairs at most, serve load.
PROFILES: dict[str, dict[str, Any]] = {
    "cuda": {
        "config": "configs/reben/resnet50-all.yaml",
        "steps": 30,
        "warmup_steps": 5,
        "calibration": (1000, 3000),
        "max_pairs": 60000,
        "shard_size": 1000,
        "serve_seconds": 15.0,
        "serve_warmup_s": 3.0,
    },
    "cpu": {
        "config": "configs/tiny-cpu.yaml",
        "steps": 4,
        "warmup_steps": 2,
        "calibration": (32, 64),
        "max_pairs": 2000,
        "shard_size": 100,
        "serve_seconds": 3.0,
        "serve_warmup_s": 1.0,
    },
}


@dataclass
class Check:
    """The run's arguments and what the steps hand on to the next (shards, checkpoint, index)."""

    device: str
    budget_s: float
    out: Path
    work: Path
    config: str
    overrides: list[str]
    steps: int
    warmup_steps: int
    cores: int
    clients: int
    profile: dict[str, Any]
    shards: str = ""
    checkpoint: str = ""
    index: str = ""
    results: list[dict[str, Any]] = field(default_factory=list)

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"


# -- 1. probe ------------------------------------------------------------------------------------------------


def nvidia_smi(query: str) -> list[str] | None:
    """`nvidia-smi --query-gpu=<query>` lines (csv, no header, no units), None without nvidia-smi."""
    if not shutil.which("nvidia-smi"):
        return None
    done = subprocess.run(
        ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return done.stdout.strip().splitlines() if done.returncode == 0 else None


def step_probe(c: Check) -> dict[str, Any]:
    """The machine, and a local Ray on every core (and GPU) for the steps after it: the imports and Ray's start
    are the first thing a machine without the carried packages fails at."""
    import ray
    import torch

    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=c.cores, include_dashboard=False, log_to_driver=False)
    figures: dict[str, Any] = {
        "ray_init_s": time.perf_counter() - t0,
        "device": c.device,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "ray": ray.__version__,
        "cuda_available": torch.cuda.is_available(),
    }
    if c.cuda:  # no CUDA context in this process: the data step forks its synthesis workers
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda: torch sees no CUDA device")
        figures["gpus"] = torch.cuda.device_count()
        figures["nvidia_smi"] = nvidia_smi("name,memory.total,driver_version")
    return figures


# -- 2. data -------------------------------------------------------------------------------------------------


def synth_and_ingest(archive: Path, shards: Path, pairs: int, shard_size: int, workers: int) -> dict[str, float]:
    """Synthesise `pairs` v2 pairs (`workers` processes) and ingest them (Ray); the archive is deleted afterwards
    (the disk)."""
    from bigearth.ingest.job import ingest
    from bigearth.synth.archive import synthesize

    t0 = time.perf_counter()
    synthesize(str(archive), layout="v2", pairs=pairs, seed=25, workers=workers, progress=False)
    t1 = time.perf_counter()
    ingest(str(archive), str(shards), shard_size=shard_size, progress=False, overwrite=True)
    t2 = time.perf_counter()
    shutil.rmtree(archive, ignore_errors=True)
    return {"synth_s": t1 - t0, "ingest_s": t2 - t1, "seconds": t2 - t0}


def batch_size_of(c: Check) -> int:
    return train_config(c, PRECISIONS[0]).worker_batch_size(1)


def plan_pairs(c: Check, cal: list[tuple[int, float]], spent_s: float) -> dict[str, Any]:
    """How many pairs the data step makes: the calibration runs (pairs, seconds) as a line, seconds = fixed +
    pairs * per_pair; as many pairs as the step's share of the budget leaves after the calibration, at least the
    floor that gives the training steps their batches, at most `max_pairs`."""
    (n1, t1), (n2, t2) = cal
    per_pair = (t2 - t1) / (n2 - n1) if t2 > t1 else t2 / n2  # noise: then no fixed part
    fixed = max(0.0, t1 - n1 * per_pair)
    share_s = DATA_SHARE * c.budget_s
    left_s = share_s - spent_s
    by_budget = max(0, int((left_s - fixed) / per_pair))
    batches = c.warmup_steps + c.steps + 1  # + 1: the batch held on the device
    floor = math.ceil(batch_size_of(c) * batches / TRAIN_SHARE)
    pairs = min(max(by_budget, floor), c.profile["max_pairs"])
    return {
        "calibration": [{"pairs": n, "seconds": round(t, 2)} for n, t in cal],
        "per_pair_s": per_pair,
        "fixed_s": round(fixed, 2),
        "share_s": share_s,
        "left_after_calibration_s": round(left_s, 2),
        "pairs_by_budget": by_budget,
        "floor_pairs": floor,
        "floor_rule": f"batch {batch_size_of(c)} x {batches} batches / train share {TRAIN_SHARE}",
        "max_pairs": c.profile["max_pairs"],
        "pairs": pairs,
        "predicted_s": round(fixed + pairs * per_pair, 1),
    }


def step_data(c: Check) -> dict[str, Any]:
    from bigearth.shards.shardset import ShardSet

    t0 = time.perf_counter()
    cal = []
    n1, n2 = c.profile["calibration"]
    for i, n in enumerate((n1, n1, n2)):  # the first run pays the one-off costs (imports, Ray Data's start)
        took = synth_and_ingest(c.work / f"cal{i}", c.work / f"cal{i}-shards", n, c.profile["shard_size"], c.cores)
        shutil.rmtree(c.work / f"cal{i}-shards", ignore_errors=True)
        cal.append((n, took["seconds"]))
    sizing = plan_pairs(c, cal[1:], time.perf_counter() - t0)
    sizing["warm_up_run"] = {"pairs": n1, "seconds": round(cal[0][1], 2)}
    shards = c.work / "shards"
    took = synth_and_ingest(c.work / "archive", shards, sizing["pairs"], c.profile["shard_size"], c.cores)
    sizing["actual_s"] = round(took["seconds"], 1)
    c.shards = str(shards)
    splits = ShardSet.open(c.shards).splits
    return {
        "sizing": sizing,
        "pairs": sizing["pairs"],
        "kept_pairs": sum(splits.values()),
        "splits": splits,
        "synth_s": round(took["synth_s"], 2),
        "ingest_s": round(took["ingest_s"], 2),
        "pairs_per_s": sizing["pairs"] / took["seconds"],
    }


# -- 3. train ------------------------------------------------------------------------------------------------


def train_config(c: Check, precision: str) -> Any:
    """The config loaded as the CLI loads it, for one worker with every core (and the GPU on CUDA) at `precision`;
    --set overrides last."""
    from bigearth.training.config import load_config

    ours = [
        "scaling.num_workers=1",
        f"scaling.use_gpu={str(c.cuda).lower()}",
        f"scaling.cpus_per_worker={c.cores}",
        f"data.reader_threads={max(1, c.cores - 2)}",  # the main and the assembler thread take the other two
        f"optim.precision={precision}",
    ]
    return load_config(REPO / c.config, ours + c.overrides)


class GpuSampler:
    """GPU utilisation (%) sampled every `interval` s in a thread while the block runs: NVML (nvidia-ml-py) or
    nvidia-smi for the GPU this process sees first; `mean` is None on CPU or without either."""

    def __init__(self, cuda: bool, interval: float = 0.1) -> None:
        self.samples: list[float] = []
        self.interval = interval
        self._stop = threading.Event()
        self._read = self._reader() if cuda else None
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _reader() -> Callable[[], float] | None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0] or "0"
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = (
                pynvml.nvmlDeviceGetHandleByIndex(int(visible))
                if visible.isdigit()
                else pynvml.nvmlDeviceGetHandleByUUID(visible)
            )
            return lambda: float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        except Exception:  # no NVML binding: nvidia-smi, one process a sample
            if not shutil.which("nvidia-smi"):
                return None
            cmd = ["nvidia-smi", "-i", visible, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
            return lambda: float(subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.split()[0])

    def _run(self) -> None:
        while self._read and not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):
                self.samples.append(self._read())

    def __enter__(self) -> GpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mean(self) -> float | None:
        return round(sum(self.samples) / len(self.samples), 1) if self.samples else None


def endless(make_loader: Callable[[int], Any]) -> Iterator[Any]:
    """The loader's batches epoch after epoch (a short split does not end the steps early); closing this closes
    the epoch's loader (its threads stop)."""
    epoch = 0
    while True:
        batches, seen = iter(make_loader(epoch)), 0
        try:
            for batch in batches:
                seen += 1
                yield batch
        finally:
            close = getattr(batches, "close", None)
            if close:
                close()
        if not seen:
            raise RuntimeError(f"epoch {epoch} of the training split gave no batch")
        epoch += 1


def timed_steps(s: Any, batches: Any, cfg: Any, augment: Any, autocast: Any, device: Any) -> tuple[float, float]:
    """`fit_epoch` over `batches`: (pairs, seconds), the device synchronised before and after."""
    import torch

    from bigearth.training.loop import fit_epoch

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    totals = fit_epoch(s, batches, grad_clip=cfg.optim.grad_clip, augment=augment, autocast=autocast, device=device)
    sync()
    return float(totals.seen), time.perf_counter() - t0


def train_precision(cfg: Any, plan: list[Any], train_pairs: int, run: dict[str, Any], device: Any) -> Any:
    """One precision on this worker: warm-up steps, then `steps` steps on the real loader and `steps` steps on one
    batch held on the device. Returns (figures, the Setup)."""
    import itertools

    import ray.train.torch
    import torch

    from bigearth.training.augment import augmenter
    from bigearth.training.loop import autocast_for, epoch_loader, setup

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    s = setup(cfg, train_pairs, world=1, rank=0, device=device, prepare=ray.train.torch.prepare_model)
    loader_kw = {
        "bands": tuple(s.core.bands),
        "nomenclature": cfg.data.nomenclature,
        "device": device,
        "threads": cfg.data.reader_threads,
    }
    autocast = autocast_for(cfg, device)
    augment = augmenter(cfg.data.augment, cfg.run.seed)
    stream = endless(lambda e: epoch_loader(cfg, plan, e, s.batch_size, 0, 1, **loader_kw))
    try:
        timed_steps(s, itertools.islice(stream, run["warmup_steps"]), cfg, augment, autocast, device)
        with GpuSampler(cuda) as on_loader:
            pairs, seconds = timed_steps(s, itertools.islice(stream, run["steps"]), cfg, augment, autocast, device)
        held = next(stream)
    finally:
        stream.close()
    with GpuSampler(cuda) as on_held:
        held_pairs, held_s = timed_steps(s, itertools.repeat(held, run["steps"]), cfg, augment, autocast, device)
    rate, held_rate = pairs / seconds, held_pairs / held_s
    figures = {
        "batch_size": s.batch_size,
        "steps": run["steps"],
        "loader_pairs_per_s": rate,
        "held_pairs_per_s": held_rate,
        "input_bound_fraction": 1 - rate / held_rate,
        "gpu_util_loader_pct": on_loader.mean,
        "gpu_util_held_pct": on_held.mean,
        "peak_gpu_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
    }
    return figures, s


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train's per-worker function: every precision in turn, then the figures and the last model's checkpoint
    through `ray.train.report`."""
    import tempfile

    import ray.train
    import ray.train.torch
    import torch

    from bigearth.models import checkpoints
    from bigearth.training.config import TrainConfig
    from bigearth.training.loop import checkpoint_meta

    device = ray.train.torch.get_device()
    figures: dict[str, Any] = {"device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        figures |= {"gpu": props.name, "gpu_memory_gib": props.total_memory / 2**30}
    for precision, raw in config["cfgs"].items():
        cfg = TrainConfig.model_validate(raw)
        figures[precision], s = train_precision(cfg, config["plan"], config["train_pairs"], config, device)
        print(f"gpu_check train {precision}: {figures[precision]}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoints.save(tmp, s.core, checkpoint_meta(cfg, s, {"epoch": 1}))
        ray.train.report({"figures": json.dumps(figures)}, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def step_train(c: Check) -> dict[str, Any]:
    import ray.train
    from ray.train.torch import TorchTrainer

    from bigearth.input.loader import row_groups
    from bigearth.shards.shardset import ShardSet
    from bigearth.training.collectives import CollectiveConfig
    from bigearth.training.trainer import model_bands

    cfgs = {p: train_config(c, p) for p in PRECISIONS}
    cfg = cfgs[PRECISIONS[0]]
    model_bands(cfg)  # the driver's checks of `bigearth train`: the model, the splits, the label column
    shard_set = ShardSet.open(c.shards)
    shard_set.files([cfg.data.train_split])
    shard_set.label_column(cfg.data.nomenclature)
    plan = row_groups(c.shards, cfg.data.train_split)
    config = {
        "cfgs": {p: x.model_dump() for p, x in cfgs.items()},
        "plan": plan,
        "train_pairs": sum(g.rows for g in plan),
        "steps": c.steps,
        "warmup_steps": c.warmup_steps,
    }
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=config,
        torch_config=CollectiveConfig(),
        scaling_config=ray.train.ScalingConfig(
            num_workers=1,
            use_gpu=c.cuda,
            resources_per_worker={"CPU": cfg.scaling.cpus_per_worker, **({"GPU": 1} if c.cuda else {})},
        ),
        run_config=ray.train.RunConfig(name="gpu-check", storage_path=str(c.work / "ray-train")),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError("the training worker reported no checkpoint")
    c.checkpoint = result.checkpoint.path
    figures = json.loads(result.metrics["figures"])
    return {
        "config": c.config,
        "model": cfg.model.name + (f":{cfg.model.backbone}" if cfg.model.backbone else ""),
        "cpus_per_worker": cfg.scaling.cpus_per_worker,
        "reader_threads": cfg.data.reader_threads,
        "train_pairs": config["train_pairs"],
        **figures,
    }


# -- 4. evaluate, 5. index -----------------------------------------------------------------------------------


def step_evaluate(c: Check) -> dict[str, Any]:
    from bigearth.evaluation.classification import evaluate

    t0 = time.perf_counter()
    metrics = evaluate(c.checkpoint, c.shards, "test", str(c.work / "evaluation"), gpus_per_actor=int(c.cuda))
    seconds = time.perf_counter() - t0
    return {"split": "test", "pairs": metrics["samples"], "pairs_per_s": metrics["samples"] / seconds}


def step_index(c: Check) -> dict[str, Any]:
    from bigearth.retrieval.indexer import build_index

    c.index = str(c.work / "index")
    t0 = time.perf_counter()
    report = build_index(
        c.checkpoint, c.shards, c.index, splits=["test"], gpus_per_actor=int(c.cuda), recreate=True, progress=False
    )
    seconds = time.perf_counter() - t0
    return {
        "split": "test",
        "pairs": report["upserted"],
        "pairs_per_s": report["upserted"] / seconds,
        "embed_and_upsert_s": report["embed_and_upsert_s"],
    }


# -- 6. serve ------------------------------------------------------------------------------------------------


def serve_bench() -> Any:
    """bench/serve.py as a module (this script's folder is on sys.path)."""
    sys.path.append(str(Path(__file__).resolve().parent))
    import serve as bench_serve  # type: ignore[import-not-found]

    return bench_serve


def step_serve(c: Check) -> dict[str, Any]:
    from ray import serve

    sb = serve_bench()
    bodies, _ = sb.npz_bodies(c.shards, 32)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        modes = sb.batching_modes(
            url,
            c.checkpoint,
            c.index,
            c.shards,
            [c.clients],
            c.profile["serve_seconds"],
            sb.classify_request(bodies),
            gpus=int(c.cuda),
            warmup_s=c.profile["serve_warmup_s"],
        )
    finally:
        serve.shutdown()
    one, batched = modes[sb.UNBATCHED][0], modes[sb.BATCHED][0]
    if batched["statuses"].keys() != {"200"} or one["statuses"].keys() != {"200"}:
        raise RuntimeError(f"requests did not all succeed: {one['statuses']} / {batched['statuses']}")
    return {
        "clients": c.clients,
        "seconds_per_mode": c.profile["serve_seconds"],
        "batched_rps": batched["rps"],
        "batched_p50_ms": batched["p50_ms"],
        "batched_p99_ms": batched["p99_ms"],
        "batched_mean_batch": batched["mean_batch"],
        "batch1_rps": one["rps"],
        "batch1_p50_ms": one["p50_ms"],
        "batch1_p99_ms": one["p99_ms"],
        "speedup": round(batched["rps"] / one["rps"], 2),
    }


# -- the run -------------------------------------------------------------------------------------------------


STEP_FUNCTIONS: dict[str, Callable[[Check], dict[str, Any]]] = {
    "probe": step_probe,
    "data": step_data,
    "train": step_train,
    "evaluate": step_evaluate,
    "index": step_index,
    "serve": step_serve,
}


def show(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, float):
        return f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


#: Figures kept in the JSON only: too long for a cell.
JSON_ONLY = ("sizing", "splits", "nvidia_smi")


def cells(figures: dict[str, Any]) -> str:
    return "; ".join(f"{k} {show(v)}" for k, v in figures.items() if k not in JSON_ONLY and not isinstance(v, dict))


def markdown(doc: dict[str, Any]) -> str:
    """The table: a row per step (a row more for each part with figures of its own: train's precisions)."""
    lines = [
        f"GPU check on {doc['machine']} (--device {doc['device']}, budget {doc['budget_s']:.0f} s): "
        f"{doc['total_s']:.0f} s in all{'' if doc['within_budget'] else ', over the budget'}",
        "",
        "| step | s | figures |",
        "| --- | ---: | --- |",
    ]
    for r in doc["steps"]:
        figures = r.get("figures", {})
        cell = f"FAILED: {r['error']}" if "error" in r else cells(figures)
        lines.append(f"| {r['step']} | {r['seconds']:.1f} | {cell.replace('|', '/')} |")
        lines += [
            f"| {r['step']} {k} | | {cells(v)} |"
            for k, v in figures.items()
            if isinstance(v, dict) and k not in JSON_ONLY
        ]
    if doc["failed"]:
        lines += ["", f"Failed at step {doc['failed']['step']}: {doc['failed']['error']}"]
    return "\n".join(lines) + "\n"


def write(c: Check, doc: dict[str, Any]) -> None:
    c.out.mkdir(parents=True, exist_ok=True)
    (c.out / "gpu_check.json").write_text(json.dumps(doc, indent=1, default=str))
    table = markdown(doc)
    (c.out / "gpu_check.md").write_text(table)
    print(table, flush=True)


def run_steps(c: Check) -> dict[str, Any] | None:
    """Every step in order, each timed; stops at the first that raises and returns {step, error}."""
    for name in STEPS:
        t0 = time.perf_counter()
        row: dict[str, Any] = {"step": name}
        c.results.append(row)
        try:
            row["figures"] = STEP_FUNCTIONS[name](c)
        except Exception as e:
            row["seconds"] = time.perf_counter() - t0
            row["error"] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
            return {"step": name, "error": row["error"]}
        row["seconds"] = time.perf_counter() - t0
        print(f"gpu_check: step {name} done in {row['seconds']:.1f} s", flush=True)
    return None


def parse(argv: list[str] | None = None) -> Check:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=sorted(PROFILES), default="cuda")
    ap.add_argument("--budget-s", type=float, default=480, help="the whole check's time (the data step sizes to it)")
    ap.add_argument("--out", default=".bench/gpu_check", help="gpu_check.json and gpu_check.md go here")
    ap.add_argument("--work", help="archive, shards, checkpoint, index (default: OUT/work, deleted at the end)")
    ap.add_argument("--config", help="training config (default: reBEN ResNet-50 S1+S2 on cuda, tiny-cpu on cpu)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, as the CLI's")
    ap.add_argument("--steps", type=int, help="training steps per precision and mode (after the warm-up)")
    ap.add_argument("--clients", type=int, default=32, help="concurrent clients of the serve step")
    ap.add_argument("--max-pairs", type=int, help="pairs the data step makes at most (default 60,000 on cuda)")
    a = ap.parse_args(argv)
    profile = PROFILES[a.device]
    out = Path(a.out)
    return Check(
        device=a.device,
        budget_s=a.budget_s,
        out=out,
        work=Path(a.work) if a.work else out / "work",
        config=a.config or profile["config"],
        overrides=a.set,
        steps=a.steps or profile["steps"],
        warmup_steps=profile["warmup_steps"],
        cores=os.cpu_count() or 1,
        clients=a.clients,
        profile={**profile, **({"max_pairs": a.max_pairs} if a.max_pairs else {})},
    )


def main(argv: list[str] | None = None) -> int:
    c = parse(argv)
    c.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        failed = run_steps(c)
    finally:
        if "ray" in sys.modules:
            sys.modules["ray"].shutdown()
    total = time.perf_counter() - t0
    doc = {
        "device": c.device,
        "machine": f"{platform.node()}, {c.cores} cores",
        "budget_s": c.budget_s,
        "config": c.config,
        "overrides": c.overrides,
        "total_s": round(total, 1),
        "within_budget": total <= c.budget_s,
        "steps": c.results,
        "failed": failed,
    }
    write(c, doc)
    if c.work == c.out / "work":  # the default work folder; one given with --work is kept
        shutil.rmtree(c.work, ignore_errors=True)
    if failed:
        print(f"gpu_check: step {failed['step']} failed: {failed['error']}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "platform"))
    sys.exit(main())
