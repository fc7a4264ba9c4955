"""The memory of the training loader's batch arrays (`bigearth.input.loader.RowGroupLoader`), reused batch after
batch instead of fresh pages: recycled numpy arrays on the CPU, pinned tensors of torch's caching host allocator
for a CUDA device (docs/benchmarks.md, "The training input at a GPU's appetite")."""

from __future__ import annotations

import sys
import threading
from typing import Any

import numpy as np


def _refs(array: np.ndarray) -> int:
    return sys.getrefcount(array)


class BatchBuffers:
    """The memory of a loader's batch arrays, reused instead of fresh pages every batch (a batch's 70 MB of fresh
    pages cost more than the gather itself on a VM that returns freed pages to its host: bench/input_pipeline.py).

    On the CPU an array is handed out again only once nothing refers to it any more (its reference count is back to
    the pool's own): a consumer that keeps its batches keeps their memory, and the pool then allocates anew (up to
    `keep` arrays of a shape are kept). For a CUDA device the arrays are pinned tensors from torch's caching host
    allocator: the batch is sent to the device without the extra copy of `pin_memory()`, and a block is reused only
    once the copies from it have finished (the allocator records them on the stream). One instance may serve the
    loaders of every epoch (`bigearth.training.loop` passes one)."""

    def __init__(self, pinned: bool = False, keep: int = 6) -> None:
        self.pinned, self.keep = pinned, keep
        self._arrays: dict[tuple[tuple[int, ...], str], list[np.ndarray]] = {}
        self._lock = threading.Lock()

    def take(self, shape: tuple[int, ...], dtype: Any, pool: bool = True) -> tuple[np.ndarray, Any]:
        """An array of `shape` and `dtype` to fill (no other holder), and the torch tensor it is a view of when
        pinned (hand that tensor out, not a copy). `pool=False` (a short last batch, whose size changes from epoch
        to epoch): a new array, never kept."""
        if self.pinned:
            import torch

            tensor = torch.empty(shape, dtype=getattr(torch, np.dtype(dtype).name), pin_memory=True)
            return tensor.numpy(), tensor
        if not pool:
            return np.empty(shape, dtype=dtype), None
        key = (shape, np.dtype(dtype).str)
        with self._lock:
            probe = [np.empty(0)]
            idle = _refs(probe[0])  # the count of an array only a list holds, measured the same way, every time
            arrays = self._arrays.setdefault(key, [])
            for i in range(len(arrays)):
                if _refs(arrays[i]) == idle:
                    return arrays[i], None
            array = np.empty(shape, dtype=dtype)
            if len(arrays) < self.keep:
                arrays.append(array)
            return array, None
