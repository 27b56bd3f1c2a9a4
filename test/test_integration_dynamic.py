"""A box crossing the workspace (reach_around_dynamic) and a checked trajectory it will cross: without
the guard the arm is hit; with the guard over DDS (sim on /clock, the box on the scene topic at 30 Hz)
the trajectory is cut while it executes, before the contact, with no new proposal (issue 15). And an
arm that stands where the box is going: holding there is hit; the guard's evasion moves it away in time."""
from __future__ import annotations

import numpy as np
import pytest
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from diffusion_policy_ros.nodes.messages import seconds_to_duration, seconds_to_stamp
from diffusion_policy_ros.robot_description import PANDA_JOINTS
from diffusion_policy_ros.sim.arm import SimArm, SimConfig
from diffusion_policy_ros.sim.kinematics import tcp_down_rotation
from diffusion_policy_ros.sim.tasks import sample_moving_obstacle

from ros_helpers import NodeProcess, SpinningNode, wait_for, watch_sim_and_guard

TASK, SEED = 'reach_around_dynamic', 2  # the box: 0.295 m/s along -x at y -0.155, from t 1.47 s
START_S = 1.0  # episode time the trajectory starts at
POINTS = 20


def crossing_trajectory() -> tuple[np.ndarray, float]:
    """Joint points that take the hand sideways onto the box's line at x 0.38 (clear of the static
    obstacle), arriving just when the box gets there, and the time between points (s)."""
    mover = sample_moving_obstacle(TASK, SEED)
    with SimArm(SimConfig(task=TASK, seed=SEED)) as arm:
        _, start, _ = arm.joint_state()
        goal = np.array([0.38, mover.start[1], 0.10])
        solution = arm.ik.solve(start[:7], goal, tcp_down_rotation(arm.layout.start_yaw), iterations=300)
    assert solution.converged
    arrival = mover.start_time + (mover.start[0] - goal[0]) / mover.speed
    return np.linspace(start, np.append(solution.q, start[7]), POINTS + 1)[1:], (arrival - START_S) / POINTS


def test_without_a_guard_the_box_hits_the_arm():
    """The scenario is a real collision: the same trajectory sent straight to the sim's controller."""
    points, dt = crossing_trajectory()
    with SimArm(SimConfig(task=TASK, seed=SEED)) as arm:
        arm.step_until(START_S)
        arm.command_trajectory(PANDA_JOINTS, points, dt=dt)
        arm.step_until(arm.cfg.time_limit)
        assert arm.task_status().info['moving_obstacle_contacts'] > 0


def run_over_dds(points: np.ndarray, dt: float, **guard_params) -> tuple[dict, dict]:
    """The sim (on /clock, the box on the scene topic at 30 Hz) and the guard as nodes; `points` proposed
    once, due from START_S of the episode. Returns the sim's final task status and the guard's diagnostics."""
    sim = NodeProcess('diffusion_policy_ros.nodes.sim_robot_node',
                      {'task': TASK, 'seed': SEED, 'camera_rate_hz': 2.0, 'status_rate_hz': 10.0})
    guard = NodeProcess('diffusion_policy_ros.nodes.collision_guard_node', {'use_sim_time': True, **guard_params})
    probe = SpinningNode('dynamic_probe')
    node = probe.node
    status, guard_diag = watch_sim_and_guard(node)
    proposals = node.create_publisher(JointTrajectory, '/policy/joint_trajectory', 10)
    try:
        wait_for(lambda: guard_diag.get('joint_state') == 'fresh' or not guard.alive(), 90,
                 'the guard to hear the sim')
        from std_srvs.srv import Trigger
        reset = node.create_client(Trigger, '/sim_robot_node/reset')
        assert reset.wait_for_service(timeout_sec=30)
        # the latched status first: read before it came, the episode number would be 0, and the current
        # episode (not the reset's) would pass for the restart (a fresh-clone failure: episode_time 2.31)
        wait_for(lambda: 'episode' in status, 30, 'the sim\'s task status')
        episode = status['episode']
        reset.call_async(Trigger.Request())
        wait_for(lambda: status.get('episode', 0) > episode, 30, 'the episode to restart')
        # past the sim's settling after a reset (it ignores commands for reset_settle_s, 0.2 s)
        wait_for(lambda: status['episode_time'] >= 0.3, 30, 'the sim to settle after the reset')
        assert status['episode_time'] < START_S - 0.2, f'the status came too late: {status}'
        msg = JointTrajectory(joint_names=list(PANDA_JOINTS))
        msg.header.stamp = seconds_to_stamp(status['sim_time'] - status['episode_time'] + START_S)
        for k, row in enumerate(points):
            msg.points.append(JointTrajectoryPoint(positions=[float(v) for v in row],
                                                   time_from_start=seconds_to_duration((k + 1) * dt)))
        proposals.publish(msg)
        wait_for(lambda: status.get('done') or not (sim.alive() and guard.alive()), 60, 'the episode to end')
        wait_for(lambda: 'evasions' in guard_diag, 5, 'guard diagnostics')
        assert sim.alive() and guard.alive(), guard.output
        assert int(guard_diag['chunks_passed']) >= 1, f'the trajectory was not forwarded: {guard_diag}'
        assert status['commands_accepted'] >= 1, f'the sim executed nothing: {status}'
        return dict(status), {**guard_diag, 'output': guard.output}
    finally:
        probe.close()
        for proc in (guard, sim):
            proc.stop()


@pytest.mark.ros
def test_the_guard_cuts_a_trajectory_the_moving_box_will_cross_before_contact():
    status, guard_diag = run_over_dds(*crossing_trajectory())
    assert int(guard_diag['executing_blocked']) >= 1, f'the guard never cut it: {guard_diag}'
    contacts = status['info']['moving_obstacle_contacts']
    assert contacts == 0, f'the box hit the arm {contacts} time(s); guard: {guard_diag}'


def test_the_guard_in_the_sim_loop_keeps_the_box_off_the_arm():
    """The same scenario through sim/hybrid.py's GuardFilter (the benchmark's hybrid arm), no DDS."""
    points, dt = crossing_trajectory()
    # The trajectory resampled on the control grid, sent once at START_S like a long proposed chunk.
    grid = np.stack([np.interp(np.arange(1, 1 + int(POINTS * dt / 0.1)) * 0.1, (np.arange(POINTS) + 1) * dt,
                               points[:, j]) for j in range(points.shape[1])], axis=1)
    guard, contacts = run_in_sim_loop(grid)
    assert guard.counters.executing_blocked >= 1
    assert contacts == 0


def run_in_sim_loop(grid: np.ndarray, **config) -> tuple:
    """`grid` (points 0.1 s apart) sent once at START_S through GuardFilter (the benchmark's hybrid arm,
    the shipped guard config with `config` changed); returns its CollisionGuard and the box's contacts."""
    from diffusion_policy_ros.sim.hybrid import GuardFilter, guard_config
    from diffusion_policy_ros.sim.rollout import rollout
    with SimArm(SimConfig(task=TASK, seed=SEED)) as arm:
        guard = GuardFilter(arm, guard_config(**config))
        sent = {'done': False}

        def act(t: float):
            if t >= START_S - 1e-9 and not sent['done']:
                sent['done'] = True
                return guard(t, grid, 0.1)
            return guard(t, None, 0.1)

        rollout(arm, act, cameras=())
        return guard.guard, arm.task_status().info['moving_obstacle_contacts']


def standing_in_the_way() -> np.ndarray:
    """The crossing trajectory sped up to reach the box's line a second after START_S, on the 0.1 s
    control grid; the arm then stands there, two seconds before the box comes."""
    points, _ = crossing_trajectory()
    steps = 10
    return np.stack([np.interp(np.arange(1, steps + 1) / steps, np.arange(1, POINTS + 1) / POINTS, points[:, j])
                     for j in range(points.shape[1])], axis=1)


@pytest.mark.parametrize('evade', [False, True])
def test_an_arm_standing_in_the_boxs_way_is_moved_out_of_it_by_the_guard(evade):
    """Holding where the box goes waits for the hit (evasion off: contact); the guard's evasion moves
    the arm out of the way before the box arrives (GuardFilter, the benchmark's hybrid arm)."""
    guard, contacts = run_in_sim_loop(standing_in_the_way(), evasion_max_duration_s=1.0 if evade else 0.0)
    if evade:
        assert guard.counters.evasions >= 1 and contacts == 0, (guard.counters, contacts)
    else:
        assert guard.counters.evasions == 0 and contacts > 0


@pytest.mark.ros
@pytest.mark.parametrize('evade', [False, True])
def test_over_dds_the_guard_moves_an_arm_standing_in_the_boxs_way_out_of_it(evade):
    status, guard_diag = run_over_dds(standing_in_the_way(), 0.1,
                                      evasion_max_duration_s=1.0 if evade else 0.0)
    contacts = status['info']['moving_obstacle_contacts']
    if not evade:
        assert int(guard_diag['evasions']) == 0 and contacts > 0, (status, guard_diag)
        return
    assert int(guard_diag['evasions']) >= 1, f'the guard never evaded: {status} {guard_diag}'
    assert contacts == 0, f'the box hit the arm {contacts} time(s); guard: {guard_diag}'
