"""collision_guard_node over real DDS: free chunks pass unchanged, colliding ones are replaced by a
fallback that an independent dense check finds collision-free, malformed ones make the arm hold, and
a MarkerArray changes the scene at run time. Plus the pure marker -> scene helpers.

The node runs as a subprocess with the real params file (the table) plus a box; a test node plays the
robot (joint states at HOME), the policy (proposed chunks) and the scene publisher.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import coal
import numpy as np
import pinocchio as pin
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import JointState
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint
from visualization_msgs.msg import Marker, MarkerArray

from diffusion_policy_ros.collision.checker import CollisionChecker
from diffusion_policy_ros.collision.config import CollisionGuardConfig
from diffusion_policy_ros.collision.robot_model import RobotModel
from diffusion_policy_ros.collision.scene import Scene, SceneObject
from diffusion_policy_ros.collision.scene_overlay import MarkerScene, marker_to_scene_object
from diffusion_policy_ros.nodes.messages import (duration_to_seconds, seconds_to_duration, seconds_to_stamp,
                                                 stamp_to_seconds)
from diffusion_policy_ros.robot_description import PANDA_HOME, PANDA_JOINTS, panda_description

from ros_helpers import ROOT, NodeProcess, SpinningNode, wait_for

pytestmark = pytest.mark.ros
TOPICS = {'input_topic': '/guard_test/proposed', 'output_topic': '/guard_test/command',
          'joint_states_topic': '/guard_test/joint_states', 'scene_topic': '/guard_test/scene'}
HOME = np.array(PANDA_HOME)
BOX = SceneObject('box', 'box', (0.1, 0.1, 0.3), (0.25, 0.25, 0.5))
QUARTER_TURN = HOME + np.eye(8)[0] * 1.57  # joint1 sweeps the hand through BOX; the goal itself is free
INTO_BOX = HOME + np.eye(8)[0] * 0.785  # the hand ends inside BOX
FOLDED = HOME + np.eye(8)[3] * (-3.0 - HOME[3]) + np.eye(8)[5] * (0.3 - HOME[5]) - np.eye(8)[1] * HOME[1]
SMALL_MOTION = HOME + np.eye(8)[0] * -0.3 + np.eye(8)[3] * 0.2  # away from BOX
VELOCITY_SCALING = 0.5
PADDING = 0.01


def trajectory(goal, start=HOME, points=16, dt=0.1, names=PANDA_JOINTS, stamp_s=1.0):
    msg = JointTrajectory(joint_names=list(names))
    msg.header.stamp = seconds_to_stamp(stamp_s)
    for k, row in enumerate(np.linspace(start, goal, points + 1)[1:]):
        msg.points.append(JointTrajectoryPoint(positions=[float(x) for x in row],
                                               time_from_start=seconds_to_duration((k + 1) * dt)))
    return msg


def positions(msg):
    return np.array([list(p.positions) for p in msg.points])


def times(msg):
    return np.array([duration_to_seconds(p.time_from_start) for p in msg.points])


class Robot(SpinningNode):
    """Joint states at HOME (50 Hz); the policy's and the scene's publisher; records what the guard sends."""

    def __init__(self):
        super().__init__('guard_test_robot')
        node = self.node
        self.joint_pub = node.create_publisher(JointState, TOPICS['joint_states_topic'], qos_profile_sensor_data)
        self.proposed_pub = node.create_publisher(JointTrajectory, TOPICS['input_topic'], 10)
        self.scene_pub = node.create_publisher(MarkerArray, TOPICS['scene_topic'], QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        self.joints_on = True
        self.commands: list[JointTrajectory] = []
        self.diagnostics: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self.command_sub = node.create_subscription(JointTrajectory, TOPICS['output_topic'], self._on_command, 50)
        node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, 50)
        node.create_timer(1 / 50, self._publish_joints)

    def _publish_joints(self):
        if not self.joints_on:
            return
        msg = JointState(name=list(PANDA_JOINTS), position=[float(x) for x in HOME])
        msg.header.stamp = self.node.get_clock().now().to_msg()
        self.joint_pub.publish(msg)

    def _on_command(self, msg):
        with self._lock:
            self.commands.append(msg)

    def _on_diagnostics(self, msg):
        for status in msg.status:
            if status.name.startswith('collision_guard_node'):
                with self._lock:
                    self.diagnostics.append({kv.key: kv.value for kv in status.values})

    def latest_diagnostics(self) -> dict[str, str]:
        with self._lock:
            return dict(self.diagnostics[-1]) if self.diagnostics else {}

    def wait_diagnostics(self, condition, what: str, timeout: float = 10.0) -> dict[str, str]:
        since = len(self.diagnostics)

        def reached():
            with self._lock:
                fresh = self.diagnostics[since:]
            return any(condition(d) for d in fresh)
        wait_for(reached, timeout, f'diagnostics: {what} (last: {self.latest_diagnostics()})')
        return self.latest_diagnostics()

    def propose(self, msg: JointTrajectory, timeout: float = 20.0) -> JointTrajectory:
        """Publish a proposed chunk and return what the guard sends the controller for it."""
        with self._lock:
            count = len(self.commands)
        self.proposed_pub.publish(msg)
        wait_for(lambda: len(self.commands) > count, timeout, 'the guard to answer a proposed chunk')
        with self._lock:
            return self.commands[count]


@pytest.fixture(scope='module')
def robot():
    fake = Robot()
    yield fake
    fake.close()


@pytest.fixture(scope='module')
def guard_node(robot):
    params = {**TOPICS, 'backend': 'auto', 'planning_time_budget_s': 2.0, 'planner_seed': 7,
              'diagnostics_rate_hz': 5.0, 'padding': PADDING, 'velocity_scaling': VELOCITY_SCALING,
              'scene.object_names': ['table', 'box'], 'scene.box.shape': 'box',
              'scene.box.size': list(BOX.size), 'scene.box.pose': list(BOX.pose)}
    # The params file first: later --ros-args override earlier ones.
    args = ['--params-file', str(ROOT / 'config' / 'collision_guard.yaml')]
    for key, value in params.items():
        text = '[' + ','.join(map(str, value)) + ']' if isinstance(value, list) else str(value)
        args += ['-p', f'{key}:={text}']
    proc = NodeProcess('diffusion_policy_ros.nodes.collision_guard_node', extra_args=args)
    try:
        wait_for(lambda: 'active:' in proc.output or 'failed' in proc.output or not proc.alive(), 60,
                 'the guard to become active')
        assert proc.alive() and 'active:' in proc.output, proc.output
        wait_for(lambda: robot.proposed_pub.get_subscription_count() > 0
                 and robot.command_sub.get_publisher_count() > 0, 30, 'the guard to subscribe and advertise')
        robot.wait_diagnostics(lambda d: d.get('joint_state') == 'fresh', 'active with fresh joint states', 30)
        yield proc
    finally:
        proc.stop()
    assert proc.proc.returncode == 0, proc.output


# ---------------------------------------------------------------------- the independent dense check
class IndependentCheck:
    """Pinocchio + coal directly (no mimic joint, no broad phase, signed distances): states every
    0.005 rad along the published trajectory must keep every obstacle pair apart and every SRDF-enabled
    self pair out of contact."""

    RESOLUTION = 0.005

    def __init__(self, obstacles):
        description = panda_description()
        urdf, srdf = description.urdf_text(), description.srdf_text()
        self.model = pin.buildModelFromXML(urdf)  # finger_joint2 is a joint of its own here
        self.geometry = pin.buildGeomFromUrdfString(self.model, urdf, pin.COLLISION)
        self.geometry.addAllCollisionPairs()
        pin.removeCollisionPairsFromXML(self.model, self.geometry, srdf)
        self.self_pairs = len(self.geometry.collisionPairs)
        robot = [i for i, g in enumerate(self.geometry.geometryObjects) if g.parentJoint != 0]
        for obj in obstacles:
            x, y, z, qx, qy, qz, qw = obj.pose
            shape = {'box': lambda s: coal.Box(*s), 'sphere': lambda s: coal.Sphere(s[0]),
                     'cylinder': lambda s: coal.Cylinder(s[1], s[0])}[obj.shape](obj.size)
            placement = pin.SE3(pin.Quaternion(qw, qx, qy, qz).toRotationMatrix(), np.array([x, y, z]))
            gid = self.geometry.addGeometryObject(pin.GeometryObject(obj.name, 0, 0, placement, shape))
            for r in robot:
                self.geometry.addCollisionPair(pin.CollisionPair(r, gid))
        self.data = self.model.createData()
        self.geometry_data = pin.GeometryData(self.geometry)
        self.velocity = np.array(self.model.velocityLimit)[:8]

    def q(self, row):
        return np.concatenate([row, row[-1:]])  # finger_joint2 mirrors finger_joint1

    def dense(self, points):
        states = [points[0]]
        for a, b in zip(points[:-1], points[1:]):
            n = max(1, int(np.ceil(np.abs(b - a).max() / self.RESOLUTION)))
            states += list(a + np.outer(np.arange(1, n + 1) / n, b - a))
        return np.array(states)

    def clearance(self, points) -> tuple[float, str]:
        """The smallest obstacle distance and the first self-contact ('' when none) along the path."""
        smallest, contact = np.inf, ''
        pairs = range(len(self.geometry.collisionPairs))
        for row in self.dense(points):
            pin.updateGeometryPlacements(self.model, self.data, self.geometry, self.geometry_data, self.q(row))
            for k in pairs[self.self_pairs:]:
                smallest = min(smallest, pin.computeDistance(self.geometry, self.geometry_data, k).min_distance)
            if contact:
                continue
            for k in pairs[:self.self_pairs]:
                if pin.computeCollision(self.geometry, self.geometry_data, k):
                    pair = self.geometry.collisionPairs[k]
                    contact = (f'{self.geometry.geometryObjects[pair.first].name} / '
                               f'{self.geometry.geometryObjects[pair.second].name} at {np.round(row, 3).tolist()}')
                    break
        return smallest, contact


@pytest.fixture(scope='module')
def scene_objects():
    return (*CollisionGuardConfig.from_params_file(ROOT / 'config' / 'collision_guard.yaml').scene_objects, BOX)


def end_any_fallback(robot):
    """A free chunk takes over from a fallback a previous test left running (the fake arm never moves,
    so that fallback would otherwise continue for its whole duration)."""
    free = trajectory(SMALL_MOTION)
    np.testing.assert_array_equal(positions(robot.propose(free)), positions(free))


def assert_safe_replacement(msg, proposed, check: IndependentCheck):
    """Starts at the measured state, keeps clear of obstacles and itself, stays within the velocity limits."""
    assert list(msg.joint_names) == list(PANDA_JOINTS)
    unsafe_distance, unsafe_contact = check.clearance(np.vstack([HOME, positions(proposed)]))
    assert unsafe_distance < 0 or unsafe_contact, 'the independent check should see the proposal collide'
    points, t = positions(msg), times(msg)
    assert not np.array_equal(points, positions(proposed)), 'the colliding chunk was passed on'
    assert len(points) >= 2 and t[0] == 0.0 and np.all(np.diff(t) > 0)
    np.testing.assert_allclose(points[0], HOME, atol=1e-9)
    smallest, contact = check.clearance(points)
    assert smallest > 0, f'the replacement comes {smallest:.4f} m into an obstacle'
    assert not contact, f'the replacement self-collides: {contact}'
    speeds = np.abs(np.diff(points, axis=0)) / np.diff(t)[:, None]
    assert np.all(speeds <= VELOCITY_SCALING * check.velocity + 1e-6), speeds.max(axis=0)


# ---------------------------------------------------------------------- DDS tests
def test_free_chunk_passes_unchanged(guard_node, robot):
    proposed = trajectory(SMALL_MOTION, stamp_s=12.5)
    sent = robot.propose(proposed)
    assert list(sent.joint_names) == list(PANDA_JOINTS)
    np.testing.assert_array_equal(positions(sent), positions(proposed))
    np.testing.assert_array_equal(times(sent), times(proposed))
    assert stamp_to_seconds(sent.header.stamp) == 12.5
    diag = robot.wait_diagnostics(lambda d: int(d['chunks_passed']) >= 1, 'a passed chunk')
    assert diag['backend'] == 'embedded' and float(diag['check_latency_p99_ms']) > 0
    assert 'collision backend: embedded' in guard_node.output  # auto says which backend runs
    assert 'warm-up: trial fallback plan' in guard_node.output


def test_chunk_through_a_box_is_replaced_by_a_safe_plan_to_the_goal(guard_node, robot, scene_objects):
    end_any_fallback(robot)
    before = robot.latest_diagnostics()
    proposed = trajectory(QUARTER_TURN)
    sent = robot.propose(proposed)
    # While the fallback runs (the plan takes seconds), the same colliding proposal lets it continue:
    # its remainder, re-timed from now.
    again = robot.propose(proposed)
    remainder = positions(again)
    assert 1 <= len(remainder) < len(positions(sent)) and times(again)[0] > 0
    np.testing.assert_allclose(remainder, positions(sent)[-len(remainder):])
    diag = robot.wait_diagnostics(lambda d: 'continues' in d['last_reason'], 'the fallback continuing')
    assert int(diag['fallbacks_planned']) == int(before['fallbacks_planned']) + 1
    assert int(diag['blocked_chunks']) == int(before['blocked_chunks']) + 2
    assert float(diag['last_planning_time_ms']) > 0 and 'box' in diag['last_reason']

    assert_safe_replacement(sent, proposed, IndependentCheck(scene_objects))
    np.testing.assert_allclose(positions(sent)[-1], QUARTER_TURN, atol=1e-6)
    # A free chunk takes over from the fallback at once, unchanged.
    end_any_fallback(robot)
    assert robot.wait_diagnostics(lambda d: d['last_action'] == 'pass', 'a pass')['fallback_active'] == 'False'

def test_chunk_ending_in_the_box_is_replaced_by_a_plan_to_the_last_safe_point(guard_node, robot, scene_objects):
    end_any_fallback(robot)
    proposed = trajectory(INTO_BOX)
    sent = robot.propose(proposed)
    assert_safe_replacement(sent, proposed, IndependentCheck(scene_objects))
    description = panda_description()
    model = RobotModel.from_urdf(description.urdf_text(), description.srdf_text())
    expected = CollisionChecker(model, Scene(scene_objects), PADDING).check_path(HOME, positions(proposed))
    assert not expected.valid
    np.testing.assert_allclose(positions(sent)[-1], expected.last_safe_point, atol=1e-6)


def test_self_colliding_folded_chunk_is_blocked(guard_node, robot, scene_objects):
    end_any_fallback(robot)
    before = robot.latest_diagnostics()
    proposed = trajectory(FOLDED)
    sent = robot.propose(proposed)
    assert_safe_replacement(sent, proposed, IndependentCheck(scene_objects))
    diag = robot.wait_diagnostics(lambda d: int(d['blocked_chunks']) > int(before['blocked_chunks']), 'blocked')
    assert 'self-collision' in diag['last_reason']


def _unknown_joint():
    return trajectory(SMALL_MOTION[:2], start=HOME[:2], names=('panda_joint1', 'elbow'))


def _nan():
    msg = trajectory(SMALL_MOTION)
    msg.points[3].positions[1] = float('nan')
    return msg


def _not_increasing():
    msg = trajectory(SMALL_MOTION)
    msg.points[5].time_from_start = msg.points[4].time_from_start
    return msg


def _empty():
    return JointTrajectory(joint_names=list(PANDA_JOINTS))


@pytest.mark.parametrize('make, expected', [(_unknown_joint, "'elbow'"), (_nan, 'non-finite'),
                                            (_not_increasing, 'strictly increasing'), (_empty, 'no points')],
                         ids=['unknown_joint', 'nan', 'non_increasing_time', 'empty'])
def test_malformed_chunk_is_rejected_the_arm_holds_and_the_node_keeps_running(guard_node, robot, make, expected):
    before = int(robot.latest_diagnostics()['rejected_messages'])
    sent = robot.propose(make())
    assert len(sent.points) == 1 and list(sent.joint_names) == list(PANDA_JOINTS)
    np.testing.assert_allclose(sent.points[0].positions, HOME, atol=1e-9)  # holds where it is
    diag = robot.wait_diagnostics(lambda d: int(d['rejected_messages']) > before, 'a rejected message')
    assert diag['last_action'] == 'reject' and expected in diag['last_reason'], diag['last_reason']
    assert guard_node.alive(), guard_node.output
    free = trajectory(SMALL_MOTION)
    np.testing.assert_array_equal(positions(robot.propose(free)), positions(free))


def test_stale_joint_states_make_the_arm_hold_at_the_last_known_position(guard_node, robot):
    robot.joints_on = False
    try:
        robot.wait_diagnostics(lambda d: 's old' in d['joint_state'], 'stale joint states')
        sent = robot.propose(trajectory(SMALL_MOTION))
        assert len(sent.points) == 1
        np.testing.assert_allclose(sent.points[0].positions, HOME, atol=1e-9)
        diag = robot.wait_diagnostics(lambda d: d['last_action'] == 'reject', 'a rejection')
        assert 'max_joint_state_age_s' in diag['last_reason']
    finally:
        robot.joints_on = True
    robot.wait_diagnostics(lambda d: d['joint_state'] == 'fresh', 'fresh joint states')
    free = trajectory(SMALL_MOTION)
    np.testing.assert_array_equal(positions(robot.propose(free)), positions(free))


def test_an_implausible_joint_state_is_rejected_and_the_last_trusted_one_is_used(guard_node, robot):
    """A burst of joint states with joint 1 at 50 rad (and a duplicated name) between the good ones: they
    are rejected and counted; the chunk is checked from the last trusted state, and passes."""
    end_any_fallback(robot)
    bad = JointState(name=list(PANDA_JOINTS), position=[50.0, *HOME[1:]])
    duplicate = JointState(name=[*PANDA_JOINTS, 'panda_joint1'], position=[*HOME, 1.0])
    for _ in range(10):
        for msg in (bad, duplicate):
            msg.header.stamp = robot.node.get_clock().now().to_msg()
            robot.joint_pub.publish(msg)
    proposed = trajectory(SMALL_MOTION)
    np.testing.assert_array_equal(positions(robot.propose(proposed)), positions(proposed))
    diag = robot.wait_diagnostics(lambda d: int(d['joint_states_rejected']) > 0, 'rejected joint states')
    assert 'OUT_OF_LIMITS' in diag['last_joint_state_problem'] or 'DUPLICATE' in diag['last_joint_state_problem']


def test_the_guard_idles_on_a_fraction_of_a_core(guard_node, robot):
    """Joint states at 50 Hz, no proposals: the single-threaded executor sleeps (the multi-threaded one
    busy-polled a whole core) and joint states are taken on demand, not one wake-up each."""
    ticks = os.sysconf('SC_CLK_TCK')

    def cpu_seconds() -> float:
        fields = Path(f'/proc/{guard_node.proc.pid}/stat').read_text().rsplit(')', 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / ticks

    before, began = cpu_seconds(), time.monotonic()
    time.sleep(10.0)
    share = (cpu_seconds() - before) / (time.monotonic() - began)
    assert share < 0.5, f'the idle guard used {share:.2f} of a core'


def test_joint_state_taken_late_is_judged_by_when_it_arrived(robot):
    """The guard's executor is busy (not spinning) for 0.8 s after the last joint state arrived: when
    the next chunk is checked, that state is 0.8 s old by its arrival, whatever the time it is read."""
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter

    from diffusion_policy_ros.nodes.collision_guard_node import CollisionGuardNode
    topics = {'input_topic': '/late_test/proposed', 'output_topic': '/late_test/command',
              'joint_states_topic': '/late_test/joint_states', 'scene_topic': '/late_test/scene'}
    node = CollisionGuardNode(parameter_overrides=[Parameter(k, value=v) for k, v in topics.items()]
                              + [Parameter('autostart', value=False), Parameter('max_joint_state_age_s', value=0.5)])
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    joints = robot.node.create_publisher(JointState, topics['joint_states_topic'], qos_profile_sensor_data)
    proposed = robot.node.create_publisher(JointTrajectory, topics['input_topic'], 10)
    sent: list[JointTrajectory] = []
    output = robot.node.create_subscription(JointTrajectory, topics['output_topic'], sent.append, 10)
    try:
        node.trigger_configure()
        node.trigger_activate()

        def publish_state():
            msg = JointState(name=list(PANDA_JOINTS), position=[float(x) for x in HOME])
            msg.header.stamp = robot.node.get_clock().now().to_msg()
            joints.publish(msg)

        def propose_and_spin():
            count = len(sent)
            proposed.publish(trajectory(SMALL_MOTION))
            wait_for(lambda: (executor.spin_once(timeout_sec=0.05), len(sent) > count)[1], 20,
                     'the in-process guard to answer')
            return sent[count]

        wait_for(lambda: joints.get_subscription_count() > 0 and proposed.get_subscription_count() > 0
                 and output.get_publisher_count() > 0, 30, 'discovery')
        publish_state()
        fresh = propose_and_spin()
        np.testing.assert_array_equal(positions(fresh), positions(trajectory(SMALL_MOTION)))  # passed

        publish_state()
        time.sleep(0.8)  # the guard's executor does not run meanwhile
        held = propose_and_spin()
        assert len(held.points) == 1, 'a chunk checked against a 0.8 s old state must not pass'
        assert 'old by its arrival' in node.diagnostics().last_reason
    finally:
        node._release()
        executor.shutdown()
        node.destroy_node()
        robot.node.destroy_publisher(joints)
        robot.node.destroy_publisher(proposed)
        robot.node.destroy_subscription(output)


def test_marker_added_at_run_time_blocks_a_free_chunk_until_it_is_deleted(guard_node, robot):
    end_any_fallback(robot)
    proposed = trajectory(SMALL_MOTION)
    np.testing.assert_array_equal(positions(robot.propose(proposed)), positions(proposed))

    crate = Marker(ns='crates', id=4, type=Marker.CUBE, action=Marker.ADD, text='crate')
    crate.header.frame_id = 'panda_link0'
    crate.pose.position.x, crate.pose.position.y, crate.pose.position.z = 0.289, -0.089, 0.685  # hand at goal
    crate.scale.x = crate.scale.y = crate.scale.z = 0.08
    robot.scene_pub.publish(MarkerArray(markers=[crate]))
    robot.wait_diagnostics(lambda d: 'crate' in d['scene_objects'].split(','), 'the crate in the scene')
    before = robot.latest_diagnostics()
    sent = robot.propose(proposed)
    assert not np.array_equal(positions(sent), positions(proposed))
    diag = robot.wait_diagnostics(lambda d: int(d['blocked_chunks']) > int(before['blocked_chunks']), 'blocked')
    assert 'crate' in diag['last_reason']

    robot.scene_pub.publish(MarkerArray(markers=[Marker(ns='crates', id=4, action=Marker.DELETE)]))
    diag = robot.wait_diagnostics(lambda d: 'crate' not in d['scene_objects'].split(','), 'the crate gone')
    assert set(diag['scene_objects'].split(',')) == {'table', 'box'}
    np.testing.assert_array_equal(positions(robot.propose(proposed)), positions(proposed))


def test_a_marker_arriving_on_the_executing_chunk_cuts_it_without_a_new_proposal(guard_node, robot):
    """Issue 15: a crate appears where the arm is still going (a 16 s chunk, sent a moment ago). The guard
    re-checks what is executing on the scene update and sends the chunk cut at its last safe point,
    with no new proposal; /diagnostics counts it and times the reaction."""
    end_any_fallback(robot)
    slow = trajectory(HOME + np.eye(8)[0] * -0.6 + np.eye(8)[3] * 0.2, dt=1.0, stamp_s=time.time())
    np.testing.assert_array_equal(positions(robot.propose(slow)), positions(slow))
    with robot._lock:
        count = len(robot.commands)
    crate = Marker(ns='crates', id=5, type=Marker.CUBE, action=Marker.ADD, text='crate')
    crate.header.frame_id = 'panda_link0'
    crate.pose.position.x, crate.pose.position.y, crate.pose.position.z = 0.25, -0.171, 0.685  # hand at goal
    crate.scale.x = crate.scale.y = crate.scale.z = 0.08
    robot.scene_pub.publish(MarkerArray(markers=[crate]))
    try:
        wait_for(lambda: len(robot.commands) > count, 10, 'the guard to cut the executing chunk')
        with robot._lock:
            cut = robot.commands[count]
        kept = len(cut.points)
        assert 1 <= kept < len(slow.points), 'the cut keeps the safe part and stops short of the crate'
        np.testing.assert_array_equal(positions(cut), positions(slow)[:kept])
        assert times(cut)[0] <= 1.0 and np.all(np.diff(times(cut)) > 0)  # re-timed from now
        diag = robot.wait_diagnostics(lambda d: int(d['executing_blocked']) >= 1, 'the cut counted')
        assert float(diag['output_latency_scene_p99_ms']) > 0 and 'scene changed' in guard_node.output
    finally:
        robot.scene_pub.publish(MarkerArray(markers=[Marker(ns='crates', id=5, action=Marker.DELETE)]))
        robot.wait_diagnostics(lambda d: 'crate' not in d['scene_objects'].split(','), 'the crate gone')


def test_a_misspelt_parameter_fails_configure_with_its_name(robot):
    proc = NodeProcess('diffusion_policy_ros.nodes.collision_guard_node',
                       extra_args=['-p', 'max_joint_stp:=0.01', '-p', 'diagnostics_rate_hz:=5.0'])
    try:
        wait_for(lambda: 'configure failed' in proc.output or not proc.alive(), 30, 'configure to fail')
        assert "unknown collision guard parameter 'max_joint_stp'" in proc.output, proc.output
        assert proc.alive()  # waits for lifecycle transitions instead of crashing
    finally:
        proc.stop()


# ---------------------------------------------------------------------- pure helpers
def _marker(name, marker_type, scale, position=(0.5, 0.0, 0.3), action=Marker.ADD, frame='panda_link0', id=0,
            ns='obstacles'):
    marker = Marker(ns=ns, id=id, type=marker_type, action=action, text=name)
    marker.header.frame_id = frame
    marker.scale.x, marker.scale.y, marker.scale.z = scale
    marker.pose.position.x, marker.pose.position.y, marker.pose.position.z = position
    return marker


def test_marker_shapes_become_scene_objects_with_covering_sizes():
    box = marker_to_scene_object(_marker('b', Marker.CUBE, (0.1, 0.2, 0.3)), 'b')
    assert (box.shape, box.size, box.pose[:3]) == ('box', (0.1, 0.2, 0.3), (0.5, 0.0, 0.3))
    sphere = marker_to_scene_object(_marker('s', Marker.SPHERE, (0.2, 0.2, 0.3)), 's')
    assert sphere.shape == 'sphere' and sphere.size == (0.15,)  # an ellipsoid's bounding sphere
    cylinder = marker_to_scene_object(_marker('c', Marker.CYLINDER, (0.1, 0.12, 0.5)), 'c', padding=0.0)
    assert cylinder.shape == 'cylinder' and cylinder.size == (0.5, 0.06) and cylinder.padding == 0.0
    with pytest.raises(ValueError, match='type 0'):
        marker_to_scene_object(_marker('a', Marker.ARROW, (0.1, 0.1, 0.1)), 'a')
    with pytest.raises(ValueError, match="'flat'"):
        marker_to_scene_object(_marker('flat', Marker.CUBE, (0.1, 0.1, 0.0)), 'flat')


def test_marker_scene_overlays_the_params_file_and_keeps_its_padding():
    table = SceneObject('table', 'box', (1.0, 1.0, 0.05), (0.3, 0.0, -0.025), padding=0.0)
    scene = Scene()
    markers = MarkerScene(scene, [table], ['panda_link0'])
    assert [o.name for o in scene.objects()] == ['table']

    moved_table = _marker('table', Marker.CUBE, (1.2, 1.2, 0.05), id=0)
    update = markers.apply([_marker('crate', Marker.CUBE, (0.1, 0.1, 0.1), id=1), moved_table,
                            _marker('far', Marker.CUBE, (0.1, 0.1, 0.1), frame='camera', id=2),
                            _marker('arrow', Marker.ARROW, (0.1, 0.1, 0.1), id=3)])
    assert update.changed and update.applied == 2 and len(update.ignored) == 2
    assert "frame 'camera'" in update.ignored[0] and 'type 0' in update.ignored[1]
    assert scene['table'].size == (1.2, 1.2, 0.05) and scene['table'].padding == 0.0  # padding kept
    assert scene['crate'].padding is None

    version = scene.version
    markers.apply([Marker(ns='obstacles', id=1, action=Marker.DELETE)])
    assert 'crate' not in scene and scene.version == version + 1
    # DELETEALL then ADD again: one atomic change; the marker's table is gone, the configured one is back.
    markers.apply([Marker(action=Marker.DELETEALL), _marker('crate', Marker.CUBE, (0.1, 0.1, 0.1), id=1)])
    assert scene.version == version + 2 and scene['table'] == table and 'crate' in scene
    assert not markers.apply([]).changed
    update = markers.apply([Marker(ns='nobody', id=9, action=Marker.DELETE)])
    assert not update.changed and 'unknown marker' in update.ignored[0]


def test_a_deleteall_with_a_namespace_clears_only_that_namespace():
    """The sim republishes its scene (DELETEALL of its ns) at every reset: an obstacle a perception
    node added under another ns must survive it, or the guard would forget a real obstacle."""
    scene = Scene()
    markers = MarkerScene(scene, [], ['panda_link0'])
    markers.apply([_marker('table', Marker.CUBE, (1.0, 1.0, 0.05), ns='sim_scene', id=0),
                   _marker('person', Marker.CYLINDER, (0.4, 0.4, 1.8), ns='perception', id=0)])
    update = markers.apply([Marker(ns='sim_scene', action=Marker.DELETEALL),
                            _marker('table2', Marker.CUBE, (1.0, 1.0, 0.05), ns='sim_scene', id=0)])
    assert update.changed and sorted(o.name for o in scene.objects()) == ['person', 'table2']
    markers.apply([Marker(action=Marker.DELETEALL)])  # no ns: everything markers added
    assert list(scene.objects()) == []


def test_a_moving_marker_is_held_swept_over_the_lookahead():
    """A box seen at x 1.0 then 0.9 a tenth of a second later moves at 1 m/s towards -x: with a 0.5 s
    look-ahead the scene holds it from x 0.4 to 0.9 (+ its own half depth), so a chunk is blocked by
    where it is going; a box that stops is held where it is again."""
    scene = Scene()
    markers = MarkerScene(scene, [], ['panda_link0'], lookahead_s=0.5)

    def at(x, t):
        marker = _marker('cart', Marker.CUBE, (0.1, 0.2, 0.3), position=(x, 0.0, 0.15), ns='perception')
        marker.header.stamp.sec, marker.header.stamp.nanosec = int(t), int(round((t % 1) * 1e9))
        return MarkerArray(markers=[marker]).markers

    markers.apply(at(1.0, 10.0))
    assert scene['cart'].size == (0.1, 0.2, 0.3)  # first sighting: no velocity yet
    markers.apply(at(0.9, 10.1))
    np.testing.assert_allclose(markers.velocities()['cart'], [-1.0, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(scene['cart'].size, (0.6, 0.2, 0.3), atol=1e-6)
    np.testing.assert_allclose(scene['cart'].pose[:3], (0.65, 0.0, 0.15), atol=1e-6)
    markers.apply(at(0.9, 10.2))
    assert scene['cart'].size == (0.1, 0.2, 0.3) and scene['cart'].pose[0] == pytest.approx(0.9)
    markers.apply(at(0.2, 10.3))  # 7 m/s: a jump (a reset scene), not a motion to extrapolate
    assert scene['cart'].size == (0.1, 0.2, 0.3) and scene['cart'].pose[0] == pytest.approx(0.2)
    no_lookahead = MarkerScene(Scene(), [], ['panda_link0'])
    no_lookahead.apply(at(1.0, 10.0))
    no_lookahead.apply(at(0.9, 10.1))
    assert no_lookahead.scene['cart'].size == (0.1, 0.2, 0.3)


def test_swept_covers_a_rotated_box_sphere_and_cylinder():
    from diffusion_policy_ros.collision.scene_overlay import swept
    quarter_turn_z = (0.0, 0.0, 0.7071068, 0.7071068)  # the box's own x axis along the world's y
    box = SceneObject('b', 'box', (0.1, 0.2, 0.3), (0.0, 0.0, 0.0, *quarter_turn_z))
    moved = swept(box, np.array([0.0, 1.0, 0.0]), 0.5)  # along world y = the box's own x
    np.testing.assert_allclose(moved.size, (0.6, 0.2, 0.3), atol=1e-6)
    np.testing.assert_allclose(moved.pose[:3], (0.0, 0.25, 0.0), atol=1e-6)
    ball = swept(SceneObject('s', 'sphere', (0.1,)), np.array([0.0, 0.0, 2.0]), 0.5)
    assert ball.size[0] == pytest.approx(0.6) and ball.pose[2] == pytest.approx(0.5)
    can = swept(SceneObject('c', 'cylinder', (0.4, 0.1)), np.array([1.0, 0.0, 0.0]), 0.2)
    np.testing.assert_allclose(can.size, (0.6, 0.2))
