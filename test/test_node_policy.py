"""policy_node over real DDS: rate, message contents, limits, HOLD reasons and recovery, slow inference.

The node runs as a subprocess with a tiny untrained checkpoint (these tests are about the real-time
plumbing, not about what the policy learned); a test node plays camera + joint-state publisher.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from trajectory_msgs.msg import JointTrajectory

from diffusion_policy_ros.control.limits import JointLimits
from diffusion_policy_ros.nodes.messages import duration_to_seconds, make_image, seconds_to_stamp, stamp_to_seconds
from diffusion_policy_ros.robot_description import PANDA_HOME, PANDA_JOINTS, panda_description

from ros_helpers import NodeProcess, SpinningNode, wait_for

pytestmark = pytest.mark.ros
IMAGE_TOPIC = '/test_cam/image_raw'
OUTPUT_TOPIC = '/test_policy/joint_trajectory'


@pytest.fixture(scope='module')
def tiny_checkpoint(tmp_path_factory):
    from diffusion_policy_ros.core.checkpoint import save_checkpoint
    from diffusion_policy_ros.core.config import ActionSpec, ObservationSpec, PolicyConfig
    from diffusion_policy_ros.core.normalizer import Normalizer
    from diffusion_policy_ros.core.policy import build_policy
    rng = np.random.default_rng(0)
    home = np.array(PANDA_HOME)
    samples = home + rng.normal(0, 0.3, (256, len(home)))
    normalizer = Normalizer.fit({'state': samples, 'action': samples}, image_keys=['camera'])
    policy = build_policy(PolicyConfig.tiny(),
                          ObservationSpec(camera_keys=['camera'], image_shape=(40, 40),
                                          joint_names=list(PANDA_JOINTS), state_dim=len(PANDA_JOINTS)),
                          ActionSpec(joint_names=list(PANDA_JOINTS), dim=len(PANDA_JOINTS)), normalizer)
    return save_checkpoint(policy, tmp_path_factory.mktemp('ckpt') / 'tiny', {'purpose': 'test'})


class FakeRobot(SpinningNode):
    """Publishes camera images at 30 Hz and joint states at 50 Hz, stamped now; faults on request."""

    def __init__(self):
        super().__init__('fake_robot')
        node = self.node
        self.image_pub = node.create_publisher(Image, IMAGE_TOPIC, qos_profile_sensor_data)
        self.joint_pub = node.create_publisher(JointState, '/joint_states', qos_profile_sensor_data)
        self.camera_on = True
        self.image_encoding = 'rgb8'
        self.image_size = (48, 64)
        self.image_stamp_offset_s = 0.0  # one frame stamped this far ahead, then back to normal
        self.joint_positions_override = None  # positions list to publish instead (may be any length)
        self.joint_names = list(PANDA_JOINTS)
        self.positions = np.array(PANDA_HOME, dtype=float)
        self.trajectories: list[tuple[float, JointTrajectory]] = []
        self.diagnostics: list[dict[str, str]] = []
        self._lock = threading.Lock()
        node.create_subscription(JointTrajectory, OUTPUT_TOPIC, self._on_trajectory, 50)
        node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, 50)
        node.create_timer(1 / 30, self._publish_image)
        node.create_timer(1 / 50, self._publish_joints)

    def _publish_image(self):
        if not self.camera_on:
            return
        now = self.node.get_clock().now()
        rgb = np.full((*self.image_size, 3), 120, np.uint8)
        msg = make_image(rgb, now.to_msg())
        if self.image_encoding != 'rgb8':
            msg.encoding = self.image_encoding
        if self.image_stamp_offset_s:
            msg.header.stamp = seconds_to_stamp(now.nanoseconds * 1e-9 + self.image_stamp_offset_s)
            self.image_stamp_offset_s = 0.0
        self.image_pub.publish(msg)

    def _publish_joints(self):
        msg = JointState()
        msg.header.stamp = self.node.get_clock().now().to_msg()
        msg.name = list(self.joint_names)
        if self.joint_positions_override is not None:
            msg.position = [float(x) for x in self.joint_positions_override]
        else:
            msg.position = [float(x) for x in self.positions[:len(self.joint_names)]]
        self.joint_pub.publish(msg)

    def _on_trajectory(self, msg):
        with self._lock:
            self.trajectories.append((time.monotonic(), msg))

    def _on_diagnostics(self, msg):
        for status in msg.status:
            if status.name.startswith('policy_node'):
                with self._lock:
                    self.diagnostics.append({kv.key: kv.value for kv in status.values})

    def trajectories_since(self, t0: float) -> list[JointTrajectory]:
        with self._lock:
            return [m for t, m in self.trajectories if t >= t0]

    def latest_diagnostics(self) -> dict[str, str]:
        with self._lock:
            return self.diagnostics[-1] if self.diagnostics else {}

    def wait_state(self, state: str, code: str = '', timeout: float = 10.0) -> dict[str, str]:
        since = len(self.diagnostics)

        def reached():
            with self._lock:
                fresh = self.diagnostics[since:]
            return any(d.get('state') == state and code in d.get('reason', '') + d.get('hold_code', '')
                       for d in fresh)
        wait_for(reached, timeout, f'diagnostics state {state} {code}')
        return self.latest_diagnostics()


def publish_period(stamps: list[float]) -> float:
    """Mean period as the least-squares slope of stamp against message index: every message counts,
    so one late publish at either end of the window (a loaded CI machine) cannot skew it."""
    return float(np.polyfit(np.arange(len(stamps)), np.asarray(stamps), 1)[0])


def start_policy_node(checkpoint, extra_args=None, **overrides) -> NodeProcess:
    params = {'checkpoint': str(checkpoint), 'camera_topics': [IMAGE_TOPIC], 'output_topic': OUTPUT_TOPIC,
              'num_inference_steps': 4, 'control_rate_hz': 10.0, 'max_obs_age_s': 0.5,
              'diagnostics_rate_hz': 4.0, 'device': 'cpu'}
    params.update(overrides)
    params = {k: v for k, v in params.items() if v is not None}  # None: leave the parameter unset
    return NodeProcess('diffusion_policy_ros.nodes.policy_node', params, extra_args)


@pytest.fixture(scope='module')
def robot():
    fake = FakeRobot()
    yield fake
    fake.close()


@pytest.fixture(scope='module')
def policy_node(tiny_checkpoint, robot):
    proc = start_policy_node(tiny_checkpoint)
    try:
        wait_for(lambda: len(robot.trajectories_since(0)) >= 3 or not proc.alive(), 60, 'first trajectories')
        assert proc.alive(), proc.output
        yield proc
    finally:
        proc.stop()


def test_publishes_at_10hz_with_names_increasing_times_and_limits(policy_node, robot):
    robot.wait_state('RUNNING')
    t0 = time.monotonic()
    wait_for(lambda: len(robot.trajectories_since(t0)) >= 31, 15, '31 trajectories')
    msgs = robot.trajectories_since(t0)[:31]
    mean_period = publish_period([stamp_to_seconds(m.header.stamp) for m in msgs])
    assert abs(mean_period - 0.1) <= 0.002, f'mean period {mean_period:.4f} s'
    limits = JointLimits.from_urdf(panda_description().urdf_text(), PANDA_JOINTS)
    for msg in msgs:
        assert list(msg.joint_names) == list(PANDA_JOINTS)
        times = [duration_to_seconds(p.time_from_start) for p in msg.points]
        assert times[0] > 0 and np.all(np.diff(times) > 0), times
        points = np.array([p.positions for p in msg.points])
        assert np.all(points >= limits.lower - 1e-9) and np.all(points <= limits.upper + 1e-9)
        steps = np.abs(np.diff(np.vstack([robot.positions, points]), axis=0))
        assert np.all(steps <= limits.max_velocity * 0.1 + 1e-6), 'velocity limit violated'


def test_camera_stop_holds_within_age_limit_and_resumes(policy_node, robot):
    robot.wait_state('RUNNING')
    robot.camera_on = False
    stopped = time.monotonic()
    diag = robot.wait_state('HOLD', 'STALE', timeout=5)
    # HOLD must be reached within max_obs_age_s + one period (+ diagnostics period and DDS slack).
    assert time.monotonic() - stopped <= 0.5 + 0.1 + 0.25 + 0.3
    assert IMAGE_TOPIC in diag['reason']
    hold_msgs = robot.trajectories_since(time.monotonic())
    wait_for(lambda: len(robot.trajectories_since(stopped + 1.0)) >= 2, 5, 'hold trajectories')
    for msg in robot.trajectories_since(stopped + 1.0)[:2]:
        assert len(msg.points) == 1  # holding the measured position
        np.testing.assert_allclose(msg.points[0].positions, robot.positions, atol=1e-9)
    del hold_msgs
    robot.camera_on = True
    robot.wait_state('RUNNING', timeout=5)


FAULTS = {
    'nan': ('NON_FINITE', dict(joint_positions_override=[*PANDA_HOME[:2], float('nan'), *PANDA_HOME[3:]])),
    'inf': ('NON_FINITE', dict(joint_positions_override=[float('inf'), *PANDA_HOME[1:]])),
    'out_of_limits': ('OUT_OF_LIMITS', dict(joint_positions_override=[50.0, *PANDA_HOME[1:]])),
    'duplicate': ('DUPLICATE_JOINT', dict(joint_names=[*PANDA_JOINTS, 'panda_joint1'],
                                          joint_positions_override=[*PANDA_HOME, PANDA_HOME[0] + 1.0])),
    'empty': ('MISSING_JOINT', dict(joint_names=[], joint_positions_override=[])),
    'missing_joint': ('MISSING_JOINT', dict(joint_names=list(PANDA_JOINTS[:-1]))),
    'encoding': ('BAD_IMAGE', dict(image_encoding='yuv422_weird')),
    'zero_size': ('BAD_IMAGE', dict(image_size=(0, 0))),
}


@pytest.mark.parametrize('fault', list(FAULTS))
def test_bad_input_holds_at_the_measured_position_from_the_first_tick(policy_node, robot, fault):
    """Each untrusted input: HOLD with its code, and from the first ticks of the fault single points at
    the last trusted position at the control rate (the arm stops executing the old chunk) for as long as
    that position is no older than max_obs_age_s, never a point outside the limits; the node resumes
    when the input is good again."""
    code, settings_ = FAULTS[fault]
    robot.wait_state('RUNNING')
    limits = JointLimits.from_urdf(panda_description().urdf_text(), PANDA_JOINTS)
    began = time.monotonic()
    try:
        for key, value in settings_.items():
            setattr(robot, key, value)
        diag = robot.wait_state('HOLD', code, timeout=5)
        assert diag['reason'] and f'rejected {code}' in diag, diag
        time.sleep(0.7)  # past max_obs_age_s (0.5 s) of the fault
        sent = robot.trajectories_since(began)
        # a HOLD is one point at the measured position (a chunk's last point is one point too, elsewhere)
        first_hold = next(i for i, m in enumerate(sent)
                          if len(m.points) == 1 and np.allclose(m.points[0].positions, PANDA_HOME, atol=1e-9))
        holds = [m for m in sent[first_hold:] if len(m.points) == 1]
        assert len(holds) >= 3, f'{len(holds)} hold commands'
        period = publish_period([stamp_to_seconds(m.header.stamp) for m in holds[:3]])
        assert abs(period - 0.1) < 0.02, f'holding at {period:.3f} s per command'
        assert all(len(m.points) == 1 for m in sent[first_hold:]), 'the old chunk ran on during the fault'
        for msg in holds:
            np.testing.assert_allclose(msg.points[0].positions, PANDA_HOME, atol=1e-9)
    finally:
        robot.joint_names = list(PANDA_JOINTS)
        robot.joint_positions_override = None
        robot.image_encoding = 'rgb8'
        robot.image_size = (48, 64)
    robot.wait_state('RUNNING', timeout=5)
    for msg in robot.trajectories_since(began):
        points = np.array([p.positions for p in msg.points])
        assert np.all(points >= limits.lower) and np.all(points <= limits.upper), fault
    assert policy_node.alive(), policy_node.output


def test_one_frame_stamped_in_the_future_does_not_disable_the_node(policy_node, robot):
    """The frame is rejected, not stored (it would stay 'newest' for 1000 s); the next one, stamped
    now, clears the fault."""
    robot.wait_state('RUNNING')
    robot.image_stamp_offset_s = 1000.0
    wait_for(lambda: 'rejected FUTURE_STAMP' in robot.latest_diagnostics(), 5, 'the frame to be rejected')
    diag = robot.wait_state('RUNNING', timeout=2)
    assert 0 <= float(diag[f'obs_age_s {IMAGE_TOPIC}']) < 0.5, diag


def test_slow_inference_keeps_rate_and_drops_late_actions(tiny_checkpoint, robot, policy_node):
    """Inference slower than the period: the timer keeps 10 Hz and the actions that came due while the
    policy was thinking are dropped. With 7 actions per chunk and 0.15 s of inference, the chunk of an
    observation taken at a tick arrives two ticks later with at most 5 of its 7 actions still ahead (the
    frames are taken just after the tick, so a row may fall due a few ms after the later tick); 7 would
    be sent if late actions were replayed."""
    received: list[JointTrajectory] = []
    diagnostics: list[dict[str, str]] = []
    subs = [robot.node.create_subscription(JointTrajectory, '/slow/joint_trajectory', received.append, 50),
            robot.node.create_subscription(
                DiagnosticArray, '/diagnostics',
                lambda m: diagnostics.extend({kv.key: kv.value for kv in s.values}
                                             for s in m.status if s.name.startswith('slow_policy')), 50)]
    slow = start_policy_node(tiny_checkpoint, inference_delay_s=0.15, n_action_steps=7, blending='none',
                             output_topic='/slow/joint_trajectory', extra_args=['-r', '__node:=slow_policy_node'])
    try:
        wait_for(lambda: sum(len(m.points) > 1 for m in received) >= 10 or not slow.alive(), 60,
                 '10 chunk trajectories from the slow node')
        assert slow.alive(), slow.output
        mean_period = publish_period([stamp_to_seconds(m.header.stamp) for m in received[-25:]])
        # a tick that waited for the 0.15 s inference would make it 0.15; the tolerance is for lateness
        # under load at the ends of the window (a CPU hog beside the test moved it to 0.0979)
        assert abs(mean_period - 0.1) <= 0.01, f'mean period {mean_period:.4f} s'
        assert max(len(m.points) for m in received) <= 5
        wait_for(lambda: diagnostics and int(diagnostics[-1]['dropped_actions']) > 0, 5, 'dropped actions')
        assert float(diagnostics[-1]['inference_latency_p50_ms']) >= 150
    finally:
        for sub in subs:
            robot.node.destroy_subscription(sub)
        slow.stop()


def test_a_4000x3000_camera_at_30_hz_in_another_process_does_not_slow_the_control_rate(tiny_checkpoint, robot):
    """Frames are copied out of DDS on the camera thread without the GIL and decoded only when used, so a
    4000x3000 rgb8 camera (36 MB frames, 1 GB/s) from another process leaves the 10 Hz tick alone."""
    import os
    import subprocess
    import sys
    topic = '/big_cam/image_raw'
    received: list[float] = []
    states: list[str] = []
    subs = [robot.node.create_subscription(JointTrajectory, '/big/joint_trajectory',
                                           lambda m: received.append(stamp_to_seconds(m.header.stamp)), 50),
            robot.node.create_subscription(DiagnosticArray, '/diagnostics', lambda m: states.extend(
                kv.value for st in m.status if st.name.startswith('big_camera_policy_node')
                for kv in st.values if kv.key == 'state'), 50)]
    camera = subprocess.Popen([sys.executable, str(Path(__file__).parent / 'camera_driver.py'), topic, '4000x3000'],
                              env=os.environ.copy())
    # The camera thread runs 10 nice steps below the tick, so on a machine that is busy anyway (a CPU
    # hog beside the test) a 36 MB frame can take a second to copy: the frames may be that old here,
    # because this test is about the tick's rate, not about frame freshness.
    node = start_policy_node(tiny_checkpoint, camera_topics=[topic], output_topic='/big/joint_trajectory',
                             max_obs_age_s=3.0, extra_args=['-r', '__node:=big_camera_policy_node'])
    try:
        wait_for(lambda: len(received) >= 20 or not node.alive(), 90, 'the node to publish')
        assert node.alive(), node.output
        try:
            wait_for(lambda: 'RUNNING' in states, 60, 'the policy to run on the 4000x3000 frames')
        except AssertionError as err:  # say why it held (once seen only in a full suite beside a CPU hog)
            raise AssertionError(f'{err}; states {sorted(set(states))}; node log tail:\n{node.output}') from None
        start = len(received)
        time.sleep(8.0)
        stamps = sorted(received[start:])
        rate = 1.0 / publish_period(stamps)
        assert rate >= 9.5, f'{rate:.2f} Hz with a 4000x3000 camera at 30 Hz'
        # A gap is what the soak counts as one (benchmarks/soak.py): over 2 periods. Before frames were
        # taken off the GIL (test_polled checks that path), one copy stalled the tick 0.17 s here. Since
        # then one tick in a full suite still came 64 ms late (a 0.164 s gap): a normally scheduled thread
        # held the GIL while both cores were saturated, and a real-time tick waits for it like any other.
        assert max(np.diff(stamps)) < 0.2, f'a gap of {max(np.diff(stamps)):.3f} s between two commands'
        # The executor thread runs real time (the default realtime_priority) where the machine allows it;
        # every other thread (inference, camera copies, torch, DDS) is normally scheduled.
        pid, log = node.proc.pid, ''.join(node.lines)
        threads = map(int, os.listdir(f'/proc/{pid}/task'))
        realtime = [tid for tid in threads if os.sched_getscheduler(tid) != os.SCHED_OTHER]
        if 'runs SCHED_FIFO priority 20' in log:
            assert realtime == [pid], log
        else:
            assert realtime == [] and 'SCHED_FIFO 20 refused' in log, log
    finally:
        camera.kill()
        camera.wait()
        for sub in subs:
            robot.node.destroy_subscription(sub)
        node.stop()


def test_mismatched_camera_count_fails_configure_with_a_clear_message(tiny_checkpoint):
    proc = start_policy_node(tiny_checkpoint, camera_topics=['/a', '/b'])
    try:
        wait_for(lambda: 'camera_topics' in proc.output, 60, 'configure error')
        assert 'expects 1 camera(s)' in proc.output
        assert proc.alive()  # waits for lifecycle transitions instead of crashing
    finally:
        proc.stop()


def test_estop_latches_hold_and_stop_start_services(policy_node, robot):
    from std_srvs.srv import SetBool, Trigger
    robot.wait_state('RUNNING')
    node = robot.node

    def call(srv_type, name, request):
        client = node.create_client(srv_type, name)
        assert client.wait_for_service(timeout_sec=20), name
        future = client.call_async(request)
        wait_for(future.done, 10, f'{name} to answer')
        node.destroy_client(client)
        return future.result()

    assert call(SetBool, '/policy_node/estop', SetBool.Request(data=True)).success
    robot.wait_state('HOLD', 'ESTOP', timeout=5)
    since = time.monotonic()
    wait_for(lambda: len(robot.trajectories_since(since)) >= 3, 5, 'hold commands during estop')
    assert all(len(m.points) == 1 for m in robot.trajectories_since(since)[1:])  # holding, latched
    assert call(SetBool, '/policy_node/estop', SetBool.Request(data=False)).success
    robot.wait_state('RUNNING', timeout=5)
    assert call(Trigger, '/policy_node/stop', Trigger.Request()).success
    robot.wait_state('HOLD', 'STOPPED', timeout=5)
    assert call(Trigger, '/policy_node/start', Trigger.Request()).success
    robot.wait_state('RUNNING', timeout=5)


def _diagnostics_of(robot, node_name: str) -> list[dict[str, str]]:
    found: list[dict[str, str]] = []
    robot.node.create_subscription(DiagnosticArray, '/diagnostics', lambda m: found.extend(
        {kv.key: kv.value for kv in st.values} for st in m.status if st.name.startswith(node_name)), 50)
    return found


def test_the_checkpoints_execution_settings_are_the_nodes_defaults(tiny_checkpoint, robot, tmp_path):
    """Exported with 3 steps and 4 actions per chunk, the checkpoint runs that way in the node with no
    parameter saying so (the node's own defaults are 'the checkpoint's')."""
    from diffusion_policy_ros.training.export import export_checkpoint
    released = export_checkpoint(tiny_checkpoint, tmp_path / 'released', 'float32', n_action_steps=4,
                                 num_inference_steps=3)
    found = _diagnostics_of(robot, 'released_policy_node')
    node = start_policy_node(released, extra_args=['-r', '__node:=released_policy_node'],
                             output_topic='/released/joint_trajectory', **{'num_inference_steps': None})
    try:
        wait_for(lambda: found or not node.alive(), 60, 'diagnostics of the released policy')
        assert (found[-1]['num_inference_steps'], found[-1]['n_action_steps']) == ('3', '4'), found[-1]
        assert found[-1]['control_rate_hz'] == '10'
    finally:
        node.stop()


def test_a_misspelt_parameter_fails_configure_naming_it(tiny_checkpoint):
    node = start_policy_node(tiny_checkpoint, num_inference_step=3)
    try:
        wait_for(lambda: 'configure failed' in node.output or not node.alive(), 60, 'configure to fail')
        assert "unknown parameter(s) ['num_inference_step']" in node.output, node.output
        assert 'num_inference_steps' in node.output  # the known names are listed
    finally:
        node.stop()


def test_a_node_rate_other_than_the_checkpoints_is_refused_with_both_rates(tiny_checkpoint, tmp_path):
    import json
    import shutil
    fifteen = tmp_path / 'fifteen_hz'
    shutil.copytree(tiny_checkpoint, fifteen)
    config = json.loads((fifteen / 'config.json').read_text())
    config['policy_config'].setdefault('execution', {})['control_period_s'] = 1 / 15
    (fifteen / 'config.json').write_text(json.dumps(config))
    node = start_policy_node(fifteen, control_rate_hz=10.0)
    try:
        wait_for(lambda: 'configure failed' in node.output or not node.alive(), 60, 'configure to fail')
        assert 'control_rate_hz 10 Hz differs from the 15 Hz checkpoint' in node.output, node.output
    finally:
        node.stop()
