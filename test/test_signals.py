"""Every executable stops cleanly on the signals terminals, supervisors and `kill` send (issue 16):
exit code 0, no traceback, every child process gone, what was recorded kept.

The bound on the stop time here only catches a hang (a loaded CI machine must not fail it); the
measured times are printed (`-s`) and quoted in the README.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import psutil
import pytest

from ros_helpers import ROOT, wait_for

pytestmark = pytest.mark.ros
SIGNALS = [signal.SIGINT, signal.SIGTERM]
HANG_S = 15.0  # a stop slower than this is a hang, whatever the load


@dataclass
class Stopped:
    code: int
    seconds: float
    stdout: str
    stderr: str
    survivors: list[str] = field(default_factory=list)  # child processes still running after the stop


def stop_with_signal(command: list[str], ready, signum: int, startup_s: float = 150.0,
                     whole_group: bool = False) -> Stopped:
    """Start `command` in its own session, wait until `ready(stdout, stderr)`, send `signum` to it
    alone (as `kill` does) or, `whole_group`, to it and every child (as a terminal's Ctrl-C does), and
    wait for it to exit."""
    proc = subprocess.Popen(command, cwd=ROOT, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    out: list[str] = []
    err: list[str] = []
    threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True).start()
    threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True).start()
    try:
        wait_for(lambda: ready(''.join(out), ''.join(err)) or proc.poll() is not None, startup_s,
                 f'{command[2:5]} to be ready')
        assert proc.poll() is None, ''.join(out) + ''.join(err)
        children = psutil.Process(proc.pid).children(recursive=True)
        sent = time.monotonic()
        if whole_group:
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
        code = proc.wait(HANG_S * 4)
        took = time.monotonic() - sent
        gone, alive = psutil.wait_procs(children, timeout=5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    time.sleep(0.2)  # the reader threads take the last lines
    print(f'\n{" ".join(command[2:4])} {signal.Signals(signum).name}: exit {code} in {took:.2f} s')
    return Stopped(code, took, ''.join(out), ''.join(err), [' '.join(p.cmdline()[:3]) for p in alive])


def assert_clean(stopped: Stopped, stderr_may_log: bool = False) -> None:
    """Exit 0 within the hang bound, no traceback, no child left. `stderr_may_log`: a node's ROS log
    lines go to stderr (rclpy's default); errors may not."""
    everything = stopped.stdout + stopped.stderr
    assert stopped.code == 0, everything[-4000:]
    assert stopped.seconds < HANG_S, f'{stopped.seconds:.1f} s to stop'
    assert 'Traceback' not in everything and 'Exception' not in everything, everything[-4000:]
    assert not stopped.survivors, stopped.survivors
    if stderr_may_log:
        problems = [line for line in stopped.stderr.splitlines() if '[ERROR]' in line or '[FATAL]' in line]
        assert not problems, problems
    else:
        assert stopped.stderr == '', stopped.stderr


@pytest.mark.parametrize('signum', SIGNALS)
def test_bringup_stops_every_node(tmp_path, signum):
    config = tmp_path / 'bringup.yaml'
    config.write_text(
        'bringup:\n  ros__parameters:\n    nodes: [sim_robot_node, collision_guard_node]\n'
        f'    sim_robot_node_params: [config/sim_robot.yaml, {config}]\n'
        f'    collision_guard_node_params: [config/collision_guard.yaml, {config}]\n'
        'sim_robot_node:\n  ros__parameters:\n    camera_rate_hz: 2.0\n'
        'collision_guard_node:\n  ros__parameters:\n    use_sim_time: true\n')
    stopped = stop_with_signal([sys.executable, '-m', 'diffusion_policy_ros.nodes.bringup', '--config', str(config)],
                               lambda out, err: 'all nodes up' in out, signum)
    # bring-up relays its nodes' logs (stderr included) to its stdout, so its own stderr stays empty
    assert_clean(stopped)
    assert f'{signal.Signals(signum).name}: stopping every node' in stopped.stdout
    assert '[bringup] stopped' in stopped.stdout


def test_a_terminal_ctrl_c_reaching_every_node_at_once_still_stops_cleanly():
    """Ctrl-C in a terminal signals bring-up and all three nodes together; bring-up's own SIGINT
    follows. A node must not trace back when the second lands in its clean-up."""
    stopped = stop_with_signal([sys.executable, '-m', 'diffusion_policy_ros.nodes.bringup', '--config',
                                'config/sim.yaml'], lambda out, err: 'all nodes up' in out, signal.SIGINT,
                               whole_group=True)
    assert_clean(stopped)
    assert '[bringup] stopped' in stopped.stdout


NODES = {
    'policy_node': ('active:', ['-p', 'checkpoint:=models/reach_around', '-p', 'torch_threads:=1']),
    'collision_guard_node': ('active:', []),
    'sim_robot_node': ('simulating', ['-p', 'camera_rate_hz:=2.0']),
}


@pytest.mark.parametrize('signum', SIGNALS)
@pytest.mark.parametrize('node', sorted(NODES))
def test_each_node_stops_on_its_own(node, signum):
    marker, params = NODES[node]
    command = [sys.executable, '-m', f'diffusion_policy_ros.nodes.{node}', '--ros-args', *params]
    stopped = stop_with_signal(command, lambda out, err: marker in out + err, signum)
    assert_clean(stopped, stderr_may_log=True)


def test_demo_stops_during_bring_up_and_during_an_episode(tmp_path):
    """SIGTERM while the nodes come up, SIGINT in the middle of episode 2: both stop every node, and
    the second keeps the finished episode in the report."""
    demo = [sys.executable, '-m', 'diffusion_policy_ros.cli', 'demo', '--task', 'reach_around', '--checkpoint',
            'models/reach_around', '--episodes', '3']
    early = stop_with_signal(demo + ['--out', str(tmp_path / 'early')], lambda out, err: '[demo] bringing up' in out,
                             signal.SIGTERM)
    assert_clean(early)
    assert 'stopped by SIGTERM' in early.stdout
    late = stop_with_signal(demo + ['--out', str(tmp_path / 'late')], lambda out, err: '[demo] episode 1/3' in out,
                            signal.SIGINT)
    assert_clean(late)
    assert 'stopped after 1 of 3 episodes' in late.stdout
    report = json.loads((tmp_path / 'late' / 'demo_report.json').read_text())
    assert report['interrupted'] is True and len(report['episodes']) == 1
    assert (tmp_path / 'late' / 'nodes.log').stat().st_size > 0


def test_replay_stops_while_playing_and_while_starting(tmp_path):
    """SIGINT mid-bag keeps the recorded bag and a partial report; SIGTERM while the nodes start too."""
    from diffusion_policy_ros.data.bags import BagWriter
    from diffusion_policy_ros.sim.arm import SimConfig
    from diffusion_policy_ros.sim.record_demos import record_episode
    bag = tmp_path / 'episode'
    with BagWriter(bag) as writer:
        record_episode('reach_around', 0, writer, cfg=SimConfig(task='reach_around', seed=0, camera_height=48,
                                                                camera_width=48))
    replay = [sys.executable, '-m', 'diffusion_policy_ros.cli', 'replay', str(bag), '--checkpoint',
              'models/reach_around', '--rate', '0.5', '--set', 'policy_node.torch_threads:=1']
    playing = stop_with_signal(replay + ['--out', str(tmp_path / 'playing')],
                               lambda out, err: 'nodes connected; playing' in out, signal.SIGINT)
    assert_clean(playing)
    assert 'stopped by SIGINT' in playing.stdout and 'recorded bag' in playing.stdout, playing.stdout
    report = json.loads((tmp_path / 'playing' / 'report.json').read_text())
    assert report['replay']['interrupted'] is True
    assert (tmp_path / 'playing' / 'recorded').is_dir()
    starting = stop_with_signal(replay + ['--out', str(tmp_path / 'starting')],
                                lambda out, err: '[replay] ' in out, signal.SIGTERM)
    assert_clean(starting)


SPIN_WITH_A_DISGUISED_STOP = '''
import os, signal, sys, time
from diffusion_policy_ros.errors import StopRequested
from diffusion_policy_ros.nodes.lifecycle import init_node_process, spin_until_stopped

class Context:
    def ok(self):
        return True

class Executor:
    """Fails in spin_once() as rclpy does when a stop signal lands while it converts a taken message."""
    context = Context()

    def spin_once(self, timeout_sec=None):
        if sys.argv[1] == 'signal':
            try:
                # raise_signal delivers SIGINT to this (the main) thread and runs the Python handler
                # before it returns. With os.kill(getpid()) the kernel picks any thread (DDS's, rclpy's),
                # and under load about 1 run in 20 never ran the handler within 10 s of this busy loop
                # (2 of 40 measured beside a training job; a guess at why: a non-main thread cleared
                # CPython's pending-signal flag that the main thread's loop polls).
                signal.raise_signal(signal.SIGINT)
                deadline = time.monotonic() + 10.0
                while time.monotonic() < deadline:
                    pass
            except StopRequested:
                pass
            else:
                raise AssertionError('SIGINT did not raise StopRequested')
        raise RuntimeError("Unable to convert call argument '0' to Python object")

init_node_process([])
spin_until_stopped(Executor())
print('stopped cleanly')
'''

SIGNAL_INSIDE_RCLPY = '''
import signal
from diffusion_policy_ros.nodes.lifecycle import init_node_process, spin_until_stopped

# A function whose code lives in "rclpy" (as rclpy.task.Task.__init__ does), where the signal lands.
namespace = {'signal': signal}
exec(compile("def build_task():\\n    signal.raise_signal(signal.SIGINT)\\n    return 'task built'\\n",
             '/venv/site-packages/rclpy/task.py', 'exec'), namespace)

class Context:
    def ok(self):
        return True

class Executor:
    context = Context()
    spins = 0

    def spin_once(self, timeout_sec=None):
        self.spins += 1
        assert self.spins == 1, 'spun on after the stop signal'
        print(namespace['build_task']())

init_node_process([])
spin_until_stopped(Executor())
print('stopped cleanly')
'''


def test_a_stop_signal_landing_in_rclpy_code_is_recorded_there_and_stops_the_spin_loop():
    """The CI failure of 2026-12-03: a group Ctrl-C raised StopRequested inside rclpy's Task.__init__,
    and the half-built Task's __del__ printed a traceback. In rclpy's code the signal is now only
    recorded; the spin loop ends on it."""
    done = subprocess.run([sys.executable, '-c', SIGNAL_INSIDE_RCLPY], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines() == ['task built', 'stopped cleanly'], done.stdout + done.stderr


@pytest.mark.parametrize('with_signal', [True, False])
def test_an_error_that_a_stop_signal_caused_inside_rclpy_stops_cleanly_and_any_other_propagates(with_signal):
    """The CI failure of 2026-12-02: Ctrl-C reached the guard while rclpy converted a joint state, and
    pybind11 reported the interrupt as a RuntimeError that traced back out of the node."""
    done = subprocess.run([sys.executable, '-c', SPIN_WITH_A_DISGUISED_STOP, 'signal' if with_signal else 'none'],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    if with_signal:
        assert done.returncode == 0 and 'stopped cleanly' in done.stdout, done.stdout + done.stderr
    else:
        assert done.returncode == 1 and 'RuntimeError: Unable to convert' in done.stderr, done.stdout + done.stderr
