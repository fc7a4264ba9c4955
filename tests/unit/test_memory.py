"""bigearth.core.memory: a process that frees large blocks gives them back (what keeps a reused Ray worker flat)."""

from __future__ import annotations

import ctypes
import platform

import pytest

from bigearth.core.memory import MMAP_THRESHOLD, bound_heap, release_freed_memory

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the heap controls are glibc's")


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (n, ctypes.c_size_t)
        for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keep")
    ]


def _mapped_bytes() -> int:
    """Bytes glibc holds in blocks mapped on their own (returned to the system when freed)."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _Mallinfo2
    return int(libc.mallinfo2().hblkhd)


@glibc
def test_a_large_block_is_mapped_on_its_own_even_after_a_larger_one_was_freed() -> None:
    """glibc's threshold would rise to the size of the first mapped block freed (up to 32 MiB): later blocks of MBs
    would come from the heaps, where the small objects made meanwhile keep their pages (the Ray worker that grew
    25 MB a shard task)."""
    assert bound_heap() is True
    big = bytes(16 << 20)
    del big  # freeing a mapped block is what raises a moving threshold
    before = _mapped_bytes()
    block = b"x" * (2 << 20)
    assert _mapped_bytes() - before >= 2 << 20, "a 2 MiB block came from a heap: the threshold moved"
    del block
    assert _mapped_bytes() - before < 2 << 20  # and it is gone when freed
    assert MMAP_THRESHOLD == 128 << 10


def test_the_calls_are_idempotent_and_safe_anywhere() -> None:
    first = bound_heap()
    assert bound_heap() is first  # once per process
    assert release_freed_memory() in (True, False)
