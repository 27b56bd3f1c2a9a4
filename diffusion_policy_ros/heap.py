"""The C heap of a long-running node process: large blocks go back to the OS when freed.

glibc serves a block above its mmap threshold (128 KiB at start) with its own mapping, unmapped on free,
but the first time such a block is freed it raises the threshold to that block's size (up to 32 MiB).
From then on blocks of that size (an oversized camera frame, 6 MB for 1920x1080 RGB; its decoded copy)
come from the per-thread heaps, where freed memory stays resident behind whatever was allocated
after it. Measured in the 30-minute soak: the policy node grew +12 MB at its first oversized frame and
+18 MB more once; a harness with the same pattern (frames taken on one thread, decoded on another) grew
13 -> 40 MB over five rounds, and 5-9 MB with the threshold fixed. Fixing the threshold (mallopt turns
off the dynamic raise) keeps every block of 1 MiB or more a mapping of its own. Frames at the model's
size (tens of KB) and the policy's activations are below it, so inference allocates as before.
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
