"""Keep a long-lived worker process at the memory of one unit of work, not of every unit it ever ran.

A Ray worker runs one task after another in the same process (an ingest shard, a batch of inference). A shard task
holds its staged segments (MBs each) and frees them at its end. glibc serves such blocks from its heaps once its
dynamic mmap threshold has risen (it rises to the size of any mapped block freed, up to 32 MiB), and a heap page
that also holds one live small object (Ray's gRPC threads allocate all the time) cannot go back: the worker's
resident memory grew with every task. Measured on one Ray worker, 200-pair shards of a 6,000-pair archive: 120 ->
430 MB of anonymous memory over 15 tasks, still after `malloc_trim` (26 MB per 1,000 pairs of the archive for the
largest ingest worker, docs/benchmarks.md). With the threshold fixed at 128 KiB, large blocks are mapped on their
own and unmapped when freed: the same worker stayed at 120-123 MB after each task.

`bound_heap` fixes the threshold (once per process); `release_freed_memory` gives back, after a unit, what the heaps
and Arrow's pool hold free. Both do nothing where the C library is not glibc (musl, macOS). They are for processes
that run units of I/O and decoding (the executors' `map` units: ingest shards, staging); not for model inference,
whose tensors of MBs would each be mapped and unmapped (measured with it in `ModelRunner` and the CLI driver:
`bigearth index` 2x and `bigearth evaluate` 1.5x slower at 20,000 pairs).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any

import pyarrow as pa

M_MMAP_THRESHOLD = -3  # mallopt's parameter number (glibc malloc.h)
MMAP_THRESHOLD = 128 << 10  # glibc's initial value, kept fixed: blocks this large or larger are mapped on their own


@functools.cache
def _libc() -> Any | None:
    """glibc, or None where the C library has no mallopt/malloc_trim."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


@functools.cache
def bound_heap() -> bool:
    """Map blocks of `MMAP_THRESHOLD` bytes or more on their own, for the rest of this process (glibc's threshold
    stops moving), so a freed large block is returned at once; True where glibc took it."""
    libc = _libc()
    return libc is not None and libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1


def release_freed_memory() -> bool:
    """Return the free pages of every malloc arena and Arrow's unused pool memory to the system (after a unit of work);
    True where the C library could be asked (glibc), False where only Arrow's pool was released."""
    pa.default_memory_pool().release_unused()
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
