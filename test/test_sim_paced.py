"""The paced simulator without ROS: a clock that never goes back across resets, outputs at their rates,
commands gated like a real arm's (settling after a reset, stamps of another episode, stamps far ahead)."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from diffusion_policy_ros.robot_description import PANDA_JOINTS
from diffusion_policy_ros.sim.arm import SimArm, SimConfig
from diffusion_policy_ros.sim.paced import PacedSim, PacingConfig, SimOutputs

WAIT = 30.0


class Recorder:
    def __init__(self) -> None:
        self.outputs: list[SimOutputs] = []
        self.logs: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def on_outputs(self, outputs: SimOutputs) -> None:
        with self.lock:
            self.outputs.append(outputs)

    def wait_for(self, condition, what: str) -> None:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            with self.lock:
                if condition(self.outputs):
                    return
            time.sleep(0.01)
        raise AssertionError(f'timed out waiting for {what}')


@pytest.fixture()
def paced():
    recorder = Recorder()
    arm = SimArm(SimConfig(task='reach_around', camera_width=16, camera_height=16))
    sim = PacedSim(arm, ['scene'], PacingConfig({'joint_state': 100.0, 'image': 10.0, 'scene': 30.0, 'clock': 100.0},
                                                 real_time_factor=2.0, reset_settle_s=0.2),
                   on_outputs=recorder.on_outputs, on_scene=lambda: None, on_status=lambda: None,
                   log=lambda level, text: recorder.logs.append((level, text)))
    sim.start()
    yield sim, recorder
    sim.stop()


def test_outputs_come_at_their_rates_and_the_clock_never_goes_back_across_a_reset(paced):
    sim, recorder = paced
    recorder.wait_for(lambda out: sum(o.images is not None for o in out) >= 4, 'four camera frames')
    ok, message = sim.request_reset('reach_around', 3, 0.0)
    assert ok and message == 'episode 2: task reach_around seed 3', message
    recorder.wait_for(lambda out: sum(o.images is not None for o in out) >= 8, 'frames of episode 2')
    with recorder.lock:
        outputs = list(recorder.outputs)
    clock = np.array([o.stamp_ns for o in outputs if o.clock])
    assert np.all(np.diff(clock) > 0)  # the published clock: strictly increasing, across the reset too
    assert np.all(np.diff([o.stamp_ns for o in outputs]) >= 0)
    joint_stamps = np.array([o.stamp_ns for o in outputs if o.joint_state is not None])
    assert np.median(np.diff(joint_stamps)) == 10_000_000  # 100 Hz of sim time
    frames = [o for o in outputs if o.images is not None]
    assert frames[0].images['scene'].shape == (16, 16, 3)
    assert sim.status()['episode'] == 2 and sim.status()['seed'] == 3
    assert ('info', 'reset: episode 2, task reach_around, seed 3') in recorder.logs


def test_commands_are_gated_like_a_real_arms(paced):
    sim, recorder = paced
    setpoint, _ = sim.setpoint()
    target = np.tile(setpoint, (2, 1))
    times = np.array([0.1, 0.2])
    recorder.wait_for(lambda out: len(out) > 10, 'the sim to run')
    assert sim.command(PANDA_JOINTS, target, times, 0.0) == ('accepted', '')
    outcome, why = sim.command(PANDA_JOINTS, target, times, 1e6)
    assert outcome == 'rejected' and 'ahead of sim time' in why and 'use_sim_time' in why
    clock_before_reset = sim.status()['sim_time']
    assert sim.request_reset('reach_around', 4, 0.0)[0]
    outcome, why = sim.command(PANDA_JOINTS, target, times, 0.0)  # at once: the arm is settling
    assert outcome == 'ignored' and 'reset_settle_s 0.2' in why
    recorder.wait_for(lambda out: sim.status()['episode_time'] > 0.3, 'the settling to end')
    outcome, why = sim.command(PANDA_JOINTS, target, times, clock_before_reset - 0.05)  # the last episode's
    assert outcome == 'rejected' and 'before this episode started' in why
    assert sim.command(PANDA_JOINTS, target, times, 0.0) == ('accepted', '')
    counts = sim.status()
    assert (counts['commands_accepted'], counts['commands_rejected'], counts['commands_ignored_settling']) == (2, 2, 1)
