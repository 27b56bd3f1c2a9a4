"""Evasion (collision/evasion.py): an arm standing where a moving box is going is moved out of its way in
time, checked here against the box where it really is at each moment, not against the guard's own rule."""
from types import SimpleNamespace

import numpy as np
import pinocchio as pin
import pytest

from diffusion_policy_ros.collision.checker import CollisionChecker
from diffusion_policy_ros.collision.config import CollisionGuardConfig
from diffusion_policy_ros.collision.evasion import Evader, evasion_frame
from diffusion_policy_ros.collision.guard import CollisionGuard, TrajectoryChunk
from diffusion_policy_ros.collision.planner import FallbackPlanner, MotionLimits
from diffusion_policy_ros.collision.robot_model import RobotModel
from diffusion_policy_ros.collision.scene import Scene, SceneObject
from diffusion_policy_ros.collision.scene_overlay import CUBE, MarkerScene
from diffusion_policy_ros.robot_description import PANDA_HOME, PANDA_JOINTS, panda_description

TABLE = SceneObject('table', 'box', (1.3, 1.2, 0.05), (0.35, 0.0, -0.025), padding=0.0)
BOX_SIZE = (0.08, 0.08, 0.20)  # the sim's moving box, standing on the table
SPEED = 0.2  # m/s along -x
HAND = np.array([0.45, 0.0, 0.12])  # where the arm stands: on the box's line, below its top


@pytest.fixture(scope='module')
def panda():
    description = panda_description()
    return RobotModel.from_urdf(description.urdf_text(), description.srdf_text())


@pytest.fixture(scope='module')
def standing(panda):
    """A configuration with the hand at HAND (damped least squares from home, arm joints only)."""
    data = panda.model.createData()
    frame = panda.model.getFrameId('panda_hand')
    q = np.array(PANDA_HOME, dtype=float)
    for _ in range(200):
        pin.framesForwardKinematics(panda.model, data, q)
        error = HAND - data.oMf[frame].translation
        jacobian = pin.computeFrameJacobian(panda.model, data, q, frame, pin.ReferenceFrame.LOCAL_WORLD_ALIGNED)[:3, :7]
        q[:7] += jacobian.T @ np.linalg.solve(jacobian @ jacobian.T + 1e-4 * np.eye(3), error)
    pin.framesForwardKinematics(panda.model, data, q)
    assert np.linalg.norm(data.oMf[frame].translation - HAND) < 1e-3
    return q


def box_marker(x: float, t: float) -> SimpleNamespace:
    """The box as the sim publishes it (the Marker fields MarkerScene reads), centre at x, seen at t."""
    sec = int(t)
    return SimpleNamespace(
        ns='perception', id=0, action=0, type=CUBE, text='box',
        header=SimpleNamespace(frame_id='panda_link0', stamp=SimpleNamespace(sec=sec, nanosec=int(round((t - sec) * 1e9)))),
        scale=SimpleNamespace(x=BOX_SIZE[0], y=BOX_SIZE[1], z=BOX_SIZE[2]),
        pose=SimpleNamespace(position=SimpleNamespace(x=x, y=HAND[1], z=BOX_SIZE[2] / 2),
                             orientation=SimpleNamespace(x=0.0, y=0.0, z=0.0, w=1.0)))


def make_guard(panda, evade: bool = True):
    scene = Scene()
    markers = MarkerScene(scene, [TABLE], ['panda_link0'], lookahead_s=1.0)
    checker = CollisionChecker(panda, scene, padding=0.01)
    planner = FallbackPlanner(CollisionChecker(panda, scene, padding=0.01), MotionLimits.from_model(panda),
                              time_budget_s=1.0, control_period=0.1, seed=3)
    config = CollisionGuardConfig(evasion_max_duration_s=1.0 if evade else 0.0)
    guard = CollisionGuard(checker, planner, evader=Evader.from_config(panda, markers, config))
    return guard, markers


def box_comes(markers, x_at_zero: float, until: float) -> float:
    """Two sightings, 0.1 s apart, of the box coming along -x at SPEED; returns the time of the last."""
    for t in (until - 0.1, until):
        markers.apply([box_marker(x_at_zero - SPEED * t, t)])
    return until


def hits(panda, q: np.ndarray, x: float) -> bool:
    """Whether the arm at q touches the box (its true size, no padding) with its centre at x."""
    box = SceneObject('box', 'box', BOX_SIZE, (x, HAND[1], BOX_SIZE[2] / 2), padding=0.0)
    return not CollisionChecker(panda, Scene([box])).check_state(q).valid


def arm_at(start: np.ndarray, chunk: TrajectoryChunk, t: float) -> np.ndarray:
    """Where the arm is t s after the chunk was sent (linear between its points, then at its end)."""
    times = np.concatenate([[0.0], chunk.time_from_start])
    points = np.vstack([start, np.asarray(chunk.positions)])
    return np.array([np.interp(t, times, points[:, j]) for j in range(points.shape[1])])


def test_an_arm_standing_in_a_moving_boxs_way_moves_out_of_it_before_the_box_arrives(panda, standing):
    # The box's front face starts 0.25 m in front of the hand: standing still, the arm is hit within a second.
    x_at_zero = HAND[0] + 0.25 + BOX_SIZE[0] / 2
    times = np.arange(0.0, 3.0, 0.02)
    assert any(hits(panda, standing, x_at_zero - SPEED * t) for t in times), 'the scenario is no threat'

    for evade in (False, True):
        guard, markers = make_guard(panda, evade)
        measured = dict(zip(PANDA_JOINTS, standing))
        guard.record_sent(TrajectoryChunk(PANDA_JOINTS, standing[None], np.array([0.1])), started_s=0.0)
        now = box_comes(markers, x_at_zero, until=0.2)
        decision = guard.recheck(measured, now)
        if not evade:
            assert decision is None  # at rest, the old guard had nothing to cut: it let the box come
            continue
        assert decision is not None and decision.action == 'replace', decision
        assert 'evading box' in decision.reason and guard.counters.evasions == 1
        evasion = decision.trajectory
        assert evasion.joint_names == PANDA_JOINTS
        assert evasion.time_from_start[-1] <= 1.0 + 1e-9
        # Independent of the guard's rule: at every moment until a look-ahead after the evasion ends,
        # the arm where it is then is clear of the box where it is then.
        for t in np.arange(0.0, evasion.time_from_start[-1] + 1.0, 0.01):
            assert not hits(panda, arm_at(standing, evasion, t), x_at_zero - SPEED * (now + t)), t
        # Within the limits, and free of the table along the way.
        assert np.all(evasion.positions >= panda.limits.lower) and np.all(evasion.positions <= panda.limits.upper)
        assert CollisionChecker(panda, Scene([TABLE])).check_path(standing, evasion.positions).valid

        # The next scene update: the running evasion goes on (sent again from the measured state), no new one.
        halfway = arm_at(standing, evasion, 0.1)
        box_comes(markers, x_at_zero, until=now + 0.1)
        again = guard.recheck(dict(zip(PANDA_JOINTS, halfway)), now + 0.1)
        if again is not None:  # None: out of the way already (the rest of the evasion is free anyway)
            assert again.action == 'replace' and guard.counters.evasions == 1
            np.testing.assert_allclose(again.trajectory.positions, evasion.positions[evasion.time_from_start > 0.1])


def test_a_chunk_that_keeps_the_arm_in_the_way_is_replaced_by_an_evasion_not_a_hold(panda, standing):
    guard, markers = make_guard(panda)
    now = box_comes(markers, HAND[0] + 0.29, until=0.2)
    stay = TrajectoryChunk(PANDA_JOINTS, np.tile(standing, (8, 1)), 0.1 * np.arange(1, 9))
    decision = guard.check(dict(zip(PANDA_JOINTS, standing)), stay, now_s=now)
    assert decision.action == 'replace' and 'evading box' in decision.reason, decision
    assert guard.counters.holds == 0 and guard.counters.evasions == 1


def test_a_box_already_at_the_arm_leaves_no_clear_evasion_and_the_arm_holds(panda, standing):
    guard, markers = make_guard(panda)
    guard.record_sent(TrajectoryChunk(PANDA_JOINTS, standing[None], np.array([0.1])), started_s=0.0)
    now = box_comes(markers, HAND[0] + 0.04 + SPEED * 0.2, until=0.2)  # its front face already at the hand
    decision = guard.recheck(dict(zip(PANDA_JOINTS, standing)), now)
    assert decision.action == 'hold' and 'no evasion is clear' in decision.reason, decision
    np.testing.assert_allclose(decision.trajectory.positions[0], standing)


def test_a_static_scene_never_evades(panda, standing):
    """Evasion is for objects seen moving: a box that stands still is the planner's business."""
    guard, markers = make_guard(panda)
    for t in (0.1, 0.2):
        markers.apply([box_marker(HAND[0] + 0.05, t)])
    guard.record_sent(TrajectoryChunk(PANDA_JOINTS, standing[None], np.array([0.1])), started_s=0.0)
    decision = guard.recheck(dict(zip(PANDA_JOINTS, standing)), 0.2)
    assert decision.action == 'hold' and guard.counters.evasions == 0


def test_the_evaded_link_defaults_to_the_wrist_and_can_be_named(panda):
    assert panda.model.frames[evasion_frame(panda)].parentJoint == panda.model.getJointId('panda_joint7')
    assert evasion_frame(panda, 'panda_hand') == panda.model.getFrameId('panda_hand')
    with pytest.raises(ValueError, match='not a link'):
        evasion_frame(panda, 'nose')
