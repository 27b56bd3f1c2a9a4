"""A node process gives freed large blocks back to the OS (diffusion_policy_ros.heap)."""
from __future__ import annotations

import subprocess
import sys

# Twice: allocate and touch a 6 MB block (an oversized camera frame), free it; RSS growth after each (MB).
# Run in a fresh interpreter: the test process's heap has a history of its own.
PROBE = """
import sys
import numpy as np
from diffusion_policy_ros.heap import return_large_blocks_to_os
if sys.argv[1] == 'fixed':
    assert return_large_blocks_to_os()
def rss_mb():
    return next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith('VmRSS:')) / 1024
before = rss_mb()
growth = []
for _ in range(2):
    frame = np.full(1920 * 1080 * 3, 7, np.uint8)
    del frame
    growth.append(rss_mb() - before)
print(*growth)
"""


def _growth_mb(mode: str) -> list[float]:
    out = subprocess.run([sys.executable, '-c', PROBE, mode], capture_output=True, text=True, timeout=60, check=True)
    return [float(value) for value in out.stdout.split()]


def test_a_freed_frame_sized_block_leaves_the_process_and_stays_resident_without_the_fix():
    default = _growth_mb('default')
    # glibc's own behaviour, which the fix exists for: the first free raised the threshold, so the
    # second frame came from the heap and stayed resident.
    assert default[1] > 5.0, default
    fixed = _growth_mb('fixed')
    assert max(fixed) < 1.0, fixed
