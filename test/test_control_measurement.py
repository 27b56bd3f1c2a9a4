"""Which measurements the nodes trust, and that whatever arrives, a tick commands a point within the
limits or holds (issue 12's unsafe cases each have a case here)."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diffusion_policy_ros.control.chunks import ExecutorConfig
from diffusion_policy_ros.control.controller import ControllerConfig, PolicyController
from diffusion_policy_ros.control.health import HealthState, HoldCode, HoldReason
from diffusion_policy_ros.control.limits import JointLimits
from diffusion_policy_ros.control.measurement import LatestJointPositions, MeasurementRules, check_joint_state

JOINTS = ('j1', 'j2')
LIMITS = JointLimits(JOINTS, lower=[-1.0, -2.0], upper=[1.0, 2.0], max_velocity=[0.5, 0.5])
RULES = MeasurementRules(limit_tolerance=0.05, future_tolerance_s=0.2)


def check(names, positions, stamp=10.0, now=10.0, require_all=True):
    return check_joint_state(names, positions, stamp, now, LIMITS, '/js', RULES, require_all=require_all)


def test_a_good_joint_state_comes_back_in_the_limits_order_with_extra_joints_dropped():
    names, positions = check(['gripper', 'j2', 'j1'], [0.3, 0.5, -0.5])
    assert names == JOINTS
    np.testing.assert_array_equal(positions, [-0.5, 0.5])


@pytest.mark.parametrize('names,positions,stamp,code,words', [
    (['j1', 'j2'], [50.0, 0.0], 10.0, HoldCode.OUT_OF_LIMITS, ["'j1'", '50.0000', '[-1.0000, 1.0000]']),
    (['j1', 'j2', 'j1'], [0.0, 0.0, 1.0], 10.0, HoldCode.DUPLICATE_JOINT, ["'j1'", '0.0000', '1.0000']),
    (['j1', 'j2'], [0.0, math.nan], 10.0, HoldCode.NON_FINITE, ["'j2'", 'nan']),
    (['j1', 'j2'], [math.inf, 0.0], 10.0, HoldCode.NON_FINITE, ["'j1'", 'inf']),
    (['j1'], [0.0], 10.0, HoldCode.MISSING_JOINT, ["'j2'"]),
    ([], [], 10.0, HoldCode.MISSING_JOINT, ["'j1'", "'j2'"]),
    (['j1', 'j2'], [0.0], 10.0, HoldCode.MALFORMED, ['2 joint names but 1 positions']),
    (['j1', 'j2'], [0.0, 0.0], 11.0, HoldCode.FUTURE_STAMP, ['1.000 s in the future']),
])
def test_an_untrusted_joint_state_is_rejected_naming_what_is_wrong(names, positions, stamp, code, words):
    reason = check(names, positions, stamp=stamp)
    assert isinstance(reason, HoldReason) and reason.code is code, reason
    assert '/js' in reason.text and all(w in reason.text for w in words), reason.text


def test_within_the_tolerance_is_trusted_beyond_it_is_not():
    assert not isinstance(check(['j1', 'j2'], [1.04, 0.0]), HoldReason)
    assert check(['j1', 'j2'], [1.06, 0.0]).code is HoldCode.OUT_OF_LIMITS
    assert not isinstance(check(['j1', 'j2'], [0.0, 0.0], stamp=10.19), HoldReason)


def test_the_guard_takes_a_subset_but_never_a_bad_value():
    names, positions = check(['j2'], [0.2], require_all=False)
    assert names == ('j2',) and positions.tolist() == [0.2]
    assert check(['j2'], [9.0], require_all=False).code is HoldCode.OUT_OF_LIMITS


class StillPolicy:
    """Wherever it is asked from, it asks for +0.9 rad on every joint (far, fast: the clamp must act)."""

    def predict_action_chunk(self, obs):
        return np.tile(obs['state'][-1] + 0.9, (16, 1))


def make_controller(now):
    cfg = ControllerConfig(n_obs_steps=2, max_obs_age_s=0.5, measurement=RULES,
                           executor=ExecutorConfig(control_period=0.1, n_action_steps=8))
    return PolicyController(StillPolicy().predict_action_chunk, [], LIMITS, cfg, clock=lambda: now[0])


def run(controller, now, ticks, state=None):
    results = []
    for _ in range(ticks):
        now[0] = round(now[0] + 0.1, 6)
        if state is not None:
            controller.push_joint_state(now[0], JOINTS, state, now[0])
        result = controller.tick(now[0])
        if result.wants_chunk:
            controller.worker._step()  # the worker's step, inline: deterministic
        results.append(result)
    return results


def test_the_guards_joint_positions_keep_each_joints_last_trusted_value_and_say_when_it_is_too_old():
    joints = LatestJointPositions(LIMITS, RULES, '/js', max_age_s=0.5)
    second = 1_000_000_000
    assert joints.latest(10 * second, 10.0) == ({}, "no joint state for ['j1', 'j2'] on /js yet")
    assert joints.update(['j1'], [0.2], 10.0, 10 * second, 10.0) is None  # one publisher per joint is fine
    assert 'j2' in joints.latest(10 * second, 10.0)[1]
    assert joints.update(['j2'], [0.3], 0.0, 10 * second, 10.0) is None  # unstamped: judged by arrival
    assert joints.latest(10 * second, 10.2) == ({'j1': 0.2, 'j2': 0.3}, None)
    bad = joints.update(['j1'], [float('nan')], 10.1, 10 * second, 10.1)
    assert bad.code is HoldCode.NON_FINITE and joints.rejected == 1 and 'j1' in joints.last_problem
    assert joints.latest(10 * second, 10.2)[0]['j1'] == 0.2  # the bad value was never stored
    positions, problem = joints.latest(int(10.7 * second), 10.2)
    assert positions == {'j1': 0.2, 'j2': 0.3} and 'old by its arrival' in problem
    joints.update(['j2'], [0.3], 0.0, int(10.7 * second), 10.6)
    joints.update(['j1'], [0.2], 10.0, int(10.7 * second), 10.6)  # arrives now, stamped 0.6 s ago
    problem = joints.latest(int(10.7 * second), 10.6)[1]
    assert 'j1' in problem and 'old by its stamp' in problem


@pytest.mark.parametrize('bad', [
    dict(names=JOINTS, positions=[50.0, 0.0]),  # far outside the limits
    dict(names=('j1', 'j2', 'j1'), positions=[0.0, 0.0, 1.0]),  # a duplicate, the second value off
    dict(names=JOINTS, positions=[math.nan, 0.0]),
    dict(names=JOINTS, positions=[math.inf, 0.0]),
    dict(names=(), positions=[]),
    dict(names=('j1',), positions=[0.0]),  # a missing joint
])
def test_a_bad_joint_state_holds_at_the_last_trusted_position_from_the_first_tick(bad):
    now = [10.0]
    controller = make_controller(now)
    good = np.array([0.2, -0.3])
    assert run(controller, now, 5, good)[-1].state is HealthState.RUNNING
    now[0] = round(now[0] + 0.1, 6)
    controller.push_joint_state(now[0], bad['names'], bad['positions'], now[0])
    held = controller.tick(now[0])
    assert held.state is HealthState.HOLD and held.points.shape == (1, 2)
    np.testing.assert_allclose(held.points[0], good)  # never the bad value, never the old chunk
    assert controller.rejected and controller.status(now[0]).rejected[held.reason.code.name] == 1
    # the fault clears with the next good message: running again within one inference plus one period
    assert run(controller, now, 2, good)[-1].state is HealthState.RUNNING


def test_a_hold_with_no_trusted_measurement_this_recent_publishes_nothing_and_says_why():
    now = [10.0]
    controller = make_controller(now)
    run(controller, now, 5, np.array([0.2, -0.3]))
    results = run(controller, now, 7)  # the joint states stop
    assert results[-1].state is HealthState.HOLD and results[-1].points is None
    assert results[-1].reason.code is HoldCode.STALE_OBSERVATION


def test_a_frame_stamped_in_the_future_is_not_stored_and_cannot_hold_the_node_for_long():
    now = [10.0]
    cfg = ControllerConfig(n_obs_steps=2, max_obs_age_s=0.5, measurement=RULES,
                           executor=ExecutorConfig(control_period=0.1))
    controller = PolicyController(lambda obs: np.tile(obs['state'][-1], (16, 1)), ['cam'], LIMITS, cfg,
                                  clock=lambda: now[0])
    frame = np.zeros((4, 4, 3), np.uint8)
    for _ in range(5):
        now[0] = round(now[0] + 0.1, 6)
        controller.push_joint_state(now[0], JOINTS, [0.0, 0.0], now[0])
        controller.push_frame('cam', now[0], frame, now[0])
    reason = controller.push_frame('cam', now[0] + 1000.0, frame, now[0])
    assert reason.code is HoldCode.FUTURE_STAMP and 'in the future' in reason.text
    assert controller.history.latest_stamps()['cam'] == pytest.approx(now[0])  # not stored
    assert controller.tick(now[0]).reason.code is HoldCode.FUTURE_STAMP
    now[0] = round(now[0] + 0.1, 6)
    controller.push_joint_state(now[0], JOINTS, [0.0, 0.0], now[0])
    controller.push_frame('cam', now[0], frame, now[0])
    after = controller.tick(now[0])
    assert after.reason is None or after.reason.code is not HoldCode.FUTURE_STAMP


names_strategy = st.lists(st.sampled_from(['j1', 'j2', 'j3', '']), max_size=4)
values_strategy = st.floats(allow_nan=True, allow_infinity=True, width=64) | st.floats(-3, 3)
event_strategy = st.tuples(names_strategy, st.lists(values_strategy, max_size=4),
                           st.floats(-2.0, 2.0) | st.just(math.nan) | st.just(1e9))


@settings(max_examples=150, deadline=None)
@given(events=st.lists(event_strategy, min_size=1, max_size=30))
def test_whatever_joint_states_arrive_a_tick_commands_within_the_limits_or_holds(events):
    """Arbitrary names (duplicates, unknown, missing), lengths, values (NaN, inf, huge) and stamps (past,
    future, NaN): no tick raises, and every point a tick returns lies within the position limits, each
    step within the velocity limit from the last trusted measurement (the clamp's start)."""
    now = [10.0]
    controller = make_controller(now)
    trusted = None
    for names, values, offset in events:
        now[0] = round(now[0] + 0.1, 6)
        reason = controller.push_joint_state(now[0] + offset, names, values, now[0])
        if reason is None:
            trusted = np.clip(controller.history.latest_joint_positions(), LIMITS.lower, LIMITS.upper)
        result = controller.tick(now[0])
        if result.wants_chunk:
            controller.worker._step()
        if result.points is None:
            continue
        assert trusted is not None, 'a command without any trusted measurement'
        points = np.asarray(result.points)
        assert np.all(points >= LIMITS.lower) and np.all(points <= LIMITS.upper)
        steps = np.abs(np.diff(np.vstack([trusted, points]), axis=0))
        assert np.all(steps <= LIMITS.max_velocity * 0.1 + 1e-9)
