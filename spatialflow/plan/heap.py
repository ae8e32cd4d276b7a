"""Handing freed heap memory back to the operating system after large numpy tasks.

glibc's allocator raises its mmap threshold each time a large mmapped block is freed (up to
32 MB), so after the first few tasks the 5-20 MB temporaries of a registration or fusion task
come from the heap arenas. Freed, they stay mapped in the process: with two threads working on
2048^2 tiles the resident size grew ~200 MB above what the tasks ever hold at once. Dask's own
workers handle this by setting ``MALLOC_TRIM_THRESHOLD_`` before they start; a library running
in the user's process cannot, so the tasks that allocate large temporaries call
:func:`release_freed_memory` when they finish (``malloc_trim(0)``: a few milliseconds).
Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
from collections.abc import Callable

__all__ = ["release_freed_memory"]


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_freed_memory() -> None:
    """Return the free pages of every malloc arena to the OS (glibc), else nothing."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
