"""sim_robot_node over real DDS on loopback: the node runs in a subprocess, the test talks to it with
rclpy like the policy node and the collision guard would. Waits are on matched endpoints and received
messages (with timeouts), never fixed sleeps.

The tests share one node process and run in file order: stream checks, commands, then resets, then
the episode time limit, then Ctrl-C.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import rclpy
from builtin_interfaces.msg import Duration, Time
from rcl_interfaces.srv import SetParameters
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint
from visualization_msgs.msg import Marker, MarkerArray

from diffusion_policy_ros.jsonio import json_safe
from diffusion_policy_ros.nodes.messages import MessageError, parse_command, scene_markers, stamp_to_seconds
from diffusion_policy_ros.nodes.sim_robot_node import SimRobotParams
from diffusion_policy_ros.robot_description import PANDA_JOINTS
from diffusion_policy_ros.sim.arm import SceneObject

ROOT = Path(__file__).resolve().parents[1]
WIDTH, HEIGHT = 64, 48  # not square, so swapped dimensions would show
JOINT_RATE = 100.0
TIMEOUT = 20.0
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)

pytestmark = pytest.mark.ros


# ---------------------------------------------------------------------- pure helpers (no DDS)
def test_scene_markers_follow_solid_primitive_sizes_and_clear_the_old_scene():
    objects = [SceneObject('table', 'box', (1.3, 1.2, 0.05), (0.35, 0.0, -0.025, 0, 0, 0, 1)),
               SceneObject('ball', 'sphere', (0.05,), (0.5, 0.1, 0.2, 0, 0, 0, 1)),
               SceneObject('post', 'cylinder', (0.3, 0.02), (0.4, -0.2, 0.15, 0, 0, 0.7071068, 0.7071068))]
    markers = scene_markers(objects, 'panda_link0', Time(sec=3)).markers
    assert (markers[0].action, markers[0].ns) == (Marker.DELETEALL, 'sim_scene')  # only the sim's own
    assert {m.ns for m in markers} == {'sim_scene'}
    by_name = {m.text: m for m in markers[1:]}
    assert all(m.header.frame_id == 'panda_link0' and m.action == Marker.ADD and m.color.a > 0 for m in markers[1:])
    assert (by_name['table'].type, by_name['table'].scale.x, by_name['table'].scale.z) == (Marker.CUBE, 1.3, 0.05)
    assert by_name['ball'].type == Marker.SPHERE and by_name['ball'].scale.y == pytest.approx(0.1)
    post = by_name['post']
    assert (post.type, post.scale.x, post.scale.z) == (Marker.CYLINDER, pytest.approx(0.04), pytest.approx(0.3))
    assert post.pose.orientation.w == pytest.approx(0.7071068) and post.pose.position.y == pytest.approx(-0.2)
    assert len({m.id for m in markers[1:]}) == 3


def test_status_values_become_strict_json():
    value = json_safe({'d': np.float64(np.inf), 'v': np.array([1.5, np.nan]), 'b': np.bool_(True),
                           'i': np.int64(4)})
    assert json.loads(json.dumps(value, allow_nan=False)) == {'d': None, 'v': [1.5, None], 'b': True, 'i': 4}


def _trajectory(names, rows, times, stamp=(0, 0)) -> JointTrajectory:
    msg = JointTrajectory(joint_names=list(names))
    msg.header.stamp = Time(sec=stamp[0], nanosec=stamp[1])
    for row, t in zip(rows, times):
        sec = int(np.floor(t))
        msg.points.append(JointTrajectoryPoint(positions=[float(x) for x in row],
                                               time_from_start=Duration(sec=sec, nanosec=int(round((t - sec) * 1e9)))))
    return msg


def test_parse_command_maps_joints_by_name_and_fills_left_out_joints():
    setpoint = np.arange(8) * 0.1
    names = list(reversed(PANDA_JOINTS[:7]))  # arm only, any order
    command = parse_command(_trajectory(names, [[1, 2, 3, 4, 5, 6, 7]], [0.0]), setpoint, True, 0.002)
    assert command.points[0, :7].tolist() == [7, 6, 5, 4, 3, 2, 1]
    assert command.points[0, 7] == pytest.approx(0.7)  # the gripper holds its setpoint
    assert command.time_from_start.tolist() == [0.002]  # "due now" becomes one physics step
    with pytest.raises(MessageError, match='leaves out'):
        parse_command(_trajectory(names, [[1] * 7], [0.1]), setpoint, False, 0.002)
    with pytest.raises(MessageError, match="unknown joints \\['elbow'\\]"):
        parse_command(_trajectory([*PANDA_JOINTS[:7], 'elbow'], [[0] * 8], [0.1]), setpoint, True, 0.002)


def test_parameters_are_validated_with_their_names():
    with pytest.raises(ValueError, match='task .fly.'):
        SimRobotParams(task='fly')
    with pytest.raises(ValueError, match='joint_state_rate_hz'):
        SimRobotParams(joint_state_rate_hz=20.0)


# ---------------------------------------------------------------------- the node over DDS
class Inbox:
    """Messages of one topic with their wall receive times; waits wake on arrival."""

    def __init__(self, parse=None) -> None:
        self.items: list[tuple[float, object]] = []
        self.cond = threading.Condition()
        self.parse = parse or (lambda m: m)

    def __call__(self, msg) -> None:
        with self.cond:
            self.items.append((time.monotonic(), self.parse(msg)))
            self.cond.notify_all()

    def __len__(self) -> int:
        with self.cond:
            return len(self.items)

    def latest(self):
        with self.cond:
            return self.items[-1][1] if self.items else None

    def wait_for(self, predicate, what: str, proc: subprocess.Popen, timeout: float = TIMEOUT, after: int = 0):
        """The first message from index `after` on that satisfies `predicate`, waiting for new arrivals."""
        deadline = time.monotonic() + timeout
        seen = after
        with self.cond:
            while True:
                for _, msg in self.items[seen:]:
                    if predicate(msg):
                        return msg
                seen = len(self.items)
                remaining = deadline - time.monotonic()
                if remaining <= 0 or proc.poll() is not None:
                    raise AssertionError(f'timed out waiting for {what} (node exit code {proc.poll()}):\n'
                                         + _node_output(proc))
                self.cond.wait(min(remaining, 0.5))

    def wait_count(self, count: int, what: str, proc: subprocess.Popen, timeout: float = TIMEOUT) -> list:
        """The next `count` messages as (wall receive time, message) pairs."""
        with self.cond:
            start = len(self.items)
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.items) < start + count:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or proc.poll() is not None:
                    raise AssertionError(f'timed out waiting for {what} (node exit code {proc.poll()}):\n'
                                         + _node_output(proc))
                self.cond.wait(min(remaining, 0.5))
            return self.items[start:start + count]


def _node_output(proc: subprocess.Popen) -> str:
    proc.log.flush()
    return Path(proc.log.name).read_text()[-4000:]


class SimClient:
    """A test node in its own rclpy context, spun on a thread."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node('sim_robot_test_client', context=self.context)
        self.joint_states, self.images, self.wrist_images, self.clock = Inbox(), Inbox(), Inbox(), Inbox()
        self.scene, self.status = Inbox(), Inbox(lambda m: json.loads(m.data))
        n = self.node
        # 2 s of samples: a test process starved by a loaded machine must not lose any to a full queue
        n.create_subscription(JointState, '/joint_states', self.joint_states, 200)
        n.create_subscription(Image, '/camera/color/image_raw', self.images, 10)
        n.create_subscription(Image, '/camera/wrist/image_raw', self.wrist_images, 10)
        n.create_subscription(Clock, '/clock', self.clock, 50)
        n.create_subscription(MarkerArray, '/collision_scene', self.scene, LATCHED)
        n.create_subscription(String, '/sim_robot_node/task_status', self.status, LATCHED)
        self.command_pub = n.create_publisher(JointTrajectory, '/arm_controller/joint_trajectory', 10)
        self.reset_client = n.create_client(Trigger, '/sim_robot_node/reset')
        self.params_client = n.create_client(SetParameters, '/sim_robot_node/set_parameters')
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(n)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def wait_until(self, condition, what: str, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        done = threading.Event()
        while not condition():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f'timed out waiting for {what}:\n' + _node_output(self.proc))
            done.wait(0.05)  # polls a graph query; no message to wake on

    def call(self, client, request, timeout: float = TIMEOUT):
        assert client.wait_for_service(timeout_sec=timeout), f'service {client.srv_name} not available'
        finished = threading.Event()
        future = client.call_async(request)
        future.add_done_callback(lambda _: finished.set())
        assert finished.wait(timeout), f'service {client.srv_name} did not answer in {timeout} s'
        return future.result()

    def set_parameters(self, **values):
        parameters = [Parameter(k, value=v).to_parameter_msg() for k, v in values.items()]
        request = SetParameters.Request(parameters=parameters)
        return self.call(self.params_client, request).results

    def reset(self) -> Trigger.Response:
        return self.call(self.reset_client, Trigger.Request())

    def send(self, msg: JointTrajectory) -> None:
        self.command_pub.publish(msg)

    def positions(self) -> np.ndarray:
        msg = self.joint_states.latest()
        order = [list(msg.name).index(n) for n in PANDA_JOINTS]
        return np.asarray(msg.position)[order]

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self.thread.join(timeout=5)


def start_node(*params: str) -> subprocess.Popen:
    log = tempfile.NamedTemporaryFile('w+', prefix='sim_robot_node_', suffix='.log', delete=False)
    args = [sys.executable, '-m', 'diffusion_policy_ros.nodes.sim_robot_node', '--ros-args']
    for p in params:
        args += ['-p', p]
    # The whole environment: the ROS wheels' bootstrap needs LD_LIBRARY_PATH (and conftest's domain id).
    proc = subprocess.Popen(args, env=os.environ.copy(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    proc.log = log
    return proc


@pytest.fixture(scope='module')
def sim():
    proc = start_node('task:=pick_place', 'seed:=0', f'camera_width:={WIDTH}', f'camera_height:={HEIGHT}',
                      f'joint_state_rate_hz:={JOINT_RATE}', 'camera_rate_hz:=15.0', 'episode_seconds:=600.0',
                      'wrist_camera:=true')
    client = SimClient(proc)
    try:
        client.joint_states.wait_for(lambda m: True, 'the first joint state', proc, timeout=60.0)
        client.wait_until(lambda: client.command_pub.get_subscription_count() > 0, 'the command subscription')
        yield client
    finally:
        client.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        proc.log.close()
        os.unlink(proc.log.name)


def test_scene_and_status_are_latched_at_start(sim):
    scene = sim.scene.wait_for(lambda m: True, 'the latched /collision_scene', sim.proc)
    assert scene.markers[0].action == Marker.DELETEALL
    table = [m for m in scene.markers if m.text == 'table']
    assert len(table) == 1 and table[0].type == Marker.CUBE and table[0].header.frame_id == 'panda_link0'
    assert table[0].pose.position.z < 0 < table[0].scale.z  # the table top is the z = 0 plane
    status = sim.status.wait_for(lambda m: True, 'the latched task status', sim.proc)
    assert (status['task'], status['seed'], status['episode'], status['done']) == ('pick_place', 0, 1, False)
    assert len(status['info']['cube_position']) == 3


def test_joint_states_arrive_at_rate_with_every_joint(sim):
    received, messages = zip(*sim.joint_states.wait_count(60, '60 joint states', sim.proc))
    for msg in messages:
        assert tuple(msg.name) == PANDA_JOINTS
        assert len(msg.position) == len(msg.velocity) == len(PANDA_JOINTS)
        assert np.all(np.isfinite(msg.position))
    stamps = np.array([stamp_to_seconds(m.header.stamp) for m in messages])
    np.testing.assert_allclose(np.diff(stamps), 1.0 / JOINT_RATE, atol=1e-6)  # one sample per period, none lost
    wall_rate = (len(received) - 1) / (received[-1] - received[0])
    assert wall_rate >= 50.0, f'joint states at {wall_rate:.1f} Hz of wall time'


def test_images_have_the_configured_size_and_rgb8(sim):
    images = [m for _, m in sim.images.wait_count(3, '3 camera images', sim.proc)]
    for msg in images:
        assert (msg.width, msg.height, msg.encoding, msg.step) == (WIDTH, HEIGHT, 'rgb8', 3 * WIDTH)
        assert len(msg.data) == HEIGHT * msg.step
        assert msg.header.frame_id == 'camera_color_optical_frame'
    pixels = np.frombuffer(images[-1].data, np.uint8).reshape(HEIGHT, WIDTH, 3)
    assert pixels.std() > 5.0, 'the rendered frame is blank'
    stamps = np.array([stamp_to_seconds(m.header.stamp) for m in images])
    np.testing.assert_allclose(np.diff(stamps), 1.0 / 15.0, atol=2.5e-3)  # rate in sim time (one physics step)
    wrist = sim.wrist_images.wait_for(lambda m: m.header.stamp == images[-1].header.stamp, 'the wrist image',
                                      sim.proc)
    assert (wrist.width, wrist.height, wrist.encoding) == (WIDTH, HEIGHT, 'rgb8')
    assert wrist.header.frame_id == 'wrist_camera_optical_frame' and bytes(wrist.data) != bytes(images[-1].data)


def test_clock_advances_and_stamps_are_sim_time(sim):
    ticks = [m for _, m in sim.clock.wait_count(20, '20 /clock messages', sim.proc)]
    times = np.array([stamp_to_seconds(m.clock) for m in ticks])
    assert np.all(np.diff(times) > 0)
    assert times[-1] < 1e5, 'the clock publishes wall time, not sim time'
    sim.joint_states.wait_count(2, 'more joint states', sim.proc)
    latest_stamp = stamp_to_seconds(sim.joint_states.latest().header.stamp)
    latest_clock = stamp_to_seconds(sim.clock.latest().clock)
    assert abs(latest_stamp - latest_clock) < 0.5  # both in sim time


def _converged(sim, target: np.ndarray, tol: float = 0.01) -> bool:
    return bool(np.all(np.abs(sim.positions() - target) < tol))


def test_trajectory_moves_the_arm_to_its_target(sim):
    start = sim.positions()
    accepted = sim.status.latest()['commands_accepted']
    target = start + np.array([0.25, -0.2, 0.15, 0.2, -0.15, 0.2, -0.25, -0.015])
    names = list(reversed(PANDA_JOINTS))  # joints are matched by name, not position
    middle = (start + target) / 2
    sim.send(_trajectory(names, [middle[::-1], target[::-1]], [0.4, 0.8]))
    sim.wait_until(lambda: _converged(sim, target), f'joints to converge to {target.round(3)}', timeout=15.0)
    status = sim.status.wait_for(lambda s: s['commands_accepted'] == accepted + 1, 'the accepted count', sim.proc)
    assert status['commands_rejected'] == 0


def test_arm_only_command_leaves_the_gripper_where_it_is(sim):
    start = sim.positions()
    target = start.copy()
    target[:7] -= 0.1
    sim.send(_trajectory(PANDA_JOINTS[:7], [target[:7]], [0.4]))
    sim.wait_until(lambda: _converged(sim, target, 0.005), 'the arm joints to converge, gripper unchanged')


def test_malformed_commands_are_rejected_and_the_arm_keeps_its_command(sim):
    held = sim.positions()
    # The status is published at 2 Hz: take a fresh one, so a command the previous test sent just
    # before is already counted in `before`.
    now = stamp_to_seconds(sim.clock.latest().clock)
    before = sim.status.wait_for(lambda s: s['sim_time'] > now + 0.6, 'a fresh status', sim.proc)
    moved = list(held[:7] + 0.3) + [held[7]]  # where each command would take the arm if it were executed
    nan_row = list(moved)
    nan_row[3] = float('nan')
    far_future = (2_000_000_000, 0)  # wall-clock stamp from a publisher not on /clock
    bad = [
        _trajectory([*PANDA_JOINTS[:7], 'panda_joint9'], [moved], [0.2]),  # unknown joint
        _trajectory(PANDA_JOINTS, [nan_row], [0.2]),  # NaN
        _trajectory(PANDA_JOINTS, [moved, moved], [0.2, 0.2]),  # non-increasing time
        _trajectory(PANDA_JOINTS, [], []),  # no points
        _trajectory([], [], []),  # nothing at all
        _trajectory(PANDA_JOINTS, [moved], [0.2], stamp=far_future),
    ]
    for msg in bad:
        sim.send(msg)
    status = sim.status.wait_for(lambda s: s['commands_rejected'] >= before['commands_rejected'] + len(bad),
                                 f'{len(bad)} rejections', sim.proc)
    assert 'use_sim_time' in status['last_rejection']
    assert status['commands_accepted'] == before['commands_accepted']
    assert sim.proc.poll() is None
    sim.joint_states.wait_count(30, 'joint states after the rejections', sim.proc)
    assert _converged(sim, held, 0.005), 'a rejected command moved the arm'


def _obstacle(scene: MarkerArray):
    found = [m for m in scene.markers if m.text == 'obstacle']
    return found[0] if found else None


def test_reset_with_another_task_and_seed_changes_the_scene_and_counts_episodes(sim):
    episode = sim.status.latest()['episode']
    clock_before = stamp_to_seconds(sim.clock.latest().clock)
    results = sim.set_parameters(task='reach_around', seed=3)
    assert all(r.successful for r in results), [r.reason for r in results]
    scenes = len(sim.scene)
    response = sim.reset()
    assert response.success, response.message
    first = sim.scene.wait_for(lambda m: _obstacle(m) is not None, 'a scene with the obstacle', sim.proc)
    assert first.markers[0].action == Marker.DELETEALL and len(sim.scene) > scenes
    status = sim.status.wait_for(lambda s: s['episode'] == episode + 1, 'the status of the new episode', sim.proc)
    assert (status['task'], status['seed'], status['done']) == ('reach_around', 3, False)
    assert status['episode_time'] < 1.0 and status['sim_time'] > clock_before  # episode restarts, /clock does not
    assert 'side' in status['info'] and 'obstacle_contact' in status['info']

    # Back to pick_place with another seed: the obstacle goes (every array replaces the whole scene) and
    # the cube lies elsewhere than in episode 1 (seed 0).
    assert all(r.successful for r in sim.set_parameters(task='pick_place', seed=5))
    scenes = len(sim.scene)
    assert sim.reset().success
    status = sim.status.wait_for(lambda s: s['episode'] == episode + 2, 'the status of episode +2', sim.proc)
    assert (status['task'], status['seed']) == ('pick_place', 5)
    last = sim.scene.wait_for(lambda m: True, 'the scene of episode +2', sim.proc, after=scenes)
    assert _obstacle(last) is None and [m.text for m in last.markers[1:]] == ['table']
    first_status = sim.status.wait_for(lambda s: s['episode'] == 1, 'the first status', sim.proc)
    cube_seed0, cube_seed5 = first_status['info']['cube_position'], status['info']['cube_position']
    assert np.linalg.norm(np.subtract(cube_seed0, cube_seed5)[:2]) > 1e-3, 'another seed should move the cube'
    with sim.clock.cond:
        clock = [stamp_to_seconds(m.clock) for _, m in sim.clock.items]
    assert np.all(np.diff(clock) > 0), '/clock went backwards across resets'


def test_runtime_parameters_are_validated(sim):
    bad_task, = sim.set_parameters(task='fly')
    assert not bad_task.successful and 'fly' in bad_task.reason
    fixed, = sim.set_parameters(camera_width=32)
    assert not fixed.successful and 'camera_width' in fixed.reason


def test_a_finished_episode_holds_until_reset(sim):
    before = sim.status.latest()
    episode, accepted = before['episode'], before['commands_accepted']
    assert all(r.successful for r in sim.set_parameters(episode_seconds=1.5))
    assert sim.reset().success
    # Right after a reset commands are ignored (reset_settle_s): one computed from the last episode's
    # measurements would drag the arm back to where that episode ended.
    stale = sim.positions()
    stale[1] += 0.5
    sim.send(_trajectory(PANDA_JOINTS, [stale], [0.1]))
    settled = sim.status.wait_for(lambda s: s['episode'] == episode + 1 and s['episode_time'] >= 0.2
                                  and s['commands_ignored_settling'] > before['commands_ignored_settling'],
                                  'the command ignored while settling', sim.proc)
    assert settled['commands_accepted'] == accepted
    slow = sim.positions()
    assert abs(slow[1] - stale[1]) > 0.4, 'the arm followed a command sent while the reset settled'
    slow[0] += 1.0
    sim.send(_trajectory(PANDA_JOINTS, [slow], [3.0]))  # still under way when the time limit hits
    done = sim.status.wait_for(lambda s: s['episode'] == episode + 1 and s['done'], 'the time limit', sim.proc)
    assert done['holding'] and not done['success'] and done['time_limit'] == pytest.approx(1.5)
    assert done['commands_accepted'] == accepted + 1, 'the slow command should start before the time limit'
    sim.joint_states.wait_count(20, 'joint states after the time limit', sim.proc)
    held = sim.positions()
    sim.joint_states.wait_count(50, 'more joint states', sim.proc)
    assert _converged(sim, held, 0.005), 'the arm kept following its trajectory after the time limit'
    assert held[0] < slow[0] - 0.5
    moved = held.copy()
    moved[0] += 0.3
    sim.send(_trajectory(PANDA_JOINTS, [moved], [0.1]))
    sim.status.wait_for(lambda s: s['commands_ignored_done'] > done['commands_ignored_done'], 'the ignored command',
                        sim.proc)
    sim.joint_states.wait_count(30, 'joint states after the ignored command', sim.proc)
    assert _converged(sim, held, 0.005), 'a finished episode followed a command'


def test_sigint_stops_the_node_cleanly(sim):
    sim.proc.send_signal(signal.SIGINT)
    try:
        code = sim.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:  # a hang: faulthandler (conftest) prints where each thread is
        sim.proc.send_signal(signal.SIGABRT)
        sim.proc.wait(10)
        pytest.fail(f'sim_robot_node did not stop within 15 s of SIGINT:\n{_node_output(sim.proc)}')
    assert code == 0
    output = _node_output(sim.proc)
    assert 'Traceback' not in output, output


@pytest.mark.parametrize('params, words', [
    (['task:=fly'], ["task 'fly'", 'reach_around']),
    (['task:=pick_place', 'camera_rate:=15.0'], ["unknown parameter(s) ['camera_rate']", 'camera_rate_hz']),
], ids=['bad_value', 'misspelt_name'])
def test_bad_parameters_stop_the_node_with_a_message_naming_them(params, words):
    """A wrong value, or a name the node does not know (ROS would ignore it silently), stops the node
    with a message naming it and what is known."""
    proc = start_node(*params)
    try:
        assert proc.wait(timeout=60) == 1
        output = _node_output(proc)
        assert all(w in output for w in words), output
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.log.close()
        os.unlink(proc.log.name)
