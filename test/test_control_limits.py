"""Joint limits from params and URDF, and the clamp every published trajectory goes through."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from diffusion_policy_ros.control.limits import JointLimits, clamp_trajectory

URDF = """<robot name="toy">
  <link name="base"/><link name="a"/><link name="b"/><link name="c"/><link name="d"/>
  <joint name="shoulder" type="revolute"><parent link="base"/><child link="a"/>
    <limit effort="10" lower="-1.5" upper="2.0" velocity="1.0"/></joint>
  <joint name="mount" type="fixed"><parent link="a"/><child link="b"/></joint>
  <joint name="wrist" type="continuous"><parent link="b"/><child link="c"/>
    <limit effort="5" velocity="3.0"/></joint>
  <joint name="slide" type="prismatic"><parent link="c"/><child link="d"/>
    <limit effort="5" lower="0.0" upper="0.04" velocity="0.2"/></joint>
</robot>"""

LIMITS = JointLimits(('j0', 'j1'), lower=[-1.0, 0.0], upper=[1.0, 0.5], max_velocity=[1.0, 0.5])


def test_urdf_limits_are_parsed_in_the_requested_order():
    limits = JointLimits.from_urdf(URDF, ['slide', 'shoulder', 'wrist'])
    assert limits.names == ('slide', 'shoulder', 'wrist')
    np.testing.assert_allclose(limits.lower, [0.0, -1.5, -math.inf])
    np.testing.assert_allclose(limits.upper, [0.04, 2.0, math.inf])
    np.testing.assert_allclose(limits.max_velocity, [0.2, 1.0, 3.0])


def test_urdf_default_takes_every_movable_joint_and_skips_fixed_ones():
    assert JointLimits.from_urdf(URDF).names == ('shoulder', 'wrist', 'slide')


def test_urdf_errors_name_the_joint():
    with pytest.raises(KeyError, match='elbow'):
        JointLimits.from_urdf(URDF, ['shoulder', 'elbow'])
    with pytest.raises(ValueError, match="'mount'"):
        JointLimits.from_urdf(URDF, ['mount'])
    no_velocity = URDF.replace(' velocity="0.2"', '')
    with pytest.raises(ValueError, match="'slide'"):
        JointLimits.from_urdf(no_velocity, ['slide'])
    with pytest.raises(ValueError, match='XML'):
        JointLimits.from_urdf('<robot>')


def test_panda_urdf_limits():
    from diffusion_policy_ros.robot_description import PANDA_JOINTS, panda_description
    limits = JointLimits.from_urdf(panda_description().urdf_text(), PANDA_JOINTS)
    i = limits.names.index('panda_joint4')
    assert (limits.lower[i], limits.upper[i], limits.max_velocity[i]) == (-3.0718, -0.0698, 2.175)
    assert limits.max_velocity[-1] == pytest.approx(0.2)  # the finger


def test_params_and_select():
    limits = JointLimits.from_params({'joint_names': ['a', 'b'], 'lower': [-1, -2], 'upper': [1, 2],
                                      'max_velocity': [0.5, 0.7]})
    picked = limits.select(['b', 'a'])
    np.testing.assert_allclose(picked.max_velocity, [0.7, 0.5])
    with pytest.raises(KeyError, match="'c'"):
        limits.select(['c'])
    with pytest.raises(KeyError, match='max_velocity'):
        JointLimits.from_params({'joint_names': ['a'], 'lower': [0], 'upper': [1]})
    with pytest.raises(ValueError, match="joint 'a'"):
        JointLimits(('a',), lower=[1.0], upper=[0.0], max_velocity=[1.0])
    with pytest.raises(ValueError, match="joint 'a'"):
        JointLimits(('a',), lower=[0.0], upper=[1.0], max_velocity=[0.0])


def test_first_point_is_limited_against_the_measured_position():
    out = clamp_trajectory(np.array([[0.9, 0.5]]), measured=np.array([0.0, 0.0]), dt=0.1, limits=LIMITS)
    np.testing.assert_allclose(out, [[0.1, 0.05]])


def test_positions_are_clamped_and_approached_at_the_velocity_limit():
    points = np.array([[0.5, 0.4], [2.0, 0.4], [2.0, 0.4], [-2.0, 0.4]])
    out = clamp_trajectory(points, measured=np.array([0.5, 0.4]), dt=0.5, limits=LIMITS)
    np.testing.assert_allclose(out[:, 0], [0.5, 1.0, 1.0, 0.5])  # upper 1.0; then 0.5/step downwards
    np.testing.assert_allclose(out[:, 1], 0.4)


def test_measured_outside_limits_never_commands_outside_them():
    """A measurement a little outside a limit (within the nodes' limit_tolerance) is clamped into it
    first: the command starts at the limit instead of following the measurement out."""
    out = clamp_trajectory(np.array([[1.5, 0.0], [0.5, 0.0]]), measured=np.array([1.03, 0.0]), dt=0.1,
                           limits=LIMITS)
    np.testing.assert_allclose(out[:, 0], [1.0, 0.9])


def test_non_finite_input_is_rejected_naming_the_joint():
    with pytest.raises(ValueError, match="'j1'"):
        clamp_trajectory(np.array([[0.0, np.nan]]), np.zeros(2), 0.1, LIMITS)
    with pytest.raises(ValueError, match='j0'):
        clamp_trajectory(np.zeros((2, 3)), np.zeros(2), 0.1, LIMITS)


@settings(max_examples=300, deadline=None)
@given(points=arrays(np.float64, (6, 2), elements=st.floats(-1e6, 1e6)),
       measured=arrays(np.float64, (2,), elements=st.floats(-5, 5)))
def test_clamped_trajectory_always_respects_both_limits(points, measured):
    """Whatever the targets and wherever the arm is measured: every point within the position limits,
    every step within the velocity limit, from the measurement clamped into the limits."""
    dt = 0.1
    out = clamp_trajectory(points, measured, dt, LIMITS)
    assert np.all(out >= LIMITS.lower) and np.all(out <= LIMITS.upper)
    start = np.clip(measured, LIMITS.lower, LIMITS.upper)
    steps = np.abs(np.diff(np.vstack([start, out]), axis=0))
    assert np.all(steps <= LIMITS.max_velocity * dt + 1e-12)
    measured = start
    # and it changes nothing that was already feasible
    feasible = clamp_trajectory(out, measured, dt, LIMITS)
    np.testing.assert_allclose(feasible, out)
