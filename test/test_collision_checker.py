"""Robot model, scene and the state/path checker of the collision guard."""
import coal
import numpy as np
import pinocchio as pin
import pytest

from hypothesis import given, settings
from hypothesis import strategies as st

from diffusion_policy_ros.collision.checker import SWEEP_MARGIN, CollisionChecker, interpolate_path
from diffusion_policy_ros.collision.robot_model import RobotModel
from diffusion_policy_ros.collision.scene import Scene, SceneObject
from diffusion_policy_ros.robot_description import PANDA_HOME, PANDA_JOINTS, panda_description

HOME = np.array(PANDA_HOME)
# Shoulder forward, elbow folded all the way: the forearm comes back into the base.
FOLDED = np.array([0.0, 1.7, 0.0, -3.0, 0.0, 1.5, 0.785, 0.04])


@pytest.fixture(scope='module')
def panda():
    description = panda_description()
    return RobotModel.from_urdf(description.urdf_text(), description.srdf_text())


def hand_position(model: RobotModel, q: np.ndarray) -> np.ndarray:
    data = model.model.createData()
    pin.framesForwardKinematics(model.model, data, q)
    return data.oMf[model.model.getFrameId('panda_hand')].translation.copy()


def test_model_maps_commanded_joints_and_urdf_limits(panda):
    assert panda.joint_names == PANDA_JOINTS  # finger joint2 mimics joint1: not a commanded joint
    assert panda.limits.lower[3] == pytest.approx(-3.0718)
    assert panda.limits.upper[5] == pytest.approx(3.7525)
    assert panda.limits.velocity[4] == pytest.approx(2.61)
    q = panda.configuration(dict(zip(PANDA_JOINTS, PANDA_HOME)))
    np.testing.assert_allclose(q, HOME)
    with pytest.raises(ValueError, match='panda_joint9'):
        panda.configuration({**dict(zip(PANDA_JOINTS, PANDA_HOME)), 'panda_joint9': 0.0})
    with pytest.raises(ValueError, match='panda_joint7'):
        panda.configuration(dict(zip(PANDA_JOINTS[:6], PANDA_HOME)) | {'panda_finger_joint1': 0.04})


def test_mimic_finger_follows_its_leader(panda):
    data = panda.model.createData()
    right = panda.model.getJointId('panda_finger_joint2')
    left = panda.model.getJointId('panda_finger_joint1')
    gaps = []
    for opening in (0.0, 0.04):
        q = HOME.copy()
        q[7] = opening
        pin.forwardKinematics(panda.model, data, q)
        gaps.append(np.linalg.norm(data.oMi[left].translation - data.oMi[right].translation))
    assert gaps[1] - gaps[0] == pytest.approx(0.08, abs=1e-6)  # both fingers open by 4 cm


def test_without_srdf_adjacent_links_are_not_checked(panda):
    description = panda_description()
    bare = RobotModel.from_urdf(description.urdf_text())
    links = bare.geometry_links
    pairs = {frozenset((links[p.first], links[p.second])) for p in bare.collision_model.collisionPairs}
    assert frozenset(('panda_link3', 'panda_link4')) not in pairs
    assert frozenset(('panda_link7', 'panda_leftfinger')) not in pairs  # hand joint -> finger joint
    assert frozenset(('panda_link1', 'panda_link5')) in pairs
    assert panda.collision_pair_count < bare.collision_pair_count  # the SRDF disables more
    assert CollisionChecker(bare).check_state(HOME).valid
    assert not CollisionChecker(bare).check_state(FOLDED).valid


def test_bad_robot_description_is_reported():
    with pytest.raises(ValueError, match='URDF'):
        RobotModel.from_urdf('')
    with pytest.raises(ValueError, match='URDF'):
        RobotModel.from_urdf('<robot name="x"><link name="a"/><joint name="j" type="revolute">'
                             '<parent link="a"/><child link="missing"/></joint></robot>')


def test_scene_edits_and_validation():
    scene = Scene.from_dicts({'box': {'shape': 'box', 'size': [0.1, 0.2, 0.3], 'pose': [1, 2, 3]}})
    assert scene['box'].pose == (1.0, 2.0, 3.0, 0.0, 0.0, 0.0, 1.0)
    version = scene.version
    with pytest.raises(ValueError, match="'box' already exists"):
        scene.add(SceneObject('box', 'sphere', (0.1,)))
    scene.replace(SceneObject('box', 'sphere', (0.1,)))
    assert scene['box'].shape == 'sphere' and scene.version > version
    scene.add(SceneObject('post', 'cylinder', (0.5, 0.05), (0, 0, 0, 0, 0, 0.7071068, 0.7071068)))
    assert Scene.from_dicts(scene.to_dicts()).to_dicts() == scene.to_dicts()
    scene.remove('box')
    with pytest.raises(KeyError, match="'box'"):
        scene.remove('box')
    with pytest.raises(ValueError, match="'cone'"):
        SceneObject('c', 'cone', (1.0,))
    with pytest.raises(ValueError, match="'s'.*positive"):
        SceneObject('s', 'sphere', (-0.1,))
    with pytest.raises(ValueError, match="'b'.*3 positive"):
        SceneObject('b', 'box', (0.1, 0.1))
    with pytest.raises(ValueError, match="'q'.*zero norm"):
        SceneObject('q', 'sphere', (0.1,), (0, 0, 0, 0, 0, 0, 0))
    with pytest.raises(ValueError, match="scene object 't': unknown key.*'colour'"):
        SceneObject.from_dict('t', {'shape': 'box', 'size': [1, 1, 1], 'colour': 'red'})


def test_padding_grows_every_shape():
    box = SceneObject('b', 'box', (0.1, 0.2, 0.3)).to_coal(0.01)
    np.testing.assert_allclose(box.halfSide, [0.06, 0.11, 0.16])
    assert SceneObject('s', 'sphere', (0.1,)).to_coal(0.01).radius == pytest.approx(0.11)
    cylinder = SceneObject('c', 'cylinder', (0.4, 0.05)).to_coal(0.01)
    assert (cylinder.radius, cylinder.halfLength) == pytest.approx((0.06, 0.21))
    own = SceneObject('table', 'box', (1.0, 1.0, 0.1), padding=0.0)  # its own padding wins
    np.testing.assert_allclose(own.to_coal(0.05).halfSide, [0.5, 0.5, 0.05])
    assert SceneObject.from_dict('table', own.to_dict()) == own
    with pytest.raises(ValueError, match="'p'.*padding"):
        SceneObject('p', 'sphere', (0.1,), padding=-0.01)


def test_state_check_names_the_bodies_in_contact(panda):
    hand = hand_position(panda, HOME)
    checker = CollisionChecker(panda, Scene([SceneObject('block', 'box', (0.1, 0.1, 0.1), tuple(hand))]))
    result = checker.check_state(HOME)
    assert not result.valid and result.kind == 'scene_collision'
    assert result.pair[1] == 'block' and result.pair[0].startswith('panda_')
    assert 'block' in result.reason

    folded = CollisionChecker(panda).check_state(FOLDED)
    assert not folded.valid and folded.kind == 'self_collision'
    assert set(folded.pair) == {'panda_link0', 'panda_link5'}
    assert CollisionChecker(panda).check_state(dict(zip(PANDA_JOINTS, PANDA_HOME))).valid


def test_joint_limit_violation_is_detected(panda):
    checker = CollisionChecker(panda, limit_tolerance=1e-3)
    q = HOME.copy()
    q[3] = -0.01  # panda_joint4 upper limit is -0.0698
    result = checker.check_state(q)
    assert not result.valid and result.kind == 'joint_limit'
    assert 'panda_joint4' in result.reason and 'upper' in result.reason
    q[3] = -0.0698 + 5e-4  # within the measurement tolerance
    assert checker.check_state(q).valid
    with pytest.raises(ValueError, match='NaN'):
        checker.check_state(np.full(8, np.nan))
    with pytest.raises(ValueError, match='8 values'):
        checker.check_state(HOME[:7])


def test_padding_keeps_clearance_from_obstacles(panda):
    """A sphere 2 cm from the robot is fine with 1 cm padding and blocks with 3 cm."""
    data = panda.model.createData()
    geometry_data = pin.GeometryData(panda.collision_model)
    pin.updateGeometryPlacements(panda.model, data, panda.collision_model, geometry_data, HOME)
    center = hand_position(panda, HOME) + np.array([0.0, 0.0, 0.25])
    radius = 0.05
    clearance = min(
        coal.distance(g.geometry, geometry_data.oMg[i], coal.Sphere(radius), pin.SE3(np.eye(3), center),
                      coal.DistanceRequest(), coal.DistanceResult())
        for i, g in enumerate(panda.collision_model.geometryObjects))
    sphere = SceneObject('ball', 'sphere', (radius - (0.02 - clearance),), tuple(center))  # 2 cm away
    assert CollisionChecker(panda, Scene([sphere]), padding=0.01).check_state(HOME).valid
    assert not CollisionChecker(panda, Scene([sphere]), padding=0.03).check_state(HOME).valid


def test_scene_changes_are_picked_up_by_the_next_check(panda):
    scene = Scene()
    checker = CollisionChecker(panda, scene)
    assert checker.check_state(HOME).valid
    scene.add(SceneObject('block', 'sphere', (0.05,), tuple(hand_position(panda, HOME))))
    assert checker.check_state(HOME).kind == 'scene_collision'
    scene.remove('block')
    assert checker.check_state(HOME).valid


def test_interpolation_subdivides_every_segment_at_the_max_step():
    start = np.zeros(3)
    waypoints = np.array([[0.1, 0.0, 0.0], [0.1, -0.05, 0.01], [0.1, -0.05, 0.01]])
    states, waypoint_of = interpolate_path(start, waypoints, 0.02)
    assert np.abs(np.diff(states, axis=0)).max() <= 0.02 + 1e-12
    np.testing.assert_array_equal(states[0], start)
    for k, waypoint in enumerate(waypoints):  # each waypoint is a checked state, exactly
        assert (states[waypoint_of == k][-1] == waypoint).all()
    assert len(states) == 1 + 5 + 3 + 1
    with pytest.raises(ValueError, match='max_joint_step'):
        interpolate_path(start, waypoints, 0.0)


def test_path_through_a_box_is_blocked_at_the_right_waypoint(panda):
    goal = HOME.copy()
    goal[0] = 1.57  # swing the arm a quarter turn around the base
    waypoints = np.linspace(HOME, goal, 17)[1:]
    box = SceneObject('box', 'box', (0.1, 0.1, 0.25), (0.3, 0.3, 0.5))
    checker = CollisionChecker(panda, Scene([box]), padding=0.01)
    result = checker.check_path(HOME, waypoints, max_joint_step=0.02)
    assert not result.valid and result.kind == 'scene_collision'
    assert result.colliding_pair[1] == 'box'
    assert 0 < result.first_colliding_index < 15
    assert result.last_safe_index == result.first_colliding_index - 1
    # The last safe point is valid, lies on the blocked segment and is one step before the contact.
    assert checker.check_state(result.last_safe_point).valid
    before = waypoints[result.first_colliding_index - 1]
    after = waypoints[result.first_colliding_index]
    assert before[0] <= result.last_safe_point[0] < after[0]
    assert not checker.check_state(result.last_safe_point + np.eye(8)[0] * 0.02).valid
    # The same chunk is free once the box is gone; every state was checked.
    empty = CollisionChecker(panda)
    free = empty.check_path(HOME, waypoints, max_joint_step=0.02)
    assert free.valid and free.first_colliding_index is None
    np.testing.assert_array_equal(free.last_safe_point, goal)
    assert free.checked_states == len(interpolate_path(HOME, waypoints, 0.02, empty.reach, 2 * SWEEP_MARGIN)[0])


def finger_point(model: RobotModel, q: np.ndarray) -> np.ndarray:
    data = model.model.createData()
    pin.framesForwardKinematics(model.model, data, q)
    return data.oMf[model.model.getFrameId('panda_leftfinger')].translation.copy()


def test_an_obstacle_between_two_sampled_states_is_found():
    """A 0.2 rad joint-1 turn moves the fingers 6 cm; a 6 mm ball where a finger passes halfway is missed
    by checking the two end states (a sampled check at a 0.2 rad step), not by the swept check, whatever
    its max_joint_step."""
    description = panda_description()
    panda = RobotModel.from_urdf(description.urdf_text(), description.srdf_text())
    end = HOME + np.eye(8)[0] * 0.2
    ball = SceneObject('ball', 'sphere', (0.003,), tuple(finger_point(panda, (HOME + end) / 2)), padding=0.0)
    checker = CollisionChecker(panda, Scene([ball]))
    assert checker.check_state(HOME).valid and checker.check_state(end).valid  # what sampling sees
    result = checker.check_path(HOME, end[None], max_joint_step=0.2)
    assert not result.valid and result.colliding_pair[1] == 'ball'


@settings(max_examples=25, deadline=None)
@given(turn=st.lists(st.floats(-0.15, 0.15), min_size=8, max_size=8),
       offset=st.lists(st.floats(-0.03, 0.03), min_size=3, max_size=3), radius=st.floats(0.005, 0.03))
def test_an_accepted_path_never_enters_an_obstacle_deeper_than_the_tolerance(panda, turn, offset, radius):
    """Random short motions past a ball near the fingers: whatever the checker accepts, a dense re-check
    (states 0.2 mm of motion apart) against the ball shrunk by max_penetration finds free."""
    end = np.clip(HOME + np.asarray(turn), panda.limits.lower, panda.limits.upper)
    center = finger_point(panda, (HOME + end) / 2) + np.asarray(offset)
    checker = CollisionChecker(panda, Scene([SceneObject('ball', 'sphere', (radius,), tuple(center), padding=0.0)]),
                               max_penetration=0.001)
    if not checker.check_state(HOME).valid or not checker.check_path(HOME, end[None]).valid:
        return
    shrunk = CollisionChecker(panda, Scene([SceneObject('ball', 'sphere', (radius - 0.001,), tuple(center),
                                                        padding=0.0)]))
    dense, _ = interpolate_path(HOME, end[None], 1.0, checker.reach, 0.0002)
    assert shrunk.first_invalid(dense) is None


def test_path_from_an_invalid_start_has_no_safe_point(panda):
    result = CollisionChecker(panda).check_path(FOLDED, HOME[None])
    assert not result.valid and result.first_colliding_index == -1
    assert result.last_safe_point is None and result.last_safe_index is None


def test_batched_check_finds_the_first_invalid_state(panda):
    """The C++ batch with early exit agrees with checking the states one by one."""
    rng = np.random.default_rng(0)
    scene = Scene([SceneObject('box', 'box', (0.3, 0.3, 0.3), (0.4, 0.0, 0.4))])
    checker = CollisionChecker(panda, scene, padding=0.01)
    for _ in range(20):
        states = rng.uniform(panda.limits.lower, panda.limits.upper, size=(12, 8))
        one_by_one = [k for k, q in enumerate(states) if not checker.check_state(q).valid]
        assert checker.first_invalid(states) == (one_by_one[0] if one_by_one else None)


def test_a_waypoint_far_outside_the_limits_is_refused_without_interpolating_to_it(panda):
    """Hypothesis found it: a chunk point at 5.5e9 rad made the check allocate 2 TiB of interpolated
    states (MemoryError, or minutes of work). Limits are checked on the waypoints first."""
    checker = CollisionChecker(panda, Scene())
    far = HOME.copy()
    far[0] = 5.497558139e9
    near = HOME + np.r_[np.full(7, 0.01), 0.0]
    result = checker.check_path(HOME, np.vstack([near, far, HOME]))
    assert not result.valid and result.kind == 'joint_limit' and result.first_colliding_index == 1
    np.testing.assert_allclose(result.last_safe_point, near)
    assert 'panda_joint1' in result.reason
    start_outside = checker.check_path(far, HOME[None])
    assert not start_outside.valid and start_outside.first_colliding_index == -1
