"""The executors' `map` units run in Ray workers whose heap gives back what each unit freed (bigearth.core.memory):
glibc's mmap threshold stays fixed there, so a block of MBs is mapped on its own even after a larger one was freed
(with a moving threshold it comes from a heap, whose pages the small objects made meanwhile keep: the ingest worker
that grew 25 MB a shard task)."""

from __future__ import annotations

import platform

import pytest

from bigearth.execution.executors import RayExecutor

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the heap controls are glibc's")


def test_map_units_run_where_a_freed_large_block_leaves_the_process(ray_local: None) -> None:
    def probe(size: int) -> tuple[str | None, int, int]:
        import ctypes
        import os

        class Mallinfo2(ctypes.Structure):
            _fields_ = [(n, ctypes.c_size_t) for n in ("a", "o", "s", "hblks", "hblkhd", "u", "f", "ua", "fa", "k")]

        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = Mallinfo2
        # a block is taken from the heap's free chunks when one fits, whatever the threshold (earlier units leave
        # some): ask for more than the heap holds free, so only the threshold decides between mapping and the heap
        size = max(size, int(libc.mallinfo2().fa) + (1 << 20))  # fa: fordblks, the free bytes of the heap
        big = bytes(2 * size + (16 << 20))
        del big  # freeing a mapped block is what raises a moving threshold (above `size`)
        # the mapped bytes are the process's: Ray's own threads map and unmap blocks meanwhile, so the best of a
        # few tries (a moved threshold gives none: every block then comes from a heap)
        grown, left = 0, 1 << 62
        for _ in range(5):
            before = int(libc.mallinfo2().hblkhd)
            block = b"x" * size
            grown = max(grown, int(libc.mallinfo2().hblkhd) - before)
            del block
            left = min(left, int(libc.mallinfo2().hblkhd) - before)
        return os.environ.get("MALLOC_MMAP_THRESHOLD_"), grown, left

    for env, grown, left in RayExecutor().map(probe, [2 << 20, 4 << 20]):
        assert env == "131072"
        assert grown >= 2 << 20, "a block of MBs came from a heap: the worker's threshold moved"
        assert left < 2 << 20  # unmapped when freed
