"""The C heap of a long-running node process: large blocks go back to the OS when freed.

glibc serves a block above its mmap threshold (128 KiB at start) with its own mapping, unmapped on free,
but the first time such a block is freed it raises the threshold to that block's size (up to 32 MiB).
From then on blocks of that size (an oversized camera frame, 6 MB for 1920x1080 RGB; its decoded copy)
come from the per-thread heaps, where freed memory stays resident behind whatever was allocated
after it. In a 30-minute soak (a 1920x1080 frame every minute, the first 36 s in) the policy node grew
+12 MB in its first minute and +18 MB more once; a harness with the same pattern (frames taken on one
thread, decoded on another) grew 13 -> 40 MB over five rounds, and 5-9 MB with the threshold fixed.
Fixing the threshold (mallopt turns off the dynamic raise) keeps every block of 1 MiB or more a mapping
of its own, unmapped on free. Measured cost: none (DDIM-10 pick_place on one thread, median 113 ms
without and 112 ms with it); the next soak grew the policy +1.6 MB.
"""
from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # <malloc.h>
LARGE_BLOCK_BYTES = 1 << 20


def return_large_blocks_to_os(threshold_bytes: int = LARGE_BLOCK_BYTES) -> bool:
    """Fix glibc's mmap threshold for this process. False where the C library is not glibc (no mallopt)."""
    name = ctypes.util.find_library('c')
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, threshold_bytes) == 1
