"""Thread scheduling (Linux): a real-time executor thread for a node's control tick, normal workers.

On the 2-core machine this ships for, a camera driver publishing 4000x3000 frames at 30 Hz keeps both
cores busy, and the kernel then wakes a normally scheduled 10 Hz timer thread up to 8 ms late (p99; a
bare rclpy timer in another process: 6.5 ms), whatever the node itself does. ros2_control runs its
update loop under SCHED_FIFO for this reason; the policy node and the guard can run their executor
thread so too (parameter `realtime_priority`). That thread spends its time asleep or in
sub-millisecond callbacks; the slow work (inference, frame copies, fallback plans) runs on worker
threads, which call `use_normal_scheduling()` first because a thread inherits its creator's policy.
"""
from __future__ import annotations

import os
import threading

MAX_REALTIME_PRIORITY = 98  # 99 is the kernel's own (watchdogs, migration): never above it

# Below ros2_control's controller manager (SCHED_FIFO 50 by default), which must preempt the nodes that
# feed it; like it, the nodes try real time by default and carry on normally (with a warning) if refused.
DEFAULT_REALTIME_PRIORITY = 20
REALTIME_PRIORITY_HELP = (
    f'SCHED_FIFO priority (1-{MAX_REALTIME_PRIORITY}) of the executor thread, which runs the control tick and '
    'the checks; 0 = normal scheduling. Keeps it on time when sensors and inference fill the CPU '
    '(diffusion_policy_ros.scheduling); needs root, CAP_SYS_NICE or an rtprio limit, else a warning')


def check_realtime_priority(priority: int) -> None:
    if not 0 <= priority <= MAX_REALTIME_PRIORITY:
        raise ValueError(f'parameter realtime_priority must be 0 (normal scheduling) or 1-{MAX_REALTIME_PRIORITY}, '
                         f'got {priority}')


def use_realtime_priority(priority: int) -> str | None:
    """Run the calling thread under SCHED_FIFO at `priority` (1-98). None when it does; otherwise why
    not (not Linux, or no permission: root, CAP_SYS_NICE or an `rtprio` limit is needed)."""
    if not 1 <= priority <= MAX_REALTIME_PRIORITY:
        raise ValueError(f'realtime priority must be 1-{MAX_REALTIME_PRIORITY}, got {priority}')
    if not hasattr(os, 'sched_setscheduler'):
        return 'this platform has no SCHED_FIFO'
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))  # 0: this thread (Linux)
    except OSError as err:
        return (f'SCHED_FIFO {priority} refused ({err.strerror}): needs root, CAP_SYS_NICE or an rtprio '
                'limit (/etc/security/limits.conf)')
    return None


def use_normal_scheduling(nice: int = 0) -> None:
    """Run the calling thread under SCHED_OTHER (undoing an inherited real-time policy), `nice` steps
    below its creator. Best effort: a platform or permission that refuses leaves it as it was."""
    try:
        if hasattr(os, 'sched_getscheduler') and os.sched_getscheduler(0) != os.SCHED_OTHER:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        if nice > 0 and hasattr(os, 'setpriority'):  # threads are tasks on Linux: this lowers this thread alone
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError:
        pass

