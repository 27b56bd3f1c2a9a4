"""Thread scheduling: a real-time executor thread, and worker threads that never inherit real time."""
from __future__ import annotations

import os
import sys
import threading

import numpy as np
import pytest

from diffusion_policy_ros.control.inference_worker import InferenceWorker
from diffusion_policy_ros.scheduling import (MAX_REALTIME_PRIORITY, check_realtime_priority, use_normal_scheduling,
                                             use_realtime_priority)
from diffusion_policy_ros.worker_thread import LatestJobThread

WAIT = 10.0
linux_only = pytest.mark.skipif(not sys.platform.startswith('linux'), reason='SCHED_FIFO per thread is Linux')


def run_in_thread(fn):
    """fn's result, run in a fresh thread (so the test process's own scheduling is never changed)."""
    result: list = []
    thread = threading.Thread(target=lambda: result.append(fn()))
    thread.start()
    thread.join(WAIT)
    assert result, 'the thread did not finish'
    return result[0]


def realtime_or_skip(priority: int = 5) -> None:
    """Make the calling thread real-time; a machine that refuses cannot run the inheritance tests."""
    refused = use_realtime_priority(priority)
    if refused:
        pytest.skip(f'this machine refuses SCHED_FIFO: {refused}')


@linux_only
def test_realtime_priority_applies_to_the_calling_thread_alone():
    def promote():
        refused = use_realtime_priority(7)
        return refused, os.sched_getscheduler(0), os.sched_getparam(0).sched_priority

    refused, policy, priority = run_in_thread(promote)
    if refused:  # without the permission the node carries on normally, and says why
        assert 'SCHED_FIFO 7 refused' in refused and 'CAP_SYS_NICE' in refused
        assert policy == os.SCHED_OTHER
    else:
        assert (policy, priority) == (os.SCHED_FIFO, 7)
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the test's own thread is untouched


@pytest.mark.parametrize('priority', [-1, MAX_REALTIME_PRIORITY + 1])
def test_an_out_of_range_priority_is_refused_by_name(priority):
    with pytest.raises(ValueError, match='realtime priority must be 1-98'):
        use_realtime_priority(priority)
    with pytest.raises(ValueError, match=f'parameter realtime_priority must be 0 .* got {priority}'):
        check_realtime_priority(priority)
    check_realtime_priority(0)
    check_realtime_priority(MAX_REALTIME_PRIORITY)


@linux_only
def test_job_threads_started_from_a_realtime_thread_run_normally():
    """A thread inherits its creator's policy: the camera and planning threads, started by a real-time
    executor thread, must not compete with it (nor starve the machine)."""
    def start_workers_from_a_realtime_thread():
        realtime_or_skip()
        seen: dict[str, tuple[int, int]] = {}
        job_ran = threading.Event()

        def record(name: str) -> None:
            seen[name] = (os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

        plain, niced = LatestJobThread('plain'), LatestJobThread('niced', nice=10)
        for thread in (plain, niced):
            thread.start()
            thread.submit(lambda name=thread._thread.name: (record(name), job_ran.set()))
            assert job_ran.wait(WAIT)
            job_ran.clear()
            thread.stop()
        record('executor')
        return seen

    seen = run_in_thread(start_workers_from_a_realtime_thread)
    assert seen['executor'][0] == os.SCHED_FIFO
    assert seen['plain'][0] == os.SCHED_OTHER and seen['niced'][0] == os.SCHED_OTHER
    assert seen['niced'][1] >= seen['plain'][1] + 10 or seen['niced'][1] == 19


@linux_only
def test_inference_worker_thread_drops_an_inherited_realtime_policy():
    def run():
        realtime_or_skip()
        policies: list[int] = []
        done = threading.Event()

        def policy(obs):
            policies.append(os.sched_getscheduler(0))
            done.set()
            return np.zeros((16, 2))

        from test_control_worker import window  # the worker's own test's observation window
        worker = InferenceWorker(policy, lambda: window(1.0), lambda chunk: None, n_obs_steps=2, dt=0.1)
        worker.start()
        worker.notify()
        assert done.wait(WAIT)
        worker.stop()
        return policies

    assert run_in_thread(run) == [os.SCHED_OTHER]


def test_the_guard_refuses_an_out_of_range_priority_by_name():
    from diffusion_policy_ros.collision.config import GuardNodeParams
    with pytest.raises(ValueError, match='realtime_priority .* got 99'):
        GuardNodeParams(realtime_priority=99)
    assert GuardNodeParams().realtime_priority == 20


def test_normal_scheduling_is_a_no_op_on_a_normal_thread():
    def run():
        use_normal_scheduling()
        return os.sched_getscheduler(0) if hasattr(os, 'sched_getscheduler') else None

    assert run_in_thread(run) in (os.SCHED_OTHER if hasattr(os, 'SCHED_OTHER') else None, None)
