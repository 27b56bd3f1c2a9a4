"""Shared pytest set-up.

Each pytest process takes a ROS_DOMAIN_ID no other process on this machine holds (an advisory lock
file per domain, kept until released or the process exits), so DDS tests of concurrent runs (two
checkouts, CI and a developer) never see each other's topics; node subprocesses inherit it. Each DDS
test module (marked `ros`) then runs in a domain of its own, with a fresh rclpy context and stale Fast
DDS shared memory cleaned first: a node started by one module never reuses a port number that a dead
node of an earlier module held while the test process still has that port open (CI once saw a guard
hear nothing from the sim for 60 s that way; eProsima/Fast-DDS#4728). Discovery stays on loopback,
and the package's DDS profile applies as it does under env.sh and bringup.
"""
import fcntl
import os
import sys
import tempfile

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DOMAIN_LOCKS = os.path.join(tempfile.gettempdir(), 'diffusion_policy_ros_domains')


def _claim_domain_id(after: int | None = None) -> tuple[int, object]:
    """The first free domain in 1..100 (0 is everyone's default) and its held lock, starting after
    `after` or at a PID-dependent one."""
    os.makedirs(_DOMAIN_LOCKS, exist_ok=True)
    start = os.getpid() % 100 if after is None else after
    for offset in range(100):
        domain = 1 + (start + offset) % 100
        handle = open(os.path.join(_DOMAIN_LOCKS, f'{domain}.lock'), 'w')
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        return domain, handle  # the lock is held while the handle is open
    raise RuntimeError(f'all ROS domains 1-100 are held by other test processes ({_DOMAIN_LOCKS})')


_PROCESS_DOMAIN, _PROCESS_DOMAIN_LOCK = _claim_domain_id()
_last_domain = _PROCESS_DOMAIN


@pytest.fixture(scope='module', autouse=True)
def _dds_domain_per_module(request):
    """A fresh domain, rclpy context and cleaned shared memory for every module marked `ros`."""
    global _last_domain
    if request.node.get_closest_marker('ros') is None:
        yield
        return
    from diffusion_policy_ros.nodes.dds import clean_stale_shared_memory
    import rclpy
    if rclpy.ok():
        rclpy.shutdown()
    clean_stale_shared_memory()
    domain, lock = _claim_domain_id(after=_last_domain)
    _last_domain = domain
    os.environ['ROS_DOMAIN_ID'] = str(domain)
    try:
        yield domain
    finally:
        if rclpy.ok():
            rclpy.shutdown()
        os.environ['ROS_DOMAIN_ID'] = str(_PROCESS_DOMAIN)
        lock.close()


os.environ['ROS_DOMAIN_ID'] = str(_PROCESS_DOMAIN)
os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
# A node that hangs in a test is sent SIGABRT: faulthandler then prints every thread's stack to its log.
os.environ['PYTHONFAULTHANDLER'] = '1'
os.environ.setdefault('FASTDDS_DEFAULT_PROFILES_FILE', os.path.join(_ROOT, 'config', 'dds', 'fastdds.xml'))
if sys.prefix not in os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep):
    os.environ['AMENT_PREFIX_PATH'] = os.pathsep.join(
        p for p in (sys.prefix, os.environ.get('AMENT_PREFIX_PATH')) if p)

# One intra-op thread per test process: on the 2-core CI machine, node subprocesses and the test run
# side by side, and torch's default thread count then makes small models 10-30x slower.
os.environ.setdefault('OMP_NUM_THREADS', '1')
try:
    import torch
    torch.set_num_threads(1)
except ImportError:  # pragma: no cover - torch is in requirements.txt
    pass
