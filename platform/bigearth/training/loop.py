"""The training units, plain functions over plain inputs (no Ray): `setup` (model, optimiser, schedule from the
config), `resume` (a checkpoint's weights and train state, through `bigearth.models.checkpoints`), `fit_epoch`
(one epoch in one process with the loader), `validate`, `epoch_metrics` / `advance` (the loop's state, early
stopping on `val_score`: validation macro AP, or mIoU for a segmentation model, `bigearth.training.objectives`) and
`checkpoint_meta` / `train_state`. `run_worker` strings them together for one
worker behind a `Worker` (its rank, world, device and where its checkpoints go): Ray Train's per-worker function
(`bigearth.training.raytrain`) and the in-process executor (`bigearth.training.local`) are thin `Worker`s."""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from bigearth.input.buffers import BatchBuffers
from bigearth.input.loader import RowGroup, RowGroupLoader, epoch_share, row_share
from bigearth.input.raybatches import shard_batches
from bigearth.models import checkpoints
from bigearth.models.registry import create_model
from bigearth.training import objectives
from bigearth.training.augment import augmenter
from bigearth.training.config import TrainConfig


def lr_lambda(step: int, warmup: int, total: int, start: float = 0.0, end: float = 0.0) -> float:
    """The learning rate of optimizer step `step` as a share of the peak: a linear warm-up over `warmup` steps
    from `start`, then a cosine from 1 down to `end` at `total`. With `start > 0` this is exactly ConfigILM's (and
    pl_bolts') `LinearWarmupCosineAnnealingLR` (step 0 at `start`, step warmup - 1 at the peak), which reBEN uses;
    with `start = 0` the first step already takes 1/warmup of the peak (a step at lr 0 would be wasted)."""
    if step < warmup:
        if start == 0:
            return (step + 1) / warmup
        return start + (1 - start) * step / max(1, warmup - 1)
    progress = (step - warmup) / max(1, total - warmup)
    return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class LoopState:
    """Where a run stands after its last epoch (`train_state.pt` key `loop`)."""

    epoch: int = 0
    best: float = -1.0
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoopState:
        return cls(int(d["epoch"]), float(d["best"]), int(d["bad_epochs"]), list(d["history"]))


@dataclass
class Setup:
    """What one worker trains: the model as the worker runs it (`model`, DDP-wrapped under Ray Train) and the bare
    module (`core`), the optimiser and its schedule, the builder arguments it was made with, its batch size; its
    task (`classification`, `segmentation`), the loss and the batch key the loss compares the logits with."""

    model: torch.nn.Module
    core: Any
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    model_kwargs: dict[str, Any]
    batch_size: int
    main_params: list[torch.nn.Parameter]
    aux_params: list[torch.nn.Parameter]
    loss_fn: torch.nn.Module = field(default_factory=torch.nn.BCEWithLogitsLoss)
    task: str = "classification"
    target: str = "labels"


@dataclass
class EpochTotals:
    """One epoch of training on one worker (summed over the workers once `all_reduce`d): the classification loss
    and alignment loss summed over pairs, the pairs seen, whether the model had a second objective, seconds."""

    loss_sum: torch.Tensor
    seen: torch.Tensor
    align_sum: torch.Tensor
    had_aux: bool
    seconds: float


def model_kwargs_for(cfg: TrainConfig, resumed: checkpoints.CheckpointMeta | None = None) -> dict[str, Any]:
    """The builder arguments: the config's, except that a resumed run keeps the retrieval settings it started with
    (a run begun before `retrieval` existed: logits)."""
    kwargs = cfg.model_kwargs()
    if resumed is None:
        return kwargs
    started = resumed.builder[2].get("retrieval")
    if started != kwargs.get("retrieval"):
        print(f"resuming with the run's own retrieval settings {started} (the config says {kwargs.get('retrieval')})")
        kwargs = {k: v for k, v in kwargs.items() if k != "retrieval"}
        if started is not None:
            kwargs["retrieval"] = started
    return kwargs


def setup(
    cfg: TrainConfig,
    train_pairs: int,
    *,
    world: int = 1,
    rank: int = 0,
    device: torch.device | None = None,
    resumed: checkpoints.CheckpointMeta | None = None,
    prepare: Any = None,
) -> Setup:
    """Seed, build the model, optimiser and warm-up/cosine schedule for a worker of `world`; `prepare` puts the
    model on its device (Ray Train's `prepare_model`: DDP); by default it is moved to `device`."""
    device = device or torch.device("cpu")
    torch.manual_seed(cfg.run.seed + rank)
    np.random.seed(cfg.run.seed + rank)
    cuda = device.type == "cuda"
    model_kwargs = model_kwargs_for(cfg, resumed)
    model: Any = create_model(cfg.model.name, num_classes=cfg.data.nomenclature, **model_kwargs)
    if cuda:  # the encoders feed channels-last tensors on CUDA; bf16 autocast in fit_epoch
        model = model.to(memory_format=torch.channels_last)
    if cfg.scaling.sync_batchnorm and world > 1:  # the statistics of the global batch, as on one device
        if cuda:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif rank == 0:  # torch's SyncBatchNorm runs on accelerators only
            print("scaling.sync_batchnorm: not on CPU workers; BatchNorm uses each worker's share of the batch")
    model = prepare(model) if prepare is not None else model.to(device)
    core: Any = model.module if hasattr(model, "module") else model
    task = objectives.check_task(getattr(core, "task", "classification"))
    if task == "segmentation" and cfg.data.nomenclature != 19:
        raise ValueError(f"segmentation maps have the 19 classes; data.nomenclature is {cfg.data.nomenclature}")
    aux_ids = {id(p) for p in core.aux_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    batch_size = cfg.worker_batch_size(world)
    steps_per_epoch = max(1, math.ceil(train_pairs / (batch_size * world)))
    o = cfg.optim
    total = steps_per_epoch * o.epochs
    warmup = o.warmup_steps if o.warmup_steps is not None else int(o.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, warmup, total, o.warmup_start, o.final_lr)
    )
    return Setup(
        model=model,
        core=core,
        optimizer=optimizer,
        scheduler=scheduler,
        model_kwargs=model_kwargs,
        batch_size=batch_size,
        main_params=[p for p in model.parameters() if id(p) not in aux_ids],
        aux_params=[p for p in model.parameters() if id(p) in aux_ids],
        loss_fn=objectives.loss_for(task),
        task=task,
        target=objectives.TARGET[task],
    )


def resume(s: Setup, directory: str, device: Any = "cpu", storage: Any = None) -> LoopState:
    """Load a training checkpoint's weights, optimiser and schedule into `s`; the loop's state it saved."""
    weights, saved = checkpoints.read_train_state(directory, device, storage)
    s.core.load_state_dict(weights)
    s.optimizer.load_state_dict(saved["optimizer"])
    s.scheduler.load_state_dict(saved["scheduler"])
    return LoopState.from_dict(saved["loop"])


def autocast_for(cfg: TrainConfig, device: torch.device) -> AbstractContextManager[Any]:
    """bf16 autocast on CUDA unless `optim.precision: fp32` (then reduced-precision fp32 matmuls, as reBEN)."""
    cuda = device.type == "cuda"
    if cuda and cfg.optim.precision == "fp32":
        torch.set_float32_matmul_precision("medium")
    if cuda and cfg.optim.precision == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def epoch_loader(
    cfg: TrainConfig, plan: Sequence[RowGroup], epoch: int, batch_size: int, rank: int, world: int, **loader_kw: Any
) -> RowGroupLoader:
    """This worker's training batches of `epoch`: the same permutation on every worker, disjoint shares, the same
    number of rows (so of steps) on each."""
    share, limit = epoch_share(plan, epoch, cfg.run.seed, rank, world, shuffle=True, equal=True)
    return RowGroupLoader(
        share,
        batch_size,
        shuffle_buffer=cfg.data.local_shuffle_buffer,
        seed=[cfg.run.seed, rank, epoch],
        limit=limit,
        **loader_kw,
    )


def fit_epoch(
    s: Setup,
    batches: Iterable[dict[str, Any]],
    *,
    grad_clip: float = 0.0,
    augment: Any = None,
    autocast: AbstractContextManager[Any] | None = None,
    device: Any = "cpu",
) -> EpochTotals:
    """One epoch of optimiser steps over `batches` in this process (the model's own second objective, if any,
    added to the loss and logged apart; its parameters clipped apart so it never rescales the classifier's step);
    the totals summed over the workers when torch.distributed is initialised."""
    s.model.train()
    autocast = autocast or nullcontext()
    start = time.perf_counter()
    loss_sum, align_sum = torch.zeros((), device=device), torch.zeros((), device=device)
    seen, had_aux = 0, False
    for batch in batches:
        if augment:
            batch = augment(batch)
        with autocast:
            logits, aux = s.model(batch, aux=True)  # aux: the model's own second objective, if any
        loss = cls_loss = s.loss_fn(logits.float(), batch[s.target])
        if aux is not None:
            loss = cls_loss + aux.float()
            align_sum += aux.detach().float() * len(batch["patch_id"])
            had_aux = True
        s.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(s.main_params, grad_clip)
            if s.aux_params:
                torch.nn.utils.clip_grad_norm_(s.aux_params, grad_clip)
        s.optimizer.step()
        s.scheduler.step()
        loss_sum += cls_loss.detach() * len(batch["patch_id"])
        seen += len(batch["patch_id"])
    seconds = time.perf_counter() - start
    totals = torch.stack([loss_sum, torch.tensor(float(seen), device=device), align_sum])
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(totals)
    return EpochTotals(totals[0], totals[1], totals[2], had_aux, seconds)


def validate(
    s: Setup,
    batches: Iterable[dict[str, Any]],
    nomenclature: int,
    *,
    autocast: AbstractContextManager[Any] | None = None,
    device: Any = "cpu",
) -> tuple[dict[str, Any], float]:
    """The validation scores (`MultilabelMetrics`, or `SegmentationMetrics` for a segmentation model; synced over the
    workers) and the mean loss of `batches` per pair."""
    s.model.eval()
    autocast = autocast or nullcontext()
    val = objectives.metrics_for(s.task, nomenclature, device)
    val_loss = torch.zeros((), device=device)
    with torch.no_grad():
        for batch in batches:
            with autocast:  # the bare module: no DDP collective in a forward whose count differs by worker
                logits = s.core(batch).float()
            val_loss += s.loss_fn(logits, batch[s.target]) * len(batch["patch_id"])
            objectives.update(val, s.task, logits, batch)
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(val_loss)
    scores = val.compute()
    return scores, float(val_loss) / max(objectives.validated_pairs(s.task, scores), 1)


def epoch_metrics(
    epoch: int,
    totals: EpochTotals,
    scores: dict[str, Any],
    val_loss: float,
    lr: float,
    workers: int,
    nodes: int,
    task: str = "classification",
) -> dict[str, Any]:
    """The line of `metrics.jsonl` (and the report, and MLflow's step) of an epoch; `val_score` is the task's
    score (`objectives.SCORE`)."""
    seen = max(float(totals.seen), 1.0)
    return {
        "epoch": epoch,
        "train_loss": float(totals.loss_sum) / seen,
        **({"train_align_loss": float(totals.align_sum) / seen} if totals.had_aux else {}),
        "val_loss": val_loss,
        **objectives.epoch_figures(task, scores),
        "lr": lr,
        "train_samples_per_s": float(totals.seen) / max(totals.seconds, 1e-9),
        "workers": workers,
        "nodes": nodes,
    }


def advance(state: LoopState, metrics: dict[str, Any]) -> LoopState:
    """The state after an epoch: its best `val_score` (validation macro AP, or mIoU), epochs without a better one,
    the history."""
    score = metrics.get("val_score", metrics.get("val_macro_ap")) or 0.0
    return LoopState(
        epoch=int(metrics["epoch"]),
        best=max(state.best, score),
        bad_epochs=0 if score > state.best else state.bad_epochs + 1,
        history=[*state.history, metrics],
    )


def checkpoint_meta(
    cfg: TrainConfig, s: Setup, metrics: dict[str, Any], run: checkpoints.RunInfo | None = None
) -> checkpoints.CheckpointMeta:
    """The meta record of an epoch's checkpoint."""
    return checkpoints.CheckpointMeta(
        model={"name": cfg.model.name, **s.model_kwargs},
        num_classes=cfg.data.nomenclature,
        metrics=metrics,
        epoch=int(metrics["epoch"]),
        config=cfg.model_dump(),
        bands=list(s.core.bands),
        run=run,
    )


def train_state(s: Setup, state: LoopState) -> dict[str, Any]:
    """What `train_state.pt` holds: optimiser, schedule, the loop's state."""
    return {"optimizer": s.optimizer.state_dict(), "scheduler": s.scheduler.state_dict(), "loop": asdict(state)}


#: why `data.pipeline: ray_data` does not train a segmentation model (checked on the driver, and in the workers)
RAY_DATA_NO_MAPS = (
    "data.pipeline ray_data collates bands and labels, not reference maps: a segmentation model trains with "
    "data.pipeline worker (the default)"
)


def check_validation_rows(split: str, rows: int, world: int) -> None:
    """Each worker validates its own share of the split's rows (`bigearth.input.loader.row_share`: none is empty
    while there are at least `world` rows); fewer rows than workers would leave a worker without any, refused here
    naming the split, its rows and the workers."""
    if rows < world:
        raise ValueError(
            f"validation split {split!r} has {rows} rows (of the selected subset), fewer than the {world} workers: "
            "every worker validates a share of it; lower scaling.num_workers or select more validation rows"
        )


class Worker(Protocol):
    """What `run_worker` needs of the process it runs in."""

    rank: int
    world: int
    device: torch.device

    def nodes(self) -> list[str]:
        """The node of every worker (all_gathered)."""

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """Put the model on the device (and wrap it for data-parallel training)."""

    def resumed(self) -> AbstractContextManager[str | None]:
        """The folder of the checkpoint to resume from (a local path or URL), or None for a new run."""

    def plans(self) -> tuple[list[RowGroup], list[RowGroup]]:
        """The training and validation plans (every row group of each split)."""

    def batch_stream(self) -> Any:
        """Where `data.pipeline: ray_data` batches come from (a Ray Train dataset shard of
        `bigearth.input.raybatches.open_batches`), or None: this worker reads its share itself (the worker path)."""

    def report(self, metrics: dict[str, Any], checkpoint: str | None) -> None:
        """Hand over an epoch's metrics and (rank 0) its checkpoint folder, which is deleted afterwards."""


def run_worker(worker: Worker, config: dict[str, Any]) -> None:
    """Train one worker from `config` (`cfg`, `train_pairs`, `run_dir`, `storage`, `tracking`, `run`): resume,
    then every epoch `fit_epoch`, `validate`, a checkpoint (rank 0) and a report; early stopping; rank 0 writes
    `metrics.jsonl` and `curves.png` and logs to MLflow."""
    cfg = TrainConfig.model_validate(config["cfg"])
    rank, world, device = worker.rank, worker.world, worker.device
    nodes = worker.nodes()
    storage = config.get("storage")
    with worker.resumed() as resumed_dir:
        meta = checkpoints.read_meta(resumed_dir, storage) if resumed_dir else None
        s = setup(
            cfg, config["train_pairs"], world=world, rank=rank, device=device, resumed=meta, prepare=worker.prepare
        )
        state = resume(s, resumed_dir, device, storage) if resumed_dir else LoopState()
    run = checkpoints.RunInfo(**config["run"]) if config.get("run") else None

    tracker = None  # rank 0 logs to MLflow (bigearth.training.tracking), epochs of an earlier attempt included
    if rank == 0 and config.get("tracking"):
        from bigearth.training.tracking import EpochLogger

        tracker = EpochLogger(config["tracking"], state.history)
    scores: dict[str, Any] | None = None  # the last validation of this attempt (its per-class chart is logged)

    train_plan, val_plan = worker.plans()
    check_validation_rows(cfg.data.val_split, sum(g.rows for g in val_plan), world)  # as the driver did
    stream = worker.batch_stream() if cfg.data.pipeline == "ray_data" else None
    # validation: each worker a contiguous, non-empty share of the rows (sizes differ by at most one)
    val_groups, val_skip, val_rows = row_share(val_plan, rank, world)
    loader_kw: dict[str, Any] = {
        "bands": tuple(s.core.bands),
        "nomenclature": cfg.data.nomenclature,
        "storage": storage,
        "device": device,
        "threads": cfg.data.reader_threads,
        # the batch arrays of every epoch's loaders, reused (pinned on CUDA): no fresh pages per batch
        "buffers": BatchBuffers(pinned=torch.device(device).type == "cuda"),
        **({"maps": True} if s.task == "segmentation" else {}),  # the mask: reference maps' per-pixel targets
    }
    if stream is not None and s.task == "segmentation":
        raise ValueError(RAY_DATA_NO_MAPS)
    autocast = autocast_for(cfg, device)
    for epoch in range(state.epoch, cfg.optim.epochs):
        if state.bad_epochs >= cfg.run.patience:
            break
        batches: Iterable[dict[str, Any]]
        if stream is not None:  # collated by Ray Data tasks; the same number of batches on every worker
            batches = shard_batches(stream, device)
        else:
            batches = epoch_loader(cfg, train_plan, epoch, s.batch_size, rank, world, **loader_kw)
        augment = augmenter(cfg.data.augment, hash((cfg.run.seed, rank, epoch)) % 2**63)
        totals = fit_epoch(s, batches, grad_clip=cfg.optim.grad_clip, augment=augment, autocast=autocast, device=device)
        val_batches = RowGroupLoader(val_groups, s.batch_size, skip=val_skip, limit=val_rows, **loader_kw)
        scores, val_loss = validate(s, val_batches, cfg.data.nomenclature, autocast=autocast, device=device)
        lr = float(s.scheduler.get_last_lr()[0])
        metrics = epoch_metrics(epoch + 1, totals, scores, val_loss, lr, world, len(set(nodes)), s.task)
        state = advance(state, metrics)
        with tempfile.TemporaryDirectory() as tmp:
            folder = None
            if rank == 0:
                checkpoints.save(tmp, s.core, checkpoint_meta(cfg, s, metrics, run), train_state(s, state))
                folder = tmp
            worker.report({**metrics, "stop": state.bad_epochs >= cfg.run.patience}, folder)
        if rank == 0 and config.get("run_dir"):
            from bigearth.training.curves import write_history

            write_history(config["run_dir"], state.history, storage)
        if tracker:
            tracker.epoch(metrics)
    if tracker:
        tracker.finish(state.history, scores, cfg.data.val_split)
