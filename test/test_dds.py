"""The shipped DDS set-up: Fast DDS's stale shared memory is cleaned, live files are kept."""
from __future__ import annotations

import fcntl
import os
import secrets
from pathlib import Path

import pytest

from diffusion_policy_ros.nodes.dds import clean_stale_shared_memory

SHM = Path('/dev/shm')


@pytest.mark.skipif(not SHM.is_dir(), reason='Fast DDS keeps shared memory in /dev/shm on Linux only')
def test_stale_segments_are_removed_and_locked_ones_kept():
    """A segment whose owner is gone (its `_el` lock file is free) goes; one whose lock is held (a
    running participant) stays, so cleaning beside running nodes is safe."""
    dead, live = (SHM / f'fastdds_{secrets.token_hex(8)}' for _ in range(2))
    for segment in (dead, live):
        segment.write_bytes(b'\0' * 64)
        Path(f'{segment}_el').touch()
    holder = open(f'{live}_el', 'ab')
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        said = clean_stale_shared_memory()
        assert 'zombie segments cleaned' in said, said
        assert not dead.exists() and not Path(f'{dead}_el').exists()
        assert live.exists() and Path(f'{live}_el').exists()
    finally:
        holder.close()
        for path in (live, Path(f'{live}_el'), dead, Path(f'{dead}_el')):
            if path.exists():
                os.remove(path)
