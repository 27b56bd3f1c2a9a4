"""The DDS transport profile this package ships, and where it is applied.

Fast DDS's defaults lose large frames between processes: its shared-memory segment is 512 KiB, so a
640x480 rgb8 frame (900 KiB) falls back to UDP fragments, and best-effort fragments are dropped as
soon as the socket buffer overflows (5 of 180 VGA frames arrived at 30 Hz). `config/dds/fastdds.xml`
gives shared memory a 64 MiB segment and UDP 4 MiB socket buffers: VGA and 720p frames then arrive
whole (benchmarks/camera_transport.py). env.sh, bringup, `dp-ros` and the launch files apply it unless
FASTDDS_DEFAULT_PROFILES_FILE is already set; the camera driver's process needs it too, since the
publisher's segment carries the frame.

Shared memory has a cost: a process that dies leaves its segment (64 MiB with this profile) and its
ports in /dev/shm, and a new participant that reuses a dead one's port number can miss data from peers
that still hold the old port open (eProsima/Fast-DDS#4728, #5053). `clean_stale_shared_memory` runs Fast
DDS's own `fastdds shm clean` (it removes only files whose owner's lock is gone) before bring-up, the
demo and each DDS test module start nodes.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import MutableMapping
from pathlib import Path

from diffusion_policy_ros.paths import share_dir

PROFILE_VARIABLE = 'FASTDDS_DEFAULT_PROFILES_FILE'
# Every variable through which Fast DDS could pick up another transport set-up.
DDS_VARIABLES = (PROFILE_VARIABLE, 'FASTRTPS_DEFAULT_PROFILES_FILE', 'FASTDDS_BUILTIN_TRANSPORTS')


def profile_path() -> Path:
    return share_dir() / 'config' / 'dds' / 'fastdds.xml'


def apply_dds_profile(env: MutableMapping[str, str] | None = None) -> MutableMapping[str, str]:
    """Point `env` (default: this process's environment, before rclpy.init) at the shipped profile,
    unless it names a profile already; returns `env`."""
    env = os.environ if env is None else env
    if not env.get(PROFILE_VARIABLE):
        env[PROFILE_VARIABLE] = str(profile_path())
    return env


def clean_stale_shared_memory(timeout_s: float = 10.0) -> str:
    """Remove Fast DDS shared-memory files left by processes that are gone; returns what the tool
    said (or why it did not run). Safe beside running nodes: files whose owner holds its lock stay.

    Fast DDS's own tool (a Python script shipped with Fast DDS, on PATH in a ROS install and in this
    venv) rather than our own: the file naming and lock protocol are Fast DDS's to change."""
    tool = shutil.which('fastdds')
    if tool is None:
        return 'fastdds shm clean: the fastdds tool is not on PATH; stale shared memory left as it is'
    try:
        done = subprocess.run([tool, 'shm', 'clean'], capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f'fastdds shm clean: {err}'
    said = ' '.join((done.stdout + done.stderr).split())
    return f'fastdds shm clean: {said}' if done.returncode == 0 else \
        f'fastdds shm clean failed (exit {done.returncode}): {said}'
