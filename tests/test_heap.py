"""plan/heap.py: freed heap pages go back to the OS (glibc, which CI runs on)."""

from __future__ import annotations

import numpy as np
import psutil

from spatialflow.plan.heap import release_freed_memory


def test_release_freed_memory_returns_pages_held_by_the_allocator() -> None:
    rss = psutil.Process().memory_info
    # freeing a large mmapped block raises glibc's mmap threshold: later 1 MB blocks come from
    # the heap, and with the last one alive the heap's top cannot shrink when the others go
    big = np.ones(24 << 20, dtype=np.uint8)
    del big
    blocks = [np.ones(1 << 20, dtype=np.uint8) for _ in range(128)]
    last = blocks.pop()
    del blocks
    held = rss().rss
    release_freed_memory()
    assert held - rss().rss > 64 << 20  # most of the 127 MB freed above left the process
    assert last.sum() == 1 << 20
