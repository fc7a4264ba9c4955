"""bigearth.core.memory without Ray: what a unit of work freed goes back (the workers' heap setting:
tests/integration/test_memory.py)."""

from __future__ import annotations

import platform

from bigearth.core.memory import HEAP_ENV, MMAP_THRESHOLD, release_freed_memory


def test_the_heaps_are_trimmed_where_the_c_library_can_and_arrows_pool_everywhere() -> None:
    glibc = platform.libc_ver()[0] == "glibc"
    assert release_freed_memory() is glibc
    assert release_freed_memory() is glibc  # again: nothing held between calls
    # the threshold the workers get is glibc's own first one, fixed (its tunable's name, with the trailing _)
    assert HEAP_ENV == {"MALLOC_MMAP_THRESHOLD_": "131072"} and MMAP_THRESHOLD == 128 << 10
