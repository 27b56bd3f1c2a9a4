"""The DDS transport profile this package ships, and where it is applied.

Fast DDS's defaults lose large frames between processes: its shared-memory segment is 512 KiB, so a
640x480 rgb8 frame (900 KiB) falls back to UDP fragments, and best-effort fragments are dropped as
soon as the socket buffer overflows (5 of 180 VGA frames arrived at 30 Hz). `config/dds/fastdds.xml`
gives shared memory a 64 MiB segment and UDP 4 MiB socket buffers: VGA and 720p frames then arrive
whole (benchmarks/camera_transport.py). env.sh, bringup, `dp-ros` and the launch files apply it unless
FASTDDS_DEFAULT_PROFILES_FILE is already set; the camera driver's process needs it too, since the
publisher's segment carries the frame.
"""
from __future__ import annotations

import os
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
