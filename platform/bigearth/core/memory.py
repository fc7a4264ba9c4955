"""Keep a long-lived worker process at the memory of one unit of work, not of every unit it ever ran.

A Ray worker runs one task after another in the same process (an ingest shard, a staging). A shard task holds its
staged segments (MBs each) and frees them at its end. glibc serves such blocks from its heaps once its dynamic mmap
threshold has risen (it rises to the size of any mapped block freed, up to 32 MiB), and a heap page that also holds
one live small object (Ray's gRPC threads allocate all the time) cannot go back: the worker's resident memory grew
with every task. Measured on one Ray worker, 200-pair shards of a 6,000-pair archive: 120 -> 430 MB of anonymous
memory over 15 tasks, still after `malloc_trim` (26 MB per 1,000 pairs of the archive for the largest ingest worker,
docs/benchmarks.md). With the threshold fixed at 128 KiB from the worker's start (`HEAP_ENV`, which glibc reads when
the process starts), large blocks are mapped on their own and unmapped when freed: the same worker stayed at
120-123 MB after each task.

`HEAP_ENV` is for the worker processes that run units of I/O and decoding (the executors' `map` units: ingest
shards, staging, statistics; Ray starts them apart from other workers, since their environment differs), not for
model inference, whose tensors of MBs would each be mapped and unmapped (measured with the threshold fixed in the
inference workers and the CLI driver: `bigearth index` 1.6x and `bigearth evaluate` 1.2x slower at 20,000 pairs).
`release_freed_memory` gives back, after a unit, what the heaps and Arrow's pool hold free.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

import pyarrow as pa

MMAP_THRESHOLD = 128 << 10  # glibc's initial value, kept fixed: blocks this large or larger are mapped on their own
#: The environment of a process whose heap must not keep what a unit of work freed (glibc's tunable; ignored by
#: other C libraries).
HEAP_ENV = {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}


@functools.cache
def _libc() -> Any | None:
    """glibc, or None where the C library has no malloc_trim (musl, macOS)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def release_freed_memory() -> bool:
    """Return the free pages of every malloc arena and Arrow's unused pool memory to the system (after a unit of work);
    True where the C library could be asked (glibc), False where only Arrow's pool was released."""
    pa.default_memory_pool().release_unused()
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
