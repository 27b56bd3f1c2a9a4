"""SimArm: joint-trajectory-controller semantics, determinism, observations and scene export."""
import numpy as np
import pytest

from diffusion_policy_ros.robot_description import PANDA_HOME, PANDA_JOINTS
from diffusion_policy_ros.sim.arm import SimArm, SimConfig
from diffusion_policy_ros.sim.experts import ScriptedExpert
from diffusion_policy_ros.sim.model import OBSTACLE_SIZE
from diffusion_policy_ros.sim.rollout import rollout


@pytest.fixture(scope='module')
def arm():
    with SimArm(SimConfig(task='pick_place', seed=3)) as sim:
        yield sim


def test_config_rejects_rates_below_the_floor():
    with pytest.raises(ValueError, match='physics_hz'):
        SimConfig(physics_hz=100)
    with pytest.raises(ValueError, match='joint_state_hz'):
        SimConfig(joint_state_hz=20)
    with pytest.raises(ValueError, match="'stack'"):
        SimConfig(task='stack')


def test_reset_starts_near_home_with_a_seeded_layout(arm):
    arm.reset(seed=3)
    names, position, velocity = arm.joint_state()
    assert names == PANDA_JOINTS
    assert arm.sim_time == 0.0
    np.testing.assert_allclose(position, PANDA_HOME, atol=0.05)
    np.testing.assert_allclose(velocity, 0.0, atol=1e-9)
    cube_a = arm.task_status().info['cube_position']
    arm.reset(seed=4)
    assert not np.allclose(arm.task_status().info['cube_position'], cube_a)
    arm.reset(seed=3)
    np.testing.assert_array_equal(arm.task_status().info['cube_position'], cube_a)


def test_trajectory_interpolates_from_the_current_setpoint_and_holds_the_last_point(arm):
    arm.reset(seed=3)
    _, start, _ = arm.joint_state()
    goal = start.copy()
    goal[[0, 3, 7]] += (0.2, 0.15, -0.02)
    mid = start + 0.5 * (goal - start)
    # Names in a different order than PANDA_JOINTS: columns are matched by name.
    names = list(reversed(PANDA_JOINTS))
    arm.command_trajectory(names, np.stack([mid, goal])[:, ::-1], dt=0.5, start_time=0.0)
    np.testing.assert_allclose(arm.setpoint(0.25)[0], start + 0.25 * (goal - start), atol=1e-12)
    np.testing.assert_allclose(arm.setpoint(0.5)[0], mid, atol=1e-12)
    np.testing.assert_allclose(arm.setpoint(0.75)[1], (goal - mid) / 0.5, atol=1e-12)
    np.testing.assert_allclose(arm.setpoint(5.0)[0], goal, atol=1e-12)
    arm.step_until(0.5)
    assert arm.sim_time == pytest.approx(0.5)
    np.testing.assert_allclose(arm.joint_state()[1][:7], mid[:7], atol=5e-3)  # tracking, not teleporting
    arm.step_until(2.0)
    _, position, velocity = arm.joint_state()
    np.testing.assert_allclose(position[:7], goal[:7], atol=2e-3)
    assert np.abs(velocity[:7]).max() < 1e-2
    assert position[7] == pytest.approx(goal[7], abs=2e-3)  # the gripper is a joint like the others


def test_new_command_replaces_the_active_one_without_a_jump(arm):
    arm.reset(seed=3)
    _, start, _ = arm.joint_state()
    far = start.copy()
    far[0] += 0.5
    arm.command_trajectory(PANDA_JOINTS, far[None], dt=1.0)
    arm.step_until(0.4)
    before, _ = arm.setpoint()
    back = start.copy()
    arm.command_trajectory(PANDA_JOINTS, back[None], dt=0.4)
    np.testing.assert_allclose(arm.setpoint()[0], before)  # continuous at the switch
    np.testing.assert_allclose(arm.setpoint(arm.sim_time + 0.2)[0], 0.5 * (before + back), atol=1e-12)
    np.testing.assert_allclose(arm.setpoint(arm.sim_time + 10)[0], back)


def test_future_start_holds_and_past_start_skips_due_points(arm):
    arm.reset(seed=3)
    _, start, _ = arm.joint_state()
    a, b = start.copy(), start.copy()
    a[1] += 0.1
    b[1] += 0.2
    arm.command_trajectory(PANDA_JOINTS, np.stack([a, b]), dt=0.1, start_time=0.3)
    np.testing.assert_allclose(arm.setpoint(0.29)[0], start)
    np.testing.assert_allclose(arm.setpoint(0.4)[0], a)
    arm.step_until(0.2)
    # Stamped 0.15 s ago: the point due at 0.15 is skipped; the one due at 0.25 is next.
    arm.command_trajectory(PANDA_JOINTS, np.stack([a, b]), time_from_start=[0.1, 0.2], start_time=0.05)
    np.testing.assert_allclose(arm.setpoint(0.25)[0], b)


def test_bad_commands_name_what_is_wrong(arm):
    arm.reset(seed=3)
    point = np.array(PANDA_HOME)[None]
    with pytest.raises(ValueError, match=r"unknown joints \['elbow'\]"):
        arm.command_trajectory([*PANDA_JOINTS[:7], 'elbow'], point, dt=0.1)
    with pytest.raises(ValueError, match=r"missing joints \['panda_finger_joint1'\]"):
        arm.command_trajectory(PANDA_JOINTS[:7], point[:, :7], dt=0.1)
    with pytest.raises(ValueError, match='points must be'):
        arm.command_trajectory(PANDA_JOINTS, np.zeros((1, 5)), dt=0.1)
    with pytest.raises(ValueError, match='NaN'):
        arm.command_trajectory(PANDA_JOINTS, np.full((1, 8), np.nan), dt=0.1)
    with pytest.raises(ValueError, match='dt must be > 0'):
        arm.command_trajectory(PANDA_JOINTS, point, dt=0.0)
    with pytest.raises(ValueError, match='time_from_start'):
        arm.command_trajectory(PANDA_JOINTS, np.vstack([point, point]), time_from_start=[0.2, 0.1])


def test_render_returns_rgb_frames_of_the_configured_size():
    with SimArm(SimConfig(task='reach_around', camera_width=64, camera_height=48, wrist_camera=True)) as sim:
        scene, wrist = sim.render('scene'), sim.render('wrist')
        assert scene.shape == (48, 64, 3) and scene.dtype == np.uint8
        assert wrist.shape == (48, 64, 3)
        assert scene.std() > 10  # a real picture, not a blank buffer
        with pytest.raises(ValueError, match="unknown camera 'top'"):
            sim.render('top')


def _run_with_observations(task: str, seed: int, seconds: float):
    with SimArm(SimConfig(task=task, seed=seed, episode_seconds=seconds)) as sim:
        expert = ScriptedExpert(sim)
        joints, images = [], []
        rollout(sim, expert.act, on_joint_state=lambda ns, names, q, v: joints.append(np.concatenate([q, v])),
                on_image=lambda ns, camera, rgb: images.append(rgb))
        return np.array(joints), np.array(images)


def test_same_seed_gives_identical_trajectories_and_images():
    joints_a, images_a = _run_with_observations('pick_place', 11, 2.5)
    joints_b, images_b = _run_with_observations('pick_place', 11, 2.5)
    assert len(joints_a) > 200 and len(images_a) > 20
    np.testing.assert_array_equal(joints_a, joints_b)
    np.testing.assert_array_equal(images_a, images_b)
    joints_c, _ = _run_with_observations('pick_place', 12, 2.5)
    assert not np.allclose(joints_a[-1], joints_c[-1])


def test_scene_objects_follow_the_seeded_obstacle():
    with SimArm(SimConfig(task='reach_around')) as sim:
        sim.reset(seed=5)
        objects = {o.name: o for o in sim.scene_objects()}
        assert set(objects) == {'table', 'obstacle'}
        obstacle = objects['obstacle']
        assert obstacle.shape == 'box' and obstacle.size == OBSTACLE_SIZE
        np.testing.assert_allclose(obstacle.pose[:3], sim.layout.obstacle_center)
        assert obstacle.to_dict()['pose'][3:] == [0.0, 0.0, 0.0, 1.0]
        np.testing.assert_allclose(obstacle.transform()[:3, 3], sim.layout.obstacle_center)
        # The table top is the plane z = 0 the robot base stands on.
        table = objects['table']
        assert table.pose[2] + table.size[2] / 2 == pytest.approx(0.0)


def test_pushing_the_arm_into_the_obstacle_is_reported_as_contact():
    with SimArm(SimConfig(task='reach_around', seed=2)) as sim:
        center = sim.layout.obstacle_center
        q = sim.ik.solve(sim.joint_state()[1][:7], np.array([center[0], center[1], 0.12]),
                         sim.tcp_pose()[1]).q
        sim.command_trajectory(PANDA_JOINTS, np.append(q, 0.04)[None], dt=1.0)
        sim.step_until(1.5)
        status = sim.task_status()
        assert status.info['obstacle_contact'] is True
        assert status.info['side'] is None
        assert not status.success and not status.done


def test_switching_task_on_reset_rebuilds_the_scene(arm):
    arm.reset(task='reach_around', seed=1)
    assert arm.task == 'reach_around'
    assert {o.name for o in arm.scene_objects()} == {'table', 'obstacle'}
    assert 'side' in arm.task_status().info
    arm.reset(task='pick_place', seed=3)
    assert {o.name for o in arm.scene_objects()} == {'table'}


def test_a_dynamic_task_moves_its_box_on_the_seeded_schedule_and_lists_it_in_the_scene():
    from diffusion_policy_ros.sim.tasks import sample_moving_obstacle
    mover = sample_moving_obstacle('pick_place_dynamic', 5)
    again = sample_moving_obstacle('pick_place_dynamic', 5)
    assert 0.05 <= mover.speed <= 0.3 and (mover.start_time, mover.speed) == (again.start_time, again.speed)
    assert sample_moving_obstacle('pick_place', 5) is None
    with SimArm(SimConfig(task='pick_place_dynamic', seed=5)) as arm:
        assert arm.moving_obstacle.start_time == mover.start_time
        layout = arm.layout  # the static layout is the base task's for the same seed
        with SimArm(SimConfig(task='pick_place', seed=5)) as static:
            np.testing.assert_allclose(static.layout.cube_position, layout.cube_position)
            assert [o.name for o in static.scene_objects()] == ['table'] and static.moving_obstacle is None
        for t in (0.2, mover.start_time + 1.0, mover.start_time + mover.travel_s + 1.0):
            arm.step_until(t)
            box = {o.name: o for o in arm.scene_objects()}['moving_obstacle']
            np.testing.assert_allclose(box.pose[:3], mover.position(arm.sim_time), atol=1e-9)
        assert box.pose[0] == pytest.approx(0.25)  # it stops in front of the base
        assert arm.task_status().info['moving_obstacle_contacts'] == 0  # the arm stayed out of its way
