"""The guard's decisions, backend selection and the params file."""
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diffusion_policy_ros.collision import moveit_backend
from diffusion_policy_ros.collision.checker import CollisionChecker
from diffusion_policy_ros.collision.config import CollisionGuardConfig
from diffusion_policy_ros.collision.guard import CollisionGuard, TrajectoryChunk
from diffusion_policy_ros.collision.moveit_backend import select_backend
from diffusion_policy_ros.collision.planner import FallbackPlanner, MotionLimits, PlanningFailed
from diffusion_policy_ros.collision.robot_model import RobotModel
from diffusion_policy_ros.collision.scene import Scene, SceneObject
from diffusion_policy_ros.robot_description import PANDA_HOME, PANDA_JOINTS, panda_description

ROOT = Path(__file__).resolve().parents[1]
HOME = np.array(PANDA_HOME)
MEASURED = dict(zip(PANDA_JOINTS, PANDA_HOME))
QUARTER_TURN = HOME + np.eye(8)[0] * 1.57
BOX = SceneObject('box', 'box', (0.1, 0.1, 0.3), (0.25, 0.25, 0.5))


@pytest.fixture(scope='module')
def panda():
    description = panda_description()
    return RobotModel.from_urdf(description.urdf_text(), description.srdf_text())


def make_guard(panda, objects=(BOX,), planner=None):
    checker = CollisionChecker(panda, Scene(objects), padding=0.01)
    if planner is None:
        planner = FallbackPlanner(checker, MotionLimits.from_model(panda), time_budget_s=1.0,
                                  control_period=0.1, seed=3)
    return CollisionGuard(checker, planner)


def chunk_towards(goal, start=HOME, points=16, names=PANDA_JOINTS):
    positions = np.linspace(start, goal, points + 1)[1:]
    columns = [PANDA_JOINTS.index(n) for n in names]
    return TrajectoryChunk(tuple(names), positions[:, columns], np.arange(1, points + 1) * 0.1)


def nan_at(point, joint):
    positions = np.tile(HOME, (2, 1))
    positions[point, joint] = np.nan
    return positions


def small_motion():
    goal = HOME.copy()
    goal[[0, 3]] += (-0.3, 0.2)  # away from the box
    return chunk_towards(goal)


def test_free_chunk_passes_unchanged(panda):
    guard = make_guard(panda)
    chunk = small_motion()
    decision = guard.review(MEASURED, chunk, now_s=0.0)
    assert decision.action == 'pass' and decision.trajectory is chunk
    assert decision.stats.checked_states > 16 and decision.stats.first_colliding_index is None
    assert guard.counters.chunks_passed == 1 and len(guard.counters.check_latency_s) == 1


def test_colliding_chunk_is_never_passed_and_fallback_runs_until_a_free_chunk_takes_over(panda):
    guard = make_guard(panda)
    blocked = chunk_towards(QUARTER_TURN)
    first = guard.review(MEASURED, blocked, now_s=10.0)
    assert first.action == 'replace' and guard.fallback_active
    plan = first.trajectory

    # Half a second later the policy proposes the same colliding motion from where the arm now is:
    # the running fallback continues, re-timed from now, instead of a new plan.
    k = 5
    measured = dict(zip(PANDA_JOINTS, plan.positions[k]))
    again = guard.review(measured, chunk_towards(QUARTER_TURN, start=plan.positions[k]), now_s=10.0 + 0.5)
    assert again.action == 'replace' and 'continues' in again.reason
    np.testing.assert_allclose(again.trajectory.positions, plan.positions[k + 1:])
    np.testing.assert_allclose(again.trajectory.time_from_start, plan.time_from_start[k + 1:] - 0.5)
    assert guard.counters.fallbacks_planned == 1

    # A free chunk takes over at once.
    free = chunk_towards(plan.positions[k] + np.eye(8)[6] * 0.1, start=plan.positions[k])
    taken = guard.review(measured, free, now_s=10.6)
    assert taken.action == 'pass' and taken.trajectory is free and 'takes over' in taken.reason
    assert not guard.fallback_active


def test_joint_limit_violating_chunk_is_not_passed(panda):
    guard = make_guard(panda, objects=())
    goal = HOME.copy()
    goal[3] = 0.3  # panda_joint4 above its upper limit (-0.0698)
    decision = guard.review(MEASURED, chunk_towards(goal), now_s=0.0)
    assert decision.action == 'replace'
    assert 'panda_joint4' in decision.reason and decision.stats.goal_kind == 'last_safe_point'
    assert (decision.trajectory.positions[:, 3] <= panda.limits.upper[3] + 1e-3).all()


def test_no_plan_within_the_budget_holds_position(panda):
    class NoPlan:
        def plan_fallback(self, start, waypoints, path_result, planned_joints=None):
            return PlanningFailed('no collision-free path found within 0.100 s', 0.1, 'policy_goal')

    guard = make_guard(panda, planner=NoPlan())
    decision = guard.review(MEASURED, chunk_towards(QUARTER_TURN), now_s=0.0)
    assert decision.action == 'hold' and 'no collision-free path' in decision.reason
    np.testing.assert_array_equal(decision.trajectory.positions, HOME[None])
    assert decision.trajectory.joint_names == PANDA_JOINTS
    assert guard.counters.planning_failures == 1 and guard.counters.holds == 1


def test_a_plan_past_its_deadline_is_replaced_by_a_hold_and_dropped_when_it_comes(panda):
    """check() asks for a plan; the node's deadline fires first (expire: hold at the measured position);
    the plan that finishes later is not sent."""
    guard = make_guard(panda)
    asked = guard.check(MEASURED, chunk_towards(QUARTER_TURN), now_s=0.0)
    assert asked.action == 'plan' and asked.trajectory is None
    held = guard.expire(asked.plan_request)
    assert held.action == 'hold' and 'planning budget' in held.reason
    np.testing.assert_array_equal(held.trajectory.positions, HOME[None])
    assert guard.plan(asked.plan_request) is None and guard.counters.plans_superseded == 1
    assert guard.expire(asked.plan_request) is None  # decided once


def test_a_free_chunk_checked_while_a_plan_runs_supersedes_it(panda):
    guard = make_guard(panda)
    asked = guard.check(MEASURED, chunk_towards(QUARTER_TURN), now_s=0.0)
    assert guard.check(MEASURED, small_motion(), now_s=0.1).action == 'pass'
    assert guard.plan(asked.plan_request) is None  # planned from an older state than what now runs
    assert not guard.fallback_active


def test_measured_state_in_collision_holds(panda):
    folded = dict(zip(PANDA_JOINTS, (0.0, 1.7, 0.0, -3.0, 0.0, 1.5, 0.785, 0.04)))
    decision = make_guard(panda).review(folded, small_motion(), now_s=0.0)
    assert decision.action == 'hold' and 'measured state' in decision.reason


@pytest.mark.parametrize('chunk, expected', [
    (TrajectoryChunk(('panda_joint1', 'elbow'), np.zeros((2, 2)), np.array([0.1, 0.2])), 'elbow'),
    (TrajectoryChunk(PANDA_JOINTS, np.zeros((0, 8)), np.zeros(0)), 'empty'),
    (TrajectoryChunk(PANDA_JOINTS, nan_at(point=1, joint=1), np.array([0.1, 0.2])),
     'point 1 has a non-finite position for panda_joint2'),
    (TrajectoryChunk(PANDA_JOINTS, np.tile(HOME, (3, 1)), np.array([0.1, 0.3, 0.3])), 'strictly increasing'),
    (TrajectoryChunk(PANDA_JOINTS, np.tile(HOME, (2, 1)), np.array([0.1])), 'time_from_start'),
    (TrajectoryChunk(PANDA_JOINTS, np.tile(HOME[:7], (2, 1)), np.array([0.1, 0.2])), '7 positions'),
    (TrajectoryChunk(('panda_joint1', 'panda_joint1'), np.zeros((1, 2)), np.array([0.1])), 'duplicate'),
    (TrajectoryChunk((), np.zeros((1, 0)), np.array([0.1])), 'no joints'),
])
def test_malformed_chunks_are_rejected_with_a_reason_and_the_arm_holds(panda, chunk, expected):
    guard = make_guard(panda)
    decision = guard.review(MEASURED, chunk, now_s=0.0)
    assert decision.action == 'reject' and expected in decision.reason
    assert guard.counters.chunks_rejected == 1 and guard.counters.chunks_passed == 0
    if decision.trajectory is not None:  # a hold at the measured position of the named joints
        assert len(decision.trajectory.positions) == 1
    # The guard keeps working after a bad chunk.
    assert guard.review(MEASURED, small_motion(), now_s=1.0).action == 'pass'


def test_incomplete_measured_state_is_rejected(panda):
    decision = make_guard(panda).review({'panda_joint1': 0.0}, small_motion(), now_s=0.0)
    assert decision.action == 'reject' and 'panda_joint2' in decision.reason


def test_auto_backend_falls_back_to_embedded_without_moveit(panda):
    config = CollisionGuardConfig(backend='auto', scene_objects=(BOX,))
    backend, message = select_backend('auto', panda, config, client_factory=lambda srv, name: None)
    assert backend.name == 'embedded' and isinstance(backend.checker, CollisionChecker)
    assert 'embedded' in message and 'moveit_msgs is not installed' in message
    assert not backend.checker.check_state(QUARTER_TURN - np.eye(8)[0] * 0.785).valid  # the box is there
    assert select_backend('embedded', panda, config)[0].name == 'embedded'
    with pytest.raises(RuntimeError, match='moveit_msgs'):
        select_backend('moveit', panda, config)
    with pytest.raises(ValueError, match="'ompl'"):
        select_backend('ompl', panda, config)


class _Msg(SimpleNamespace):
    """A stand-in for ROS messages: attributes with defaults, nested messages built on access."""


def _fake_moveit_msgs():
    def joint_state():
        return _Msg(name=[], position=[])

    def robot_state():
        return _Msg(joint_state=joint_state())

    class GetStateValidity:
        @staticmethod
        def Request():  # noqa: N802 (ROS naming)
            return _Msg(group_name='', robot_state=robot_state())

    class GetMotionPlan:
        @staticmethod
        def Request():  # noqa: N802
            return _Msg(motion_plan_request=_Msg(group_name='', planner_id='', allowed_planning_time=0.0,
                                                 num_planning_attempts=0, max_velocity_scaling_factor=0.0,
                                                 max_acceleration_scaling_factor=0.0,
                                                 start_state=robot_state(), goal_constraints=[]))

    msgs = types.ModuleType('moveit_msgs.msg')
    msgs.Constraints = lambda: _Msg(joint_constraints=[])
    msgs.JointConstraint = lambda: _Msg()
    srv = types.ModuleType('moveit_msgs.srv')
    srv.GetStateValidity, srv.GetMotionPlan = GetStateValidity, GetMotionPlan
    package = types.ModuleType('moveit_msgs')
    package.msg, package.srv = msgs, srv
    package.__spec__ = SimpleNamespace(name='moveit_msgs')
    return {'moveit_msgs': package, 'moveit_msgs.msg': msgs, 'moveit_msgs.srv': srv}


def test_moveit_backend_speaks_move_groups_services(panda, monkeypatch):
    """With moveit_msgs importable and move_group answering, auto picks MoveIt; requests and
    responses are converted both ways (a fake move_group here: MoveIt is on no reachable registry)."""
    for name, module in _fake_moveit_msgs().items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(moveit_backend, 'moveit_available', lambda: True)
    requests = []

    class FakeMoveGroup:
        def __init__(self, srv, name):
            self.name = name

        def ready(self, timeout_s):
            return True

        def call(self, request, timeout_s):
            requests.append((self.name, request))
            if self.name == '/check_state_validity':
                position = np.array(request.robot_state.joint_state.position)
                if position[0] > 0.5:
                    contact = _Msg(contact_body_1='panda_hand', contact_body_2='box')
                    return _Msg(valid=False, contacts=[contact])
                return _Msg(valid=True, contacts=[])
            goal = {c.joint_name: c.position for c in request.motion_plan_request.goal_constraints[0].joint_constraints}
            start = request.motion_plan_request.start_state.joint_state.position
            end = [goal.get(n, s) for n, s in zip(PANDA_JOINTS, start)]
            points = [_Msg(positions=list(p), time_from_start=_Msg(sec=int(t), nanosec=int((t % 1) * 1e9)))
                      for p, t in ((start, 0.0), (end, 0.25))]
            return _Msg(motion_plan_response=_Msg(error_code=_Msg(val=1), trajectory=_Msg(
                joint_trajectory=_Msg(joint_names=list(PANDA_JOINTS), points=points))))

    config = CollisionGuardConfig(backend='auto', control_period_s=0.1, moveit_group='panda_arm')
    backend, message = select_backend('auto', panda, config, client_factory=FakeMoveGroup)
    assert backend.name == 'moveit' and 'moveit' in message

    far = HOME + np.eye(8)[0] * 1.0
    result = backend.checker.check_path(HOME, np.linspace(HOME, far, 5)[1:], max_joint_step=0.1)
    assert not result.valid and result.colliding_pair == ('panda_hand', 'box')
    assert result.last_safe_point[0] <= 0.5 and result.first_colliding_index == 2
    name, request = requests[0]
    assert name == '/check_state_validity' and request.group_name == 'panda_arm'
    assert request.robot_state.joint_state.name == list(PANDA_JOINTS)

    plan = backend.planner.plan_fallback(HOME, np.linspace(HOME, far, 5)[1:], result)
    assert plan.goal_kind == 'last_safe_point'
    np.testing.assert_allclose(plan.times, [0.0, 0.1, 0.2, 0.3])
    np.testing.assert_allclose(plan.points[-1], result.last_safe_point)
    plan_request = requests[-1][1].motion_plan_request
    assert plan_request.group_name == 'panda_arm' and len(plan_request.goal_constraints[0].joint_constraints) == 8


def test_params_file_loads_into_the_config_dataclass(panda):
    config = CollisionGuardConfig.from_params_file(ROOT / 'config' / 'collision_guard.yaml')
    assert config.backend == 'auto' and config.max_joint_step == 0.02 and config.padding > 0
    assert config.planning_time_budget_s > 0 and len(config.acceleration_limits) >= 1
    assert [o.name for o in config.scene_objects] == ['table'] and config.scene_objects[0].padding == 0.0
    assert CollisionChecker(panda, config.scene(), config.padding).check_state(HOME).valid
    assert CollisionGuardConfig.from_ros_parameters(config.ros_parameters()) == config
    params = config.ros_parameters()
    with pytest.raises(ValueError, match='max_joint_stp'):
        CollisionGuardConfig.from_ros_parameters({**params, 'max_joint_stp': 0.01})
    with pytest.raises(ValueError, match='scene.chair.shape'):
        CollisionGuardConfig.from_ros_parameters({**params, 'scene.chair.shape': 'box'})
    with pytest.raises(ValueError, match='backend'):
        CollisionGuardConfig(backend='fast')
    empty = CollisionGuardConfig().ros_parameters()
    assert empty['scene.object_names'] == [''] and CollisionGuardConfig.from_ros_parameters(empty).scene_objects == ()


def test_arm_measured_in_contact_may_leave_but_not_go_deeper(panda):
    """Starting inside the padding of a box: a chunk moving away from it passes (holding would keep the
    arm stuck in contact), a chunk moving into the box is held."""
    guard = make_guard(panda)
    checker = guard.checker
    # Walk joint 1 towards the box until the state just becomes invalid: the arm is "in contact".
    contact = None
    for angle in np.linspace(0.0, 1.57, 400):
        q = HOME + np.eye(8)[0] * angle
        if not checker.check_state(q).valid:
            contact = q
            break
    assert contact is not None
    measured = dict(zip(PANDA_JOINTS, contact))
    away = guard.review(measured, chunk_towards(HOME, start=contact, points=8), now_s=0.0)
    assert away.action == 'pass' and 'leaves it' in away.reason
    deeper = guard.review(measured, chunk_towards(contact + np.eye(8)[0] * 0.3, start=contact, points=8),
                          now_s=0.1)
    assert deeper.action == 'hold' and 'measured state is invalid' in deeper.reason


names_strategy = st.lists(st.sampled_from([*PANDA_JOINTS, 'elbow', '']), min_size=0, max_size=9)
value = st.floats(allow_nan=True, allow_infinity=True) | st.floats(-4, 4)


@settings(max_examples=60, deadline=None)
@given(names=names_strategy, rows=st.integers(0, 5), data=st.data(),
       measured=st.dictionaries(st.sampled_from([*PANDA_JOINTS, 'elbow']), value, max_size=9))
def test_any_chunk_and_measurement_get_a_decision_never_an_exception(panda, names, rows, data, measured):
    """Arbitrary names (unknown, repeated, none), shapes, values (NaN, inf, huge), times and measured
    states: check() returns a decision; what it passes is finite and within the joint limits."""
    guard = make_guard(panda)
    positions = np.array([[data.draw(value) for _ in names] for _ in range(rows)]).reshape(rows, len(names))
    times = np.array([data.draw(st.floats(-1, 2) | st.just(float('nan'))) for _ in range(rows)])
    decision = guard.check(measured, TrajectoryChunk(tuple(names), positions, times), now_s=0.0)
    assert decision.action in ('pass', 'replace', 'hold', 'reject', 'plan')
    if decision.action == 'pass':
        q = np.asarray(decision.trajectory.positions, dtype=float)
        lower = panda.limits.lower[[PANDA_JOINTS.index(n) for n in names]]
        upper = panda.limits.upper[[PANDA_JOINTS.index(n) for n in names]]
        assert np.isfinite(q).all() and (q >= lower - 1e-3).all() and (q <= upper + 1e-3).all()


def test_a_plan_is_rechecked_against_the_arm_and_the_scene_of_the_moment_it_is_sent(panda):
    """The scene changes while the plan is computed: confirm() turns the now blocked plan into a hold at
    the measured position; a plan still free is sent as it is."""
    guard = make_guard(panda)
    asked = guard.check(MEASURED, chunk_towards(QUARTER_TURN), now_s=0.0)
    planned = guard.plan(asked.plan_request)
    assert planned.action == 'replace'
    assert guard.confirm(MEASURED, planned) is planned
    middle = planned.trajectory.positions[len(planned.trajectory.positions) // 2]
    hand = hand_position(panda, middle)
    guard.checker.scene.set_objects([BOX, SceneObject('arrived', 'sphere', (0.05,), tuple(hand))])
    held = guard.confirm(MEASURED, planned)
    assert held.action == 'hold' and 'moved while planning' in held.reason
    np.testing.assert_array_equal(held.trajectory.positions, HOME[None])


def hand_position(model, q):
    import pinocchio as pin
    data = model.model.createData()
    pin.framesForwardKinematics(model.model, data, np.asarray(q, dtype=float))
    return data.oMf[model.model.getFrameId('panda_hand')].translation.copy()


def test_a_hold_at_a_measurement_just_outside_a_limit_commands_the_limit(panda):
    """Found by the 30-minute soak: the sim's gripper read -0.0024 m (lower limit 0), within the
    measurement tolerance, and the guard's hold sent that reading on as a command outside the limits."""
    measured = dict(MEASURED, panda_finger_joint1=-0.0024, panda_joint4=panda.limits.upper[3] + 0.003)
    guard = make_guard(panda)
    duplicated = TrajectoryChunk(('panda_joint1', 'panda_joint1'), np.zeros((1, 2)), np.array([0.1]))
    decision = guard.review(measured, duplicated, now_s=0.0)
    assert decision.action == 'reject' and decision.trajectory is not None
    hold = decision.trajectory
    columns = [PANDA_JOINTS.index(n) for n in hold.joint_names]
    assert np.all(hold.positions >= panda.limits.lower[columns]) and np.all(hold.positions <= panda.limits.upper[columns])
    assert hold.positions[0, hold.joint_names.index('panda_finger_joint1')] == 0.0
    assert hold.positions[0, hold.joint_names.index('panda_joint4')] == pytest.approx(panda.limits.upper[3])


def test_what_the_guard_sends_is_clipped_into_the_exact_limits(panda):
    """Found by the 30-minute soak: 5 of about 18,000 commands went out up to 0.0009 m past the gripper's
    0.04 m limit, plans and chunks from a reading of 0.0409 m (inside the measurement tolerance).
    Every trajectory the node publishes goes through `within_limits` first."""
    guard = make_guard(panda)
    finger = PANDA_JOINTS.index('panda_finger_joint1')
    chunk = chunk_towards(HOME + np.eye(8)[0] * 0.2)
    assert guard.within_limits(chunk) is chunk  # inside: the very same chunk (a pass stays unchanged)
    over = chunk_towards(HOME + np.eye(8)[0] * 0.2)
    over.positions[:, finger] = panda.limits.upper[finger] + 0.0009
    over.positions[0, 3] = panda.limits.lower[3] - 0.0005
    clipped = guard.within_limits(over)
    assert np.all(clipped.positions <= panda.limits.upper) and np.all(clipped.positions >= panda.limits.lower)
    np.testing.assert_array_equal(clipped.positions[:, finger], panda.limits.upper[finger])
    np.testing.assert_array_equal(clipped.positions[1:, :3], over.positions[1:, :3])  # nothing else moves
    np.testing.assert_array_equal(clipped.time_from_start, over.time_from_start)


def test_an_obstacle_arriving_on_the_executing_trajectory_cuts_it_before_the_contact(panda):
    """Issue 15: the scene changes while the arm executes a checked chunk and no new chunk comes.
    recheck() cuts the rest of the chunk at its last safe waypoint at once and asks for a fallback;
    while the rest is free, or once the chunk has ended, it does nothing."""
    guard = make_guard(panda, objects=())
    chunk = chunk_towards(HOME + np.eye(8)[0] * 1.2)
    assert guard.check(MEASURED, chunk, now_s=0.0).action == 'pass'
    guard.record_sent(chunk, started_s=0.0)
    now = 0.35  # the arm is between points 3 and 4 of 16
    measured = dict(zip(PANDA_JOINTS, chunk.positions[2]))
    assert guard.recheck(measured, now) is None  # nothing changed: the rest is free

    hand = hand_position(panda, chunk.positions[13])
    guard.checker.scene.set_objects([SceneObject('arrived', 'sphere', (0.04,), tuple(hand))])
    decision = guard.recheck(measured, now)
    assert decision is not None and decision.action == 'replace', decision
    assert 'scene changed' in decision.reason and guard.counters.executing_blocked == 1
    cut = decision.trajectory
    ahead = chunk.time_from_start > now
    kept = len(cut.positions)
    assert 1 <= kept < ahead.sum()  # stops short of the sphere, keeps the safe part
    np.testing.assert_array_equal(cut.positions, chunk.positions[ahead][:kept])
    np.testing.assert_allclose(cut.time_from_start, chunk.time_from_start[ahead][:kept] - now)
    start = np.array(chunk.positions[2])
    assert guard.checker.check_path(start, cut.positions, guard.max_joint_step).valid
    assert not guard.checker.check_path(start, chunk.positions[ahead], guard.max_joint_step).valid

    planned = guard.plan(decision.plan_request)  # the fallback is not superseded by the cut itself
    assert planned is not None and planned.action in ('replace', 'hold'), planned
    if planned.action == 'replace':
        assert guard.checker.check_path(start, planned.trajectory.positions, guard.max_joint_step).valid
    assert guard.recheck(measured, now_s=5.0) is None  # the executing chunk has ended


def test_an_obstacle_arriving_while_the_joint_state_is_stale_holds_where_the_trajectory_has_taken_the_arm(panda):
    """A scene change while the measurement cannot be trusted (stale joint states) used to be ignored: the
    arm went on into the new object. Now the rest is checked from where the trajectory commands the arm
    at this time, and it holds there (not at the old measurement, which would move it back)."""
    guard = make_guard(panda, objects=())
    chunk = chunk_towards(HOME + np.eye(8)[0] * 1.2)
    guard.record_sent(chunk, started_s=0.0)
    stale = dict(zip(PANDA_JOINTS, chunk.positions[0]))  # measured before the arm started
    why = 'joint state of panda_joint1 on /joint_states is 0.90 s old by its arrival'
    now = 0.35
    assert guard.recheck(stale, now, untrusted=why) is None  # the rest is free: nothing to do
    hand = hand_position(panda, chunk.positions[13])
    guard.checker.scene.set_objects([SceneObject('arrived', 'sphere', (0.04,), tuple(hand))])
    decision = guard.recheck(stale, now, untrusted=why)
    assert decision is not None and decision.action == 'hold' and decision.plan_request is None, decision
    assert why in decision.reason and guard.counters.executing_blocked == 1
    times = chunk.time_from_start
    commanded = [np.interp(now, times, chunk.positions[:, j]) for j in range(chunk.positions.shape[1])]
    np.testing.assert_allclose(decision.trajectory.positions[0], commanded)
    assert not np.allclose(decision.trajectory.positions[0], chunk.positions[0])


def test_an_obstacle_on_the_very_next_step_of_the_executing_trajectory_holds(panda):
    guard = make_guard(panda, objects=())
    chunk = chunk_towards(HOME + np.eye(8)[0] * 1.2)
    guard.record_sent(chunk, started_s=0.0)
    measured = dict(zip(PANDA_JOINTS, chunk.positions[2]))
    hand = hand_position(panda, chunk.positions[3])
    guard.checker.scene.set_objects([SceneObject('arrived', 'sphere', (0.03,), tuple(hand))])
    decision = guard.recheck(measured, now_s=0.3)
    assert decision.action in ('replace', 'hold') and len(decision.trajectory.positions) == 1
    np.testing.assert_allclose(decision.trajectory.positions[0], chunk.positions[2])
