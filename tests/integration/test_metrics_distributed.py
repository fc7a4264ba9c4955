"""The validation metrics synced over two torch.distributed (gloo) processes where one worker had no batch (a
validation split with fewer rows than workers): every worker enters the same collectives and gets the figures of
the other's batches alone. Subprocesses, hence this tier; the figures themselves are tests/unit's."""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bigearth.metrics.multilabel import MultilabelMetrics
from bigearth.metrics.segmentation import SegmentationMetrics
from helpers import free_ports


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    pred = torch.randint(0, 19, (3, 120, 120), generator=g)
    mask = torch.randint(0, 19, (3, 120, 120), generator=g).to(torch.uint8)
    labels = (torch.rand(3, 19, generator=g) < 0.3).float()
    labels[:, 0] = 1.0  # every class of the first column present: AP defined
    return pred, mask, labels


def _figures(seg: SegmentationMetrics, ml: MultilabelMetrics) -> dict[str, Any]:
    s, m = seg.compute(), ml.compute()
    return {
        "patches": s["patches"],
        "miou": s["miou"],
        "image_macro_ap": s["image"] and s["image"]["macro_ap"],
        "image_samples": s["image"] and s["image"]["samples"],
        "samples": m["samples"],
        "macro_ap": m["macro_ap"],
        "micro_f1": m["micro_f1"],
    }


def _worker(rank: int, port: int, empty_rank: int, results: Any) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        seg, ml = SegmentationMetrics(19), MultilabelMetrics(19)
        if rank != empty_rank:
            pred, mask, labels = _batch()
            seg.update(pred, mask, labels)
            ml.update(torch.rand(3, 19, generator=torch.Generator().manual_seed(3)), labels)
        results.put((rank, _figures(seg, ml)))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("empty_rank", [0, 1])
def test_a_worker_without_a_validation_batch_syncs_with_the_others(empty_rank: int) -> None:
    pred, mask, labels = _batch()
    seg, ml = SegmentationMetrics(19), MultilabelMetrics(19)
    seg.update(pred, mask, labels)
    ml.update(torch.rand(3, 19, generator=torch.Generator().manual_seed(3)), labels)
    alone = _figures(seg, ml)  # one process, the batch of the worker that had one

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_ports(1)[0]
    procs = [ctx.Process(target=_worker, args=(r, port, empty_rank, results)) for r in range(2)]
    for p in procs:
        p.start()
    try:
        got = dict(results.get(timeout=120) for _ in procs)
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    assert [p.exitcode for p in procs] == [0, 0]
    assert got[0] == got[1]
    assert got[0] == pytest.approx(alone)
    assert got[0]["image_samples"] == 3 and got[0]["samples"] == 3
