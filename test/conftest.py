"""Shared pytest set-up.

Each pytest session gets its own ROS_DOMAIN_ID so DDS tests of parallel runs (two checkouts, CI
and a developer) never see each other's topics, and discovery stays on loopback.
"""
import os
import random
import sys

os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
os.environ['ROS_DOMAIN_ID'] = str(random.Random(os.getpid()).randint(1, 100))
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


def pytest_collection_modifyitems(config, items):
    """DDS integration tests (marker `ros`) get one rerun: they run real nodes as processes on a 2-core
    machine, where a scheduling hiccup can delay a message past a wait. A real bug fails both runs;
    the rerun shows in the report (pytest-rerunfailures, a colcon-core dependency)."""
    import pytest
    for item in items:
        if item.get_closest_marker('ros') and not item.get_closest_marker('flaky'):
            item.add_marker(pytest.mark.flaky(reruns=1, reruns_delay=1))
