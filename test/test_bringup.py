"""`bringup` stops cleanly on the signals supervisors and terminals send (issue 16)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from ros_helpers import ROOT, wait_for

pytestmark = pytest.mark.ros


@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM])
def test_bringup_stops_every_node_on_sigint_and_sigterm(tmp_path, signum):
    config = tmp_path / 'bringup.yaml'
    config.write_text(
        'bringup:\n  ros__parameters:\n    nodes: [sim_robot_node, collision_guard_node]\n'
        f'    sim_robot_node_params: [config/sim_robot.yaml, {config}]\n'
        f'    collision_guard_node_params: [config/collision_guard.yaml, {config}]\n'
        'sim_robot_node:\n  ros__parameters:\n    camera_rate_hz: 2.0\n'
        'collision_guard_node:\n  ros__parameters:\n    use_sim_time: true\n')
    proc = subprocess.Popen([sys.executable, '-m', 'diffusion_policy_ros.nodes.bringup', '--config', str(config)],
                            cwd=ROOT, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)  # the signal reaches bring-up only, as from `kill`
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    try:
        wait_for(lambda: any('all nodes up' in line for line in lines) or proc.poll() is not None, 120,
                 'bring-up to start both nodes')
        assert proc.poll() is None, ''.join(lines)
        sent = time.monotonic()
        proc.send_signal(signum)
        code = proc.wait(20)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    output = ''.join(lines)
    assert code == 0, output
    assert took < 10.0, f'{took:.1f} s to stop'
    assert f'{signal.Signals(signum).name}: stopping every node' in output and '[bringup] stopped' in output
    assert 'Traceback' not in output, output
