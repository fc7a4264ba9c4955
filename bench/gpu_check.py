"""The GPU check (issue 25): one prepared command that runs every CUDA path of the platform in order, each step
timed, and writes its figures to DIR/gpu_check.json and a Markdown table DIR/gpu_check.md (also printed).

    PYTHONPATH=platform python3 bench/gpu_check.py --out DIR [--budget-s 480]     # one GPU, 16 cores: <= 8 min
    PYTHONPATH=platform python3 bench/gpu_check.py --device cpu --out DIR         # the same steps, a tiny config
    ... --work W --from evaluate                  # rerun from a step, reusing W's shards and checkpoint

Steps, in order:
1. probe: device, torch / CUDA / Ray versions, the GPU (NVML-based count, nvidia-smi), cores (this process's
   affinity); Ray started with every core and GPU (on CUDA: a Ray without a GPU fails here).
2. data: a synthetic v2 archive synthesised and ingested (Ray); it sizes itself: after a warm-up run, two small
   calibration runs give seconds per pair, fixed seconds and bytes per pair, then it makes as many pairs as fit
   the step's share of the budget, never fewer than the training steps need, never more than --max-pairs nor
   0.7 of the free disk; the arithmetic (and a warning when the floor is over a cap) goes into the JSON.
3. train: the config (default: reBEN ResNet-50 S1+S2) through Ray Train, one worker with every core and the GPU
   (a worker without CUDA fails), with the real loader (`bigearth.training.loop`: `setup`, `epoch_loader`,
   `fit_epoch`), for bf16 and fp32 (`optim.precision`), each mode's window sized from its warm-up rate to
   `window_s` (10 s on CUDA): pairs/s, GPU utilisation (NVML or nvidia-smi by the GPU's UUID, the first 0.5 s
   dropped; null on CPU, `gpu_util_*_error` when there is no figure), peak GPU memory allocated and reserved (the
   previous precision freed first), and the input-bound fraction 1 - rate(loader) / rate(the same steps on one
   full batch held on the device). Each precision's figures go to OUT/train_partial.jsonl as measured. The
   trained weights come back as a checkpoint.
4. evaluate, 5. index: `evaluate` and `build_index` of that checkpoint on the test split, one actor with the GPU
   (CUDA or fail: `ModelRunner`): wall-clock pairs/s with the start-up, and index's embed-and-upsert rate.
6. serve: the checkpoint behind Ray Serve on the GPU (bench/serve.py's measurement): requests/s at 32 clients
   with batch size 1 and with dynamic batching, p50/p99, GPU utilisation sampled here during each mode.

The JSON is rewritten after every step. The first step that fails stops the check: the JSON names it (`failed`:
{step, error}), the line `gpu_check: step <name> failed: <error>` is printed, Ray's logs are tarred into
OUT/ray_logs.tar.gz (at most 15 MiB) and the exit status is 1. A watchdog (--watchdog-s, default budget + 60 s)
ends a check that hangs the same way, the step it was in named as timed out.
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
from collections.abc import Callable, Generator, Iterator
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
#: Share of the budget the train step's timed windows take at most (2 modes x 2 precisions).
WINDOWS_SHARE = 0.2
#: What one worker does not exercise (stated in the JSON and the doc).
COLLECTIVES = "num_workers=1: SyncBatchNorm skipped (one rank); NCCL initialised with one rank (no all-reduce)"

#: Per device: the config, training steps (after warm-up steps), calibration sizes, pairs at most, serve load.
PROFILES: dict[str, dict[str, Any]] = {
    "cuda": {
        "config": "configs/reben/resnet50-all.yaml",
        "steps": 30,
        "warmup_steps": 5,
        "window_s": 10.0,
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
        "window_s": 1.0,
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
    label: str = ""
    ray_logs: Path | None = None
    gpu_uuid: str = ""
    from_step: str = STEPS[0]
    watchdog_s: float = 0.0
    t0: float = 0.0
    step_t0: float = 0.0
    current: str = ""
    shards: str = ""
    checkpoint: str = ""
    index: str = ""
    results: list[dict[str, Any]] = field(default_factory=list)
    partial: dict[str, dict[str, Any]] = field(default_factory=dict)

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


def gpu_count() -> int:
    """The GPUs torch sees, counted through NVML (PYTORCH_NVML_BASED_CUDA_CHECK): no CUDA context in this process,
    whose data step forks its synthesis workers."""
    os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
    import torch

    return torch.cuda.device_count()


def ray_session_dir() -> Path:
    """The running Ray's session folder (its logs), else the default one under RAY_TMPDIR or /tmp."""
    with contextlib.suppress(Exception):
        import ray

        return Path(ray._private.worker._global_node.get_session_dir_path())  # type: ignore[attr-defined]
    return Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray" / "session_latest"


def step_probe(c: Check) -> dict[str, Any]:
    """The machine, and a local Ray on every core (and every GPU) for the steps after it: the imports and Ray's
    start are the first thing a machine without the carried packages fails at. On CUDA the workers' prints come to
    this log (log_to_driver), and a Ray without a GPU fails here."""
    import ray
    import torch

    gpus = gpu_count() if c.cuda else 0
    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=c.cores, num_gpus=gpus, include_dashboard=False, log_to_driver=c.cuda)
    c.ray_logs = ray_session_dir()
    ray_gpus = ray.cluster_resources().get("GPU", 0)
    figures: dict[str, Any] = {
        "ray_init_s": time.perf_counter() - t0,
        "device": c.device,
        "cores": c.cores,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "ray": ray.__version__,
        "cuda_available": torch.cuda.is_available(),
        "ray_gpus": ray_gpus,
    }
    if c.cuda:  # no CUDA context in this process (gpu_count): the data step forks its synthesis workers
        if not gpus:
            raise RuntimeError("--device cuda: torch sees no CUDA device")
        if ray_gpus < 1:
            raise RuntimeError(f"--device cuda: Ray's cluster has {ray_gpus} GPUs (torch sees {gpus})")
        figures["gpus"] = gpus
        figures["nvidia_smi"] = nvidia_smi("name,memory.total,driver_version,uuid")
        c.gpu_uuid = (figures["nvidia_smi"] or [""])[0].split(", ")[-1]
    return figures


# -- 2. data -------------------------------------------------------------------------------------------------


def disk_bytes(*folders: Path) -> int:
    """Bytes of the files under `folders`."""
    return sum(f.stat().st_size for d in folders for f in d.rglob("*") if f.is_file())


def synth_and_ingest(archive: Path, shards: Path, pairs: int, shard_size: int, workers: int) -> dict[str, float]:
    """Synthesise `pairs` v2 pairs (`workers` processes) and ingest them (Ray); the archive is deleted afterwards
    (the disk), after its bytes and the shards' are counted (`bytes`: what the two take at once)."""
    from bigearth.ingest.job import ingest
    from bigearth.synth.archive import synthesize

    t0 = time.perf_counter()
    synthesize(str(archive), layout="v2", pairs=pairs, seed=25, workers=workers, progress=False)
    t1 = time.perf_counter()
    ingest(str(archive), str(shards), shard_size=shard_size, progress=False, overwrite=True)
    t2 = time.perf_counter()
    size = disk_bytes(archive, shards)
    shutil.rmtree(archive, ignore_errors=True)
    return {"synth_s": t1 - t0, "ingest_s": t2 - t1, "seconds": t2 - t0, "bytes": size}


def batch_size_of(c: Check) -> int:
    return train_config(c, PRECISIONS[0]).worker_batch_size(1)


#: Share of the free disk the data step's archive and shards may take together.
DISK_SHARE = 0.7


def plan_pairs(
    cal: list[tuple[int, float]],
    spent_s: float,
    *,
    budget_s: float,
    batch: int,
    batches: int,
    max_pairs: int,
    bytes_per_pair: float,
    free_bytes: int,
) -> dict[str, Any]:
    """How many pairs the data step makes: the calibration runs (pairs, seconds) as a line, seconds = fixed +
    pairs * per_pair; as many pairs as the step's share of the budget leaves after the calibration, at least the
    floor that gives `batches` batches of `batch` pairs, at most `max_pairs` and what fits DISK_SHARE of
    `free_bytes` (the archive and its shards at once). `warnings` says when the floor is over a cap."""
    (n1, t1), (n2, t2) = cal
    per_pair = (t2 - t1) / (n2 - n1) if t2 > t1 else t2 / n2  # noise: then no fixed part
    fixed = max(0.0, t1 - n1 * per_pair)
    share_s = DATA_SHARE * budget_s
    left_s = share_s - spent_s
    by_budget = max(0, int((left_s - fixed) / per_pair))
    floor = math.ceil(batch * batches / TRAIN_SHARE)
    by_disk = int(DISK_SHARE * free_bytes / bytes_per_pair) if bytes_per_pair > 0 else max_pairs
    pairs = min(max(by_budget, floor), max_pairs, by_disk)
    warnings = [
        f"the floor {floor:,} is over {name} {cap:,}: fewer batches than the training steps, epochs repeat"
        for name, cap in (("max_pairs", max_pairs), ("the disk cap", by_disk))
        if floor > cap
    ]
    return {
        "calibration": [{"pairs": n, "seconds": round(t, 2)} for n, t in cal],
        "per_pair_s": per_pair,
        "fixed_s": round(fixed, 2),
        "share_s": share_s,
        "left_after_calibration_s": round(left_s, 2),
        "pairs_by_budget": by_budget,
        "floor_pairs": floor,
        "floor_rule": f"batch {batch} x {batches} batches / train share {TRAIN_SHARE}",
        "max_pairs": max_pairs,
        "bytes_per_pair": round(bytes_per_pair),
        "free_bytes": free_bytes,
        "pairs_by_disk": by_disk,
        "disk_rule": f"{DISK_SHARE} x free bytes / bytes per pair (archive + shards)",
        "pairs": pairs,
        "predicted_s": round(fixed + pairs * per_pair, 1),
        "warnings": warnings,
    }


def step_data(c: Check) -> dict[str, Any]:
    from bigearth.shards.shardset import ShardSet

    t0 = time.perf_counter()
    cal = []
    n1, n2 = c.profile["calibration"]
    size = 0
    for i, n in enumerate((n1, n1, n2)):  # the first run pays the one-off costs (imports, Ray Data's start)
        took = synth_and_ingest(c.work / f"cal{i}", c.work / f"cal{i}-shards", n, c.profile["shard_size"], c.cores)
        shutil.rmtree(c.work / f"cal{i}-shards", ignore_errors=True)
        cal.append((n, took["seconds"]))
        size = int(took["bytes"])  # the largest run's, the last
    sizing = plan_pairs(
        cal[1:],
        time.perf_counter() - t0,
        budget_s=c.budget_s,
        batch=batch_size_of(c),
        batches=c.warmup_steps + c.steps + 1,  # + 1: the batch held on the device
        max_pairs=c.profile["max_pairs"],
        bytes_per_pair=size / n2,
        free_bytes=shutil.disk_usage(c.work).free,
    )
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


def nvml_uuid(uuid: Any) -> str:
    """A GPU's UUID as NVML and nvidia-smi name it (torch's `uuid` lacks the `GPU-` prefix)."""
    text = str(uuid)
    return text if text.startswith(("GPU-", "MIG-")) else f"GPU-{text}"


def gpu_reader(uuid: str = "") -> Callable[[], float]:
    """A function reading the utilisation (%) of the GPU `uuid` (default: the first): NVML (nvidia-ml-py), else
    nvidia-smi (one process a sample); raises naming both when neither can be opened."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByUUID(uuid) if uuid else pynvml.nvmlDeviceGetHandleByIndex(0)
        return lambda: float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
    except Exception as e:
        nvml_error = f"NVML: {type(e).__name__}: {e}"
    if not shutil.which("nvidia-smi"):
        raise RuntimeError(f"{nvml_error}; no nvidia-smi on PATH")
    cmd = ["nvidia-smi", "-i", uuid or "0", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]

    def read() -> float:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        if done.returncode != 0:
            raise RuntimeError(f"nvidia-smi exit {done.returncode}: {done.stderr.strip() or done.stdout.strip()}")
        return float(done.stdout.split()[0])

    return read


class GpuSampler:
    """GPU utilisation (%) of the GPU `uuid` sampled every `interval` s in a thread while the block runs, the
    samples of its first `skip_s` s dropped (the window's ramp); `mean` is None on CPU. On CUDA, `error` says why
    there is no figure: no reader, a read that failed, or no sample."""

    def __init__(self, cuda: bool, uuid: str = "", interval: float = 0.1, skip_s: float = 0.5) -> None:
        self.samples: list[float] = []
        self.error: str | None = None
        self.cuda, self.interval, self.skip_s = cuda, interval, skip_s
        self._stop = threading.Event()
        self._read: Callable[[], float] | None = None
        if cuda:
            try:
                self._read = gpu_reader(uuid)
            except Exception as e:
                self.error = f"{type(e).__name__}: {e}"
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        start = time.monotonic()
        while self._read and not self._stop.wait(self.interval):
            try:
                value = self._read()
            except Exception as e:
                self.error = f"{type(e).__name__}: {e}"
                continue
            if time.monotonic() - start >= self.skip_s:
                self.samples.append(value)

    def __enter__(self) -> GpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        if self.cuda and not self.samples and self.error is None:
            self.error = f"no sample after the first {self.skip_s} s"

    @property
    def mean(self) -> float | None:
        return round(sum(self.samples) / len(self.samples), 1) if self.samples else None

    def figures(self, prefix: str) -> dict[str, Any]:
        return {f"{prefix}_pct": self.mean, f"{prefix}_error": self.error}


def endless(make_loader: Callable[[int], Any]) -> Generator[Any, None, None]:
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


def window_steps(rate: float, batch: int, window_s: float, max_window_s: float, min_steps: int) -> int:
    """Steps of `batch` pairs that last `window_s` at `rate` pairs/s, at least `min_steps`, at most what lasts
    `max_window_s` (the budget's share of a window)."""
    most = max(min_steps, int(max_window_s * rate / batch))
    return min(max(min_steps, math.ceil(window_s * rate / batch)), most)


def full_batch(stream: Iterator[Any], size: int, tries: int = 1000) -> Any:
    """The next batch of `stream` with `size` pairs (an epoch's last batch may be short)."""
    for _ in range(tries):
        batch = next(stream)
        if len(batch["patch_id"]) == size:
            return batch
    raise RuntimeError(f"no batch of {size} pairs in {tries} batches")


class Window:
    """A mode's steps: warm-up steps (the first alone: allocation, autotuning), their rate sizing the timed
    window (`window_steps`), then the timed steps with the GPU sampled."""

    def __init__(self, s: Any, cfg: Any, augment: Any, autocast: Any, device: Any, run: dict[str, Any]) -> None:
        self.s, self.cfg, self.augment, self.autocast, self.device = s, cfg, augment, autocast, device
        self.run = run

    def steps(self, batches: Any) -> tuple[float, float]:
        return timed_steps(self.s, batches, self.cfg, self.augment, self.autocast, self.device)

    def measure(self, batches: Callable[[int], Any], prefix: str) -> dict[str, Any]:
        r = self.run
        self.steps(batches(1))
        pairs, seconds = self.steps(batches(max(1, r["warmup_steps"] - 1)))
        steps = window_steps(pairs / seconds, self.s.batch_size, r["window_s"], r["max_window_s"], r["steps"])
        with GpuSampler(r["cuda"], r.get("gpu_uuid", "")) as gpu:
            pairs, seconds = self.steps(batches(steps))
        return {
            f"{prefix}_steps": steps,
            f"{prefix}_s": round(seconds, 2),
            f"{prefix}_pairs_per_s": pairs / seconds,
            **gpu.figures(f"gpu_util_{prefix}"),
        }


def train_precision(cfg: Any, plan: list[Any], train_pairs: int, run: dict[str, Any], device: Any) -> Any:
    """One precision on this worker: the real loader's window, then one full batch held on the device for as
    many steps (`Window`). Returns (figures, the Setup)."""
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
    window = Window(s, cfg, augmenter(cfg.data.augment, cfg.run.seed), autocast_for(cfg, device), device, run)
    stream = endless(lambda e: epoch_loader(cfg, plan, e, s.batch_size, 0, 1, **loader_kw))
    try:
        on_loader = window.measure(lambda n: itertools.islice(stream, n), "loader")
        held = full_batch(stream, s.batch_size)
    finally:
        stream.close()
    on_held = window.measure(lambda n: itertools.repeat(held, n), "held")
    rate, held_rate = on_loader["loader_pairs_per_s"], on_held["held_pairs_per_s"]
    figures = {
        "batch_size": s.batch_size,
        **on_loader,
        **on_held,
        "input_bound_fraction": 1 - rate / held_rate,
        "peak_gpu_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
        "peak_gpu_reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30 if cuda else None,
    }
    return figures, s


def free_device(device: Any) -> None:
    """What a finished precision held, released before the next is measured (its peak memory is its own)."""
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def append_partial(path: str, record: dict[str, Any]) -> None:
    """One line of figures appended to the out folder's train_partial.jsonl as soon as they are measured."""
    with open(path, "a") as f:
        f.write(json.dumps(record, default=str) + "\n")


def read_partial(path: Path) -> dict[str, Any]:
    """The figures train_partial.jsonl holds, merged (what a failed train step had measured)."""
    merged: dict[str, Any] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                merged |= json.loads(line)
    return merged


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train's per-worker function: every precision in turn (each one's figures appended to the partial
    file as measured, its Setup freed before the next), then the figures and the last model's checkpoint through
    `ray.train.report`. On CUDA a worker that got no CUDA device fails."""
    import tempfile

    import ray.train
    import ray.train.torch
    import torch

    from bigearth.models import checkpoints
    from bigearth.training.config import TrainConfig
    from bigearth.training.loop import checkpoint_meta

    device = ray.train.torch.get_device()
    if config["cuda"] and device.type != "cuda":
        raise RuntimeError(f"--device cuda: the training worker got device {device}, not CUDA")
    figures: dict[str, Any] = {"device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        figures |= {"gpu": props.name, "gpu_memory_gib": props.total_memory / 2**30}
        config["gpu_uuid"] = nvml_uuid(props.uuid)
    append_partial(config["partial"], figures)
    precisions = list(config["cfgs"].items())
    for i, (precision, raw) in enumerate(precisions):
        cfg = TrainConfig.model_validate(raw)
        figures[precision], s = train_precision(cfg, config["plan"], config["train_pairs"], config, device)
        append_partial(config["partial"], {precision: figures[precision]})
        print(f"gpu_check train {precision}: {figures[precision]}", flush=True)
        if i < len(precisions) - 1:
            del s
            free_device(device)
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
    partial = c.out / "train_partial.jsonl"
    partial.unlink(missing_ok=True)
    config = {
        "cfgs": {p: x.model_dump() for p, x in cfgs.items()},
        "plan": plan,
        "train_pairs": sum(g.rows for g in plan),
        "steps": c.steps,
        "warmup_steps": c.warmup_steps,
        "window_s": c.profile["window_s"],
        "max_window_s": WINDOWS_SHARE * c.budget_s / (2 * len(PRECISIONS)),
        "cuda": c.cuda,
        "partial": str(partial),
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
        run_config=ray.train.RunConfig(  # a run of its own each time: --from train reuses WORK
            name=f"gpu-check-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=str(c.work / "ray-train")
        ),
    )
    try:
        result = trainer.fit()
    except Exception:
        c.partial["train"] = read_partial(partial)
        raise
    if result.checkpoint is None:
        raise RuntimeError("the training worker reported no checkpoint")
    c.checkpoint = result.checkpoint.path
    figures = json.loads((result.metrics or {})["figures"])
    return {
        "config": c.config,
        "model": cfg.model.name + (f":{cfg.model.backbone}" if cfg.model.backbone else ""),
        "cpus_per_worker": cfg.scaling.cpus_per_worker,
        "reader_threads": cfg.data.reader_threads,
        "train_pairs": config["train_pairs"],
        "collectives": COLLECTIVES,
        **figures,
    }


# -- 4. evaluate, 5. index -----------------------------------------------------------------------------------


def step_evaluate(c: Check) -> dict[str, Any]:
    from bigearth.evaluation.classification import evaluate

    t0 = time.perf_counter()
    metrics = evaluate(c.checkpoint, c.shards, "test", str(c.work / "evaluation"), gpus_per_actor=int(c.cuda))
    seconds = time.perf_counter() - t0
    return {
        "split": "test",
        "pairs": metrics["samples"],
        "wall_pairs_per_s": metrics["samples"] / seconds,  # with the start-up: Ray Data, the actor, the model
    }


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
        "wall_pairs_per_s": report["upserted"] / seconds,  # with the start-up, the index's open and publish
        "embed_and_upsert_s": report["embed_and_upsert_s"],
        "embed_pairs_per_s": report["upserted"] / max(report["embed_and_upsert_s"], 0.1),
    }


# -- 6. serve ------------------------------------------------------------------------------------------------


def serve_bench() -> Any:
    """bench/serve.py as a module (this script's folder is on sys.path)."""
    sys.path.append(str(Path(__file__).resolve().parent))
    import serve as bench_serve  # type: ignore[import-not-found]

    return bench_serve


class ServeGpu(GpuSampler):
    """The GPU sampled in this process (NVML makes no CUDA context) while a serve load runs; `figures()` for
    bench/serve.py's row."""

    def figures(self, prefix: str = "gpu_util") -> dict[str, Any]:
        return super().figures(prefix)


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
            monitor=lambda: ServeGpu(c.cuda, c.gpu_uuid),
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
        **{f"batched_{k}": v for k, v in batched.items() if k.startswith("gpu_util")},
        **{f"batch1_{k}": v for k, v in one.items() if k.startswith("gpu_util")},
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
JSON_ONLY = ("sizing", "splits", "nvidia_smi", "collectives")


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


def document(c: Check, failed: dict[str, Any] | None) -> dict[str, Any]:
    """The JSON document as it stands: the steps run so far, the failure if any."""
    total = time.perf_counter() - c.t0
    return {
        "label": c.label,
        "device": c.device,
        "machine": f"{platform.node()}, {c.cores} cores",
        "budget_s": c.budget_s,
        "config": c.config,
        "overrides": c.overrides,
        "from_step": c.from_step,
        "total_s": round(total, 1),
        "within_budget": total <= c.budget_s,
        "steps": c.results,
        "failed": failed,
    }


def write(c: Check, doc: dict[str, Any], show_table: bool = True) -> None:
    """gpu_check.json and gpu_check.md (each replaced whole); the table printed when `show_table`."""
    c.out.mkdir(parents=True, exist_ok=True)
    for name, text in (("gpu_check.json", json.dumps(doc, indent=1, default=str)), ("gpu_check.md", markdown(doc))):
        tmp = c.out / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(c.out / name)
    if show_table:
        print(markdown(doc), flush=True)


#: Ray's logs come back as one file (a device call brings back 8 files of at most 16 MiB).
LOGS_CAP = 15 * 2**20


def tar_logs(logs: Path, dest: Path, cap: int = LOGS_CAP) -> Path | None:
    """The log files under `logs` (newest first) into `dest`, a .tar.gz, stopping before it passes `cap` bytes;
    a file larger than `cap` goes in as its last `cap // 4` bytes. None when there is no such folder."""
    import io
    import tarfile

    logs = logs.resolve()
    if not logs.is_dir():
        return None
    files = sorted((f for f in logs.rglob("*") if f.is_file()), key=lambda f: f.stat().st_mtime, reverse=True)
    with open(dest, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for f in files:
            if raw.tell() > cap * 0.8:
                break
            data = f.read_bytes()[-(cap // 4) :]
            info = tarfile.TarInfo(str(f.relative_to(logs)))
            info.size, info.mtime = len(data), int(f.stat().st_mtime)
            tar.addfile(info, io.BytesIO(data))
    return dest


def save_state(c: Check) -> None:
    """What the steps handed on (shards, checkpoint, index) in WORK/state.json, for a later `--from STEP`."""
    state = {"shards": c.shards, "checkpoint": c.checkpoint, "index": c.index}
    (c.work / "state.json").write_text(json.dumps(state))


def load_state(c: Check) -> None:
    path = c.work / "state.json"
    if not path.exists():
        raise SystemExit(f"--from {c.from_step}: {path} does not exist (run the steps before it with this --work)")
    state = json.loads(path.read_text())
    c.shards, c.checkpoint, c.index = state["shards"], state["checkpoint"], state["index"]


def steps_to_run(from_step: str) -> list[str]:
    """The probe (Ray's start), then every step from `from_step` on."""
    return ["probe", *[s for s in STEPS[STEPS.index(from_step) :] if s != "probe"]]


def run_steps(c: Check) -> dict[str, Any] | None:
    """The steps in order, each timed, the JSON rewritten after each; stops at the first that raises and returns
    {step, error} (its row keeps the figures it had measured)."""
    for name in steps_to_run(c.from_step):
        c.current, c.step_t0 = name, time.perf_counter()
        t0 = c.step_t0
        row: dict[str, Any] = {"step": name}
        c.results.append(row)
        try:
            row["figures"] = STEP_FUNCTIONS[name](c)
        except Exception as e:
            row["seconds"] = time.perf_counter() - t0
            row["error"] = f"{type(e).__name__}: {e}"
            if c.partial.get(name):
                row["figures"] = c.partial[name]
            traceback.print_exc()
            return {"step": name, "error": row["error"]}
        row["seconds"] = time.perf_counter() - t0
        save_state(c)
        write(c, document(c, None), show_table=False)
        print(f"gpu_check: step {name} done in {row['seconds']:.1f} s", flush=True)
    return None


def shutdown_ray(timeout_s: float = 30) -> None:
    """`ray.shutdown()` if Ray was imported, given at most `timeout_s`."""
    if "ray" in sys.modules:
        t = threading.Thread(target=sys.modules["ray"].shutdown, daemon=True)
        t.start()
        t.join(timeout_s)


def finish(c: Check, failed: dict[str, Any] | None) -> int:
    """The document written and printed; on a failure Ray's logs tarred into OUT and the failing step named."""
    write(c, document(c, failed))
    if not failed:
        return 0
    with contextlib.suppress(Exception):
        tar_logs(c.ray_logs or ray_session_dir(), c.out / "ray_logs.tar.gz")
    print(f"gpu_check: step {failed['step']} failed: {failed['error']}", flush=True)
    return 1


def start_watchdog(c: Check) -> threading.Timer:
    """After `watchdog_s`: the current step named as timed out, the document written, the process ended (exit 1)."""

    def expire() -> None:
        failed = {"step": c.current, "error": f"timeout after {c.watchdog_s:.0f} s"}
        if c.results and c.results[-1]["step"] == c.current:
            c.results[-1] |= {"error": failed["error"], "seconds": time.perf_counter() - c.step_t0}
        with contextlib.suppress(Exception):
            finish(c, failed)
        shutdown_ray(20)
        os._exit(1)

    dog = threading.Timer(c.watchdog_s, expire)
    dog.daemon = True
    dog.start()
    return dog


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
    ap.add_argument("--label", default="", help="provenance stored in the JSON (the recipe: the commit, dirty or not)")
    ap.add_argument(
        "--from", dest="from_step", choices=STEPS, default=STEPS[0], help="rerun from STEP, reusing --work's state"
    )
    ap.add_argument("--watchdog-s", type=float, help="end the check as failed after this long (default: budget + 60)")
    a = ap.parse_args(argv)
    profile = PROFILES[a.device]
    out = Path(a.out).resolve()  # Ray Train's storage_path must be absolute (a relative one has no URI scheme)
    return Check(
        device=a.device,
        budget_s=a.budget_s,
        out=out,
        work=Path(a.work).resolve() if a.work else out / "work",
        config=a.config or profile["config"],
        overrides=a.set,
        steps=a.steps or profile["steps"],
        warmup_steps=profile["warmup_steps"],
        cores=len(os.sched_getaffinity(0)),
        clients=a.clients,
        label=a.label,
        from_step=a.from_step,
        watchdog_s=a.watchdog_s or a.budget_s + 60,
        profile={**profile, **({"max_pairs": a.max_pairs} if a.max_pairs else {})},
    )


def main(argv: list[str] | None = None) -> int:
    c = parse(argv)
    c.work.mkdir(parents=True, exist_ok=True)
    c.out.mkdir(parents=True, exist_ok=True)
    if c.from_step != STEPS[0]:
        load_state(c)
    c.t0 = time.perf_counter()
    dog = start_watchdog(c)
    try:
        failed = run_steps(c)
    finally:
        dog.cancel()
        shutdown_ray()
    code = finish(c, failed)
    if not failed and c.work == c.out / "work":  # the default work folder; one given with --work is kept
        shutil.rmtree(c.work, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "platform"))
    sys.exit(main())
