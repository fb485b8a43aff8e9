"""glibc ``malloc`` settings that keep a CPU training loop's tensor memory for reuse.

A training step allocates and frees the same few large buffers (a batch's
aggregation outputs are megabytes) every step. glibc serves large requests
with ``mmap`` and returns them with ``munmap``, and trims the heap top on free,
so each step pays page faults and zeroing on memory it just released: on the
ML-100K throughput benchmark that is 10-15% of IGMC's step time. Raising the
mmap and trim thresholds keeps those pages in the process (peak RSS grows
only by what one step uses at its peak, which the heap must hold anyway).

PyTorch's CPU tuning guide suggests the same through jemalloc or tcmalloc; this
needs no extra library. It is a no-op off glibc Linux, when the user set the
``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` environment variables
or preloaded another allocator, and when ``CMCREC_MALLOC_TUNING=0``.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["tune_cpu_allocator"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc's largest mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX): requests above it still use mmap.
_MMAP_THRESHOLD = 32 * 1024 * 1024
_TRIM_THRESHOLD = 1024 * 1024 * 1024

_done: bool | None = None


def tune_cpu_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; ``True`` when they are set."""
    global _done
    if _done is not None:
        return _done
    _done = False
    env = os.environ
    if (
        not sys.platform.startswith("linux")
        or env.get("CMCREC_MALLOC_TUNING", "1") == "0"
        or "MALLOC_MMAP_THRESHOLD_" in env
        or "MALLOC_TRIM_THRESHOLD_" in env
        or any(name in env.get("LD_PRELOAD", "") for name in ("jemalloc", "tcmalloc", "mimalloc"))
    ):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _done = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    return _done
