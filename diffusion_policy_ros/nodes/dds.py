"""The DDS transport profile this package ships, and where it is applied.

Fast DDS's defaults lose large frames between processes: its shared-memory segment is 512 KiB, so a
640x480 rgb8 frame (900 KiB) falls back to UDP fragments, and best-effort fragments are dropped as
soon as the socket buffer overflows (5 of 180 VGA frames arrived at 30 Hz). `config/dds/fastdds.xml`
gives shared memory a 64 MiB segment and UDP 4 MiB socket buffers: VGA and 720p frames then arrive
whole (benchmarks/camera_transport.py). Its readers free a sample's memory once it is taken, where
rmw_fastrtps's default keeps every history slot at the largest sample it held (one oversized frame grew
policy_node by 6 MB per slot); rmw_fastrtps reads that setting from the XML only with
RMW_FASTRTPS_USE_QOS_FROM_XML=1. env.sh, bringup, `dp-ros` and the launch files apply both unless
FASTDDS_DEFAULT_PROFILES_FILE is already set; the camera driver's process needs the profile too, since
the publisher's segment carries the frame.

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
from collections.abc import Mapping, MutableMapping
from pathlib import Path

from diffusion_policy_ros.paths import share_dir

PROFILE_VARIABLE = 'FASTDDS_DEFAULT_PROFILES_FILE'
# rmw_fastrtps takes the history memory policy and publication mode from the XML only when this is 1.
QOS_FROM_XML_VARIABLE = 'RMW_FASTRTPS_USE_QOS_FROM_XML'
# Every variable through which Fast DDS could pick up another transport or memory set-up.
DDS_VARIABLES = (PROFILE_VARIABLE, QOS_FROM_XML_VARIABLE, 'FASTRTPS_DEFAULT_PROFILES_FILE',
                 'FASTDDS_BUILTIN_TRANSPORTS')


def profile_path() -> Path:
    return share_dir() / 'config' / 'dds' / 'fastdds.xml'


def apply_dds_profile(env: MutableMapping[str, str] | None = None) -> MutableMapping[str, str]:
    """Point `env` (default: this process's environment, before rclpy.init) at the shipped profile,
    unless it names a profile already, and have rmw_fastrtps read its memory settings when the profile
    in effect is the shipped one (a profile of the user's own keeps rmw_fastrtps's defaults); returns `env`."""
    env = os.environ if env is None else env
    if not env.get(PROFILE_VARIABLE):
        env[PROFILE_VARIABLE] = str(profile_path())
    if _is_shipped_profile(env[PROFILE_VARIABLE]):
        env.setdefault(QOS_FROM_XML_VARIABLE, '1')
    return env


def launch_environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """What a launch file sets for its nodes: the profile and memory variables of `env` (default: this
    process's environment) where set, else the shipped profile's."""
    env = os.environ if env is None else env
    return dict(apply_dds_profile({name: env[name] for name in (PROFILE_VARIABLE, QOS_FROM_XML_VARIABLE)
                                   if env.get(name)}))


def _is_shipped_profile(path: str) -> bool:
    """The shipped file, by content: the source tree's copy, the installed one or a link to either."""
    try:
        return Path(path).read_bytes() == profile_path().read_bytes()
    except OSError:
        return False


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
