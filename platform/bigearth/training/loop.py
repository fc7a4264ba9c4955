"""The Ray Train per-worker loop: stream the worker's shard, train with AdamW + warm-up/cosine, validate, checkpoint
and report every epoch, stop early on validation macro AP, resume from the latest checkpoint."""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

from bigearth.input.loader import RowGroupLoader, epoch_share, plan_of, row_share
from bigearth.metrics.multilabel import MultilabelMetrics
from bigearth.models import checkpoints
from bigearth.models.registry import create_model
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


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray
    import ray.train
    import ray.train.torch

    cfg = TrainConfig.model_validate(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg.run.seed + rank)
    np.random.seed(cfg.run.seed + rank)
    device = ray.train.torch.get_device()
    cuda = device.type == "cuda"
    nodes = [ray.get_runtime_context().get_node_id()] * world
    if torch.distributed.is_initialized():
        torch.distributed.all_gather_object(nodes, nodes[0])

    model_kwargs = cfg.model_kwargs()
    resumed = ray.train.get_checkpoint()
    if resumed:  # a run resumes as the model it started as (a run begun before `retrieval` existed: logits)
        with resumed.as_directory() as d, open(os.path.join(d, checkpoints.META_FILE)) as f:
            started = json.load(f)["model"].get("retrieval")
        if started != model_kwargs.get("retrieval"):
            said = model_kwargs.get("retrieval")
            print(f"resuming with the run's own retrieval settings {started} (the config says {said})")
            model_kwargs = {k: v for k, v in model_kwargs.items() if k != "retrieval"}
            if started is not None:
                model_kwargs["retrieval"] = started
    model = create_model(cfg.model.name, num_classes=cfg.data.nomenclature, **model_kwargs)
    if cuda:  # the encoders feed channels-last tensors on CUDA; bf16 autocast below
        model = model.to(memory_format=torch.channels_last)
    if cfg.scaling.sync_batchnorm and world > 1:  # the statistics of the global batch, as on one device
        if cuda:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif rank == 0:  # torch's SyncBatchNorm runs on accelerators only
            print("scaling.sync_batchnorm: not on CPU workers; BatchNorm uses each worker's share of the batch")
    model = ray.train.torch.prepare_model(model)
    core: Any = model.module if hasattr(model, "module") else model
    aux_ids = {id(p) for p in core.aux_parameters()}
    main_params = [p for p in model.parameters() if id(p) not in aux_ids]
    aux_params = [p for p in model.parameters() if id(p) in aux_ids]
    had_aux = False
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    batch_size = cfg.worker_batch_size(world)
    steps_per_epoch = max(1, math.ceil(config["train_pairs"] / (batch_size * world)))
    total = steps_per_epoch * cfg.optim.epochs
    o = cfg.optim
    warmup = o.warmup_steps if o.warmup_steps is not None else int(o.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, warmup, total, o.warmup_start, o.final_lr)
    )
    loss_fn = torch.nn.BCEWithLogitsLoss()

    state: dict[str, Any] = {"epoch": 0, "best": -1.0, "bad_epochs": 0, "history": []}
    if resumed:
        with resumed.as_directory() as d:
            core.load_state_dict(
                torch.load(os.path.join(d, checkpoints.MODEL_FILE), map_location=device, weights_only=True)
            )
            saved = torch.load(os.path.join(d, checkpoints.STATE_FILE), map_location=device, weights_only=True)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state = saved["loop"]

    tracker = None  # rank 0 logs to MLflow (bigearth.training.tracking), epochs of an earlier attempt included
    if rank == 0 and config.get("tracking"):
        from bigearth.training.tracking import EpochLogger

        tracker = EpochLogger(config["tracking"], state["history"])
    scores: dict[str, Any] | None = None  # the last validation of this attempt (its per-class chart is logged)

    # Every worker gets the whole plan (one entry per row group) once, and takes its share of it each epoch.
    train_plan = plan_of(ray.train.get_dataset_shard("train"))
    val_plan = plan_of(ray.train.get_dataset_shard("validation"))
    # validation: each worker a contiguous, non-empty share of the rows (sizes differ by at most one)
    val_groups, val_skip, val_rows = row_share(val_plan, rank, world)
    bands = tuple(core.bands)
    loader_kw: dict[str, Any] = {
        "bands": bands,
        "nomenclature": cfg.data.nomenclature,
        "storage": config.get("storage"),
        "device": device,
        "threads": cfg.data.reader_threads,
    }
    if cuda and cfg.optim.precision == "fp32":
        torch.set_float32_matmul_precision("medium")  # reBEN's setting: fp32 tensors, reduced-precision matmuls
    bf16 = cuda and cfg.optim.precision == "bf16"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else nullcontext()
    meta_model = {"name": cfg.model.name, **model_kwargs}

    for epoch in range(int(state["epoch"]), cfg.optim.epochs):
        if state["bad_epochs"] >= cfg.run.patience:
            break
        model.train()
        start, seen, loss_sum = time.perf_counter(), 0, torch.zeros((), device=device)
        align_sum = torch.zeros((), device=device)
        # the same permutation on every worker, disjoint shares, the same number of rows (so of steps) on each
        share, limit = epoch_share(train_plan, epoch, cfg.run.seed, rank, world, shuffle=True, equal=True)
        augment = augmenter(cfg.data.augment, hash((cfg.run.seed, rank, epoch)) % 2**63)
        for batch in RowGroupLoader(
            share,
            batch_size,
            shuffle_buffer=cfg.data.local_shuffle_buffer,
            seed=[cfg.run.seed, rank, epoch],
            limit=limit,
            **loader_kw,
        ):
            if augment:
                batch = augment(batch)
            with autocast:
                logits, aux = model(batch, aux=True)  # aux: the model's own second objective, if any
            loss = cls_loss = loss_fn(logits.float(), batch["labels"])
            if aux is not None:
                loss = cls_loss + aux.float()
                align_sum += aux.detach().float() * len(batch["patch_id"])
                had_aux = True
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optim.grad_clip:  # the second objective's parameters apart: it never rescales the classifier's step
                torch.nn.utils.clip_grad_norm_(main_params, cfg.optim.grad_clip)
                if aux_params:
                    torch.nn.utils.clip_grad_norm_(aux_params, cfg.optim.grad_clip)
            optimizer.step()
            scheduler.step()
            loss_sum += cls_loss.detach() * len(batch["patch_id"])
            seen += len(batch["patch_id"])
        train_seconds = time.perf_counter() - start
        totals = torch.stack([loss_sum, torch.tensor(float(seen), device=device), align_sum])
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(totals)

        model.eval()
        val = MultilabelMetrics(cfg.data.nomenclature, device=device)
        val_loss = torch.zeros((), device=device)
        with torch.no_grad():
            for batch in RowGroupLoader(val_groups, batch_size, skip=val_skip, limit=val_rows, **loader_kw):
                with autocast:  # the bare module: no DDP collective in a forward whose count differs by worker
                    logits = core(batch).float()
                val_loss += loss_fn(logits, batch["labels"]) * len(batch["patch_id"])
                val.update(torch.sigmoid(logits), batch["labels"])
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(val_loss)
        scores = val.compute()
        metrics = {
            "epoch": epoch + 1,
            "train_loss": float(totals[0]) / max(float(totals[1]), 1.0),
            **({"train_align_loss": float(totals[2]) / max(float(totals[1]), 1.0)} if had_aux else {}),
            "val_loss": float(val_loss) / max(int(scores["samples"]), 1),
            **{
                f"val_{k}": v
                for k, v in scores.items()
                if k not in ("per_class", "samples", "classes_without_positives")
            },
            "lr": scheduler.get_last_lr()[0],
            "train_samples_per_s": float(totals[1]) / max(train_seconds, 1e-9),
            "workers": world,
            "nodes": len(set(nodes)),
        }
        improved = (metrics["val_macro_ap"] or 0.0) > state["best"]
        state = {
            "epoch": epoch + 1,
            "best": max(state["best"], metrics["val_macro_ap"] or 0.0),
            "bad_epochs": 0 if improved else state["bad_epochs"] + 1,
            "history": [*state["history"], metrics],
        }
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                meta = {
                    "model": meta_model,
                    "num_classes": cfg.data.nomenclature,
                    "metrics": metrics,
                    "epoch": epoch + 1,
                    "config": cfg.model_dump(),
                    "bands": list(core.bands),
                }
                train_state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "loop": state}
                checkpoints.save(tmp, core, meta, train_state)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report({**metrics, "stop": state["bad_epochs"] >= cfg.run.patience}, checkpoint=checkpoint)
        if rank == 0 and config.get("run_dir"):
            from bigearth.training.curves import write_history

            write_history(config["run_dir"], state["history"], config.get("storage"))
        if tracker:
            tracker.epoch(metrics)
    if tracker:
        tracker.finish(state["history"], scores, cfg.data.val_split)
