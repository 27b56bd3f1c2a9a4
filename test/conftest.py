"""Shared pytest set-up.

Each pytest process takes a ROS_DOMAIN_ID no other process on this machine holds (an advisory lock
file per domain, kept until the process exits), so DDS tests of concurrent runs (two checkouts, CI and
a developer) never see each other's topics; node subprocesses inherit it. Discovery stays on loopback,
and the package's DDS profile applies as it does under env.sh and bringup.
"""
import fcntl
import os
import sys
import tempfile

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DOMAIN_LOCKS = os.path.join(tempfile.gettempdir(), 'diffusion_policy_ros_domains')


def _claim_domain_id() -> int:
    """The first free domain in 1..100 (0 is everyone's default), starting at a PID-dependent one."""
    os.makedirs(_DOMAIN_LOCKS, exist_ok=True)
    start = os.getpid() % 100
    for offset in range(100):
        domain = 1 + (start + offset) % 100
        handle = open(os.path.join(_DOMAIN_LOCKS, f'{domain}.lock'), 'w')
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        _claim_domain_id.handle = handle  # held open (and locked) for the life of this process
        return domain
    raise RuntimeError(f'all ROS domains 1-100 are held by other test processes ({_DOMAIN_LOCKS})')


os.environ['ROS_DOMAIN_ID'] = str(_claim_domain_id())
os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
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
