"""`sim_robot_node`: the MuJoCo simulator (`diffusion_policy_ros.sim.SimArm`) as a ROS 2 robot.

It speaks what a real Panda driver stack speaks, so the policy node and the collision guard cannot
tell it from hardware: camera images (rgb8) and `/joint_states` stamped in sim time, `/clock`, a
`JointTrajectory` subscription executed like ros2_control's joint_trajectory_controller, and the
collision scene as a latched `MarkerArray`. `~/reset` (std_srvs/Trigger) starts a new episode with the
node's current `task` and `seed` parameters; `~/task_status` reports progress as JSON.

Threads: physics, rendering and every publication of sensor data run on one sim thread, paced to
wall time x `real_time_factor`. MuJoCo's offscreen GL context is bound to the thread that renders,
so resets (which may rebuild the model and its renderer) are handed to that thread as well. The
executor thread only parses commands and hands them over under a lock.

Time: `/clock` never goes backwards. A reset starts the new episode's physics at 0 (the task's time
limit counts from there) but the published clock continues from where it was: `episode_time` in the
status restarts, `sim_time` (= `/clock`) does not, and `episode` counts up from 1.
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import rclpy
from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory
from visualization_msgs.msg import Marker, MarkerArray

from diffusion_policy_ros.nodes.dds import apply_dds_profile
from diffusion_policy_ros.nodes.lifecycle import stop_taking_signals
from diffusion_policy_ros.nodes.messages import (MessageError, make_image, make_joint_state, seconds_to_stamp,
                                                 trajectory_to_sample)
from diffusion_policy_ros.nodes.params import declare_parameters
from diffusion_policy_ros.robot_description import PANDA_JOINTS
from diffusion_policy_ros.sim.arm import SimArm, SimConfig
from diffusion_policy_ros.sim.model import ALL_TASKS

NODE_NAME = 'sim_robot_node'
# Parameters that take effect at the next ~/reset (task, seed, episode_seconds) or at once
# (real_time_factor); every other parameter shapes topics and the model and needs a restart.
RUNTIME_PARAMETERS = ('task', 'seed', 'episode_seconds', 'real_time_factor')
# Late joiners (the collision guard, a status monitor) get the current scene and status at once.
_LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


@dataclass
class SimRobotParams:
    """All parameters of sim_robot_node (config/sim_robot.yaml mirrors these names)."""

    task: str = field(default='pick_place', metadata={'help': f'one of {ALL_TASKS}; applied at ~/reset'})
    seed: int = field(default=0, metadata={'help': 'layout seed of the episode; applied at ~/reset'})
    episode_seconds: float = field(default=0.0, metadata={
        'help': "episode time limit in sim seconds; 0 = the task's default; applied at ~/reset"})
    physics_hz: float = field(default=500.0, metadata={'help': 'physics steps per sim second (>= 200)'})
    real_time_factor: float = field(default=1.0, metadata={
        'help': 'sim seconds per wall second; > 1 runs faster when the CPU can; 0 = as fast as possible'})
    camera_width: int = 96
    camera_height: int = 96
    camera_rate_hz: float = 10.0
    wrist_camera: bool = field(default=False, metadata={'help': 'also render and publish the wrist camera'})
    joint_state_rate_hz: float = field(default=100.0, metadata={'help': '>= 50'})
    publish_clock: bool = field(default=True, metadata={'help': 'publish sim time on /clock'})
    clock_rate_hz: float = 100.0
    status_rate_hz: float = field(default=2.0, metadata={'help': 'wall-time rate of ~/task_status'})
    image_topic: str = '/camera/color/image_raw'
    wrist_image_topic: str = '/camera/wrist/image_raw'
    joint_states_topic: str = '/joint_states'
    command_topic: str = '/arm_controller/joint_trajectory'
    scene_topic: str = field(default='/collision_scene', metadata={
        'help': 'visualization_msgs/MarkerArray of the obstacles, latched, republished on reset (and at '
                'scene_rate_hz while an obstacle moves)'})
    scene_rate_hz: float = field(default=30.0, metadata={
        'help': 'sim-time rate of the scene markers in a dynamic task, as a perception node would publish'})
    status_topic: str = field(default='~/task_status', metadata={'help': 'std_msgs/String with JSON'})
    base_frame: str = field(default='panda_link0', metadata={'help': 'frame of the scene markers'})
    camera_frame: str = 'camera_color_optical_frame'
    wrist_camera_frame: str = 'wrist_camera_optical_frame'
    allow_partial_joints_goal: bool = field(default=True, metadata={
        'help': 'joints a command leaves out hold their current setpoint (false: reject such commands)'})
    max_command_lead_s: float = field(default=10.0, metadata={
        'help': 'reject commands stamped more than this ahead of sim time: such a stamp is almost always '
                'wall time from a publisher not on /clock, and would never start'})
    reset_settle_s: float = field(default=0.2, metadata={
        'help': 'ignore commands for this long (sim time) after a reset: a reset moves the arm at once, which '
                'no real arm does, and a command sent before the sender saw the new episode would drag the '
                'arm back to where the last episode ended'})

    def __post_init__(self) -> None:
        problems = []
        if self.task not in ALL_TASKS:
            problems.append(f'task {self.task!r} is not one of {list(ALL_TASKS)}')
        if not self.physics_hz >= 200:
            problems.append(f'physics_hz must be >= 200, got {self.physics_hz}')
        if not self.joint_state_rate_hz >= 50:
            problems.append(f'joint_state_rate_hz must be >= 50, got {self.joint_state_rate_hz}')
        if not self.reset_settle_s >= 0:
            problems.append(f'reset_settle_s must be >= 0, got {self.reset_settle_s}')
        for name in ('camera_rate_hz', 'clock_rate_hz', 'status_rate_hz', 'max_command_lead_s', 'scene_rate_hz'):
            if not getattr(self, name) > 0:
                problems.append(f'{name} must be > 0, got {getattr(self, name)}')
        if self.camera_width < 8 or self.camera_height < 8:
            problems.append(f'camera size {self.camera_width}x{self.camera_height} is below 8x8')
        if not (self.real_time_factor >= 0 and math.isfinite(self.real_time_factor)):
            problems.append(f'real_time_factor must be >= 0 (0 = unpaced), got {self.real_time_factor}')
        if not (self.episode_seconds >= 0 and math.isfinite(self.episode_seconds)):
            problems.append(f'episode_seconds must be >= 0 (0 = task default), got {self.episode_seconds}')
        if problems:
            raise ValueError(f'{NODE_NAME} parameters: ' + '; '.join(problems))

    def sim_config(self) -> SimConfig:
        return SimConfig(task=self.task, seed=self.seed, physics_hz=self.physics_hz,
                         camera_width=self.camera_width, camera_height=self.camera_height,
                         wrist_camera=self.wrist_camera, joint_state_hz=self.joint_state_rate_hz,
                         camera_hz=self.camera_rate_hz, episode_seconds=self.episode_seconds or None)


PARAMS = SimRobotParams  # what bring-up and the params-file test read


# ---------------------------------------------------------------------- pure helpers (tested directly)
_SCENE_COLORS = {'table': (0.62, 0.5, 0.38, 1.0)}
_DEFAULT_COLOR = (0.8, 0.2, 0.15, 1.0)


SCENE_MARKER_NS = 'sim_scene'


def scene_markers(objects: list[Any], frame_id: str, stamp: Any) -> MarkerArray:
    """Markers of scene objects (shape_msgs/SolidPrimitive sizes: box (x, y, z) full edges, sphere
    (radius,), cylinder (height, radius)); a DELETEALL of namespace SCENE_MARKER_NS first, so every array
    replaces the sim's scene and leaves markers other publishers added (another ns) in place.

    Each marker carries the object's name in `text`; poses are (x, y, z, qx, qy, qz, qw).
    """
    clear = Marker(ns=SCENE_MARKER_NS, action=Marker.DELETEALL)
    clear.header.frame_id = frame_id
    clear.header.stamp = stamp
    markers = [clear]
    for index, obj in enumerate(objects):
        marker = Marker(ns=SCENE_MARKER_NS, id=index, action=Marker.ADD, text=obj.name)
        marker.header.frame_id = frame_id
        marker.header.stamp = stamp
        size = [float(v) for v in obj.size]
        if obj.shape == 'box':
            marker.type = Marker.CUBE
            marker.scale.x, marker.scale.y, marker.scale.z = size[:3]
        elif obj.shape == 'sphere':
            marker.type = Marker.SPHERE
            marker.scale.x = marker.scale.y = marker.scale.z = 2.0 * size[0]
        elif obj.shape == 'cylinder':
            marker.type = Marker.CYLINDER
            height, radius = size[:2]
            marker.scale.x = marker.scale.y = 2.0 * radius
            marker.scale.z = height
        else:
            raise ValueError(f'scene object {obj.name!r}: shape {obj.shape!r} has no marker type '
                             f'(expected box, sphere or cylinder)')
        x, y, z, qx, qy, qz, qw = (float(v) for v in obj.pose)
        marker.pose.position.x, marker.pose.position.y, marker.pose.position.z = x, y, z
        o = marker.pose.orientation
        o.x, o.y, o.z, o.w = qx, qy, qz, qw
        c = marker.color
        c.r, c.g, c.b, c.a = _SCENE_COLORS.get(obj.name, _DEFAULT_COLOR)
        markers.append(marker)
    return MarkerArray(markers=markers)


def to_json_value(value: Any) -> Any:
    """numpy and non-finite floats made JSON-safe (NaN/inf become null: strict JSON has neither)."""
    if isinstance(value, dict):
        return {str(k): to_json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [to_json_value(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


@dataclass
class ParsedCommand:
    """A trajectory ready for `SimArm.command_trajectory`: every PANDA_JOINT, in that order."""
    points: np.ndarray  # (K, len(PANDA_JOINTS))
    time_from_start: np.ndarray  # (K,) seconds, strictly increasing, > 0
    stamp: float  # header stamp, seconds of sim time; 0 = start now


def parse_command(msg: JointTrajectory, current_setpoint: np.ndarray, allow_partial: bool,
                  min_first_time: float) -> ParsedCommand:
    """Check a JointTrajectory the way a joint_trajectory_controller does; raise MessageError saying why.

    Joints are matched by name; left-out joints hold `current_setpoint` when `allow_partial`. A first
    point due at time 0 (allowed by the controller: "jump there") is moved to `min_first_time`, one
    physics step, since the sim interpolates from the current setpoint.
    """
    sample = trajectory_to_sample(msg)  # empty, NaN, ragged, repeated names, non-increasing times
    unknown = [n for n in sample.names if n not in PANDA_JOINTS]
    if unknown:
        raise MessageError(f'JointTrajectory names unknown joints {unknown}; this robot has {list(PANDA_JOINTS)}')
    missing = [n for n in PANDA_JOINTS if n not in sample.names]
    if missing and not allow_partial:
        raise MessageError(f'JointTrajectory leaves out joints {missing} (allow_partial_joints_goal is false)')
    times = sample.times_from_start.copy()
    if times[0] < 0:
        raise MessageError(f'JointTrajectory point 0 has a negative time_from_start {times[0]:.4f} s')
    if times[0] == 0:
        times[0] = min(min_first_time, times[1] / 2) if len(times) > 1 else min_first_time
    points = np.tile(np.asarray(current_setpoint, dtype=np.float64), (len(times), 1))
    for column, name in enumerate(sample.names):
        points[:, PANDA_JOINTS.index(name)] = sample.points[:, column]
    return ParsedCommand(points, times, sample.stamp)


# ---------------------------------------------------------------------- the node
@dataclass
class _ResetRequest:
    task: str
    seed: int
    episode_seconds: float
    done: threading.Event = field(default_factory=threading.Event)
    error: str | None = None


class SimRobotNode(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self.params = declare_parameters(self, SimRobotParams)
        p = self.params
        self.arm = SimArm(p.sim_config())
        self.cameras = ('scene', 'wrist') if p.wrist_camera else ('scene',)
        self._lock = threading.Lock()  # guards the arm and the episode bookkeeping below
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._reset_request: _ResetRequest | None = None
        self._episode = 1
        self._offset_ns = 0  # /clock time of this episode's sim time 0
        self._clock_ns = 0  # /clock time of the latest physics state
        self._done_holding = False
        self._counts = {'commands_accepted': 0, 'commands_rejected': 0, 'commands_ignored_done': 0,
                        'commands_ignored_settling': 0}
        self._last_rejection = ''
        self._measured_rtf: float | None = None
        self._lag_resyncs = 0
        self._periods_ns = {'joint_state': self._period_ns(p.joint_state_rate_hz),
                            'image': self._period_ns(p.camera_rate_hz), 'scene': self._period_ns(p.scene_rate_hz)}
        if p.publish_clock:
            self._periods_ns['clock'] = self._period_ns(p.clock_rate_hz)
        self._next_due_ns = dict.fromkeys(self._periods_ns, 0)

        self._joint_pub = self.create_publisher(JointState, p.joint_states_topic, 10)
        self._image_pubs = {'scene': self.create_publisher(Image, p.image_topic, 5)}
        if p.wrist_camera:
            self._image_pubs['wrist'] = self.create_publisher(Image, p.wrist_image_topic, 5)
        self._camera_frames = {'scene': p.camera_frame, 'wrist': p.wrist_camera_frame}
        self._clock_pub = self.create_publisher(Clock, '/clock', 10) if p.publish_clock else None
        self._scene_pub = self.create_publisher(MarkerArray, p.scene_topic, _LATCHED)
        self._status_pub = self.create_publisher(String, p.status_topic, _LATCHED)
        self.create_subscription(JointTrajectory, p.command_topic, self._on_command, 10)
        self.create_service(Trigger, '~/reset', self._on_reset)
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name='sim_physics', daemon=True)
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            self.stop()
            raise RuntimeError(f'{NODE_NAME}: the simulator could not start: {self._start_error}') \
                from self._start_error
        self.get_logger().info(
            f'simulating {p.task} seed {p.seed}: physics {p.physics_hz:g} Hz, real-time factor '
            f'{p.real_time_factor:g}, joint states {p.joint_state_rate_hz:g} Hz on {p.joint_states_topic}, '
            f'cameras {list(self.cameras)} {p.camera_width}x{p.camera_height} at {p.camera_rate_hz:g} Hz, '
            f'commands on {p.command_topic}')

    @staticmethod
    def _period_ns(hz: float) -> int:
        return max(1, int(round(1e9 / hz)))

    # ------------------------------------------------------------------ parameters
    def _on_set_parameters(self, changes: list[Parameter]) -> SetParametersResult:
        """Validate changes through the dataclass (one set of rules); only RUNTIME_PARAMETERS may change."""
        ours = {f.name for f in dataclasses.fields(SimRobotParams)}
        updates = {}
        for param in changes:
            if param.name not in ours:
                continue  # use_sim_time and other rclpy-owned parameters
            if param.name not in RUNTIME_PARAMETERS:
                return SetParametersResult(successful=False, reason=(
                    f'{param.name} cannot change while {NODE_NAME} runs (only {list(RUNTIME_PARAMETERS)} '
                    f'can; restart the node for the others)'))
            updates[param.name] = param.value
        if not updates:
            return SetParametersResult(successful=True)
        try:
            for name in ('real_time_factor', 'episode_seconds'):  # doubles, declared with dynamic typing
                if name in updates:
                    if isinstance(updates[name], bool) or not isinstance(updates[name], (int, float)):
                        raise ValueError(f'{name} must be a number, got {updates[name]!r}')
                    updates[name] = float(updates[name])
            candidate = dataclasses.replace(self.params, **updates)
        except (TypeError, ValueError) as err:
            return SetParametersResult(successful=False, reason=str(err))
        self.params = candidate
        if 'real_time_factor' in updates:
            self._wake.set()  # the sim thread re-anchors its pacing on the new factor
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------ commands (executor thread)
    def _reject(self, reason: str) -> None:
        with self._lock:
            self._counts['commands_rejected'] += 1
            self._last_rejection = reason
        self.get_logger().warning(f'rejected trajectory: {reason}; the arm keeps its current command',
                                  throttle_duration_sec=2.0)

    def _on_command(self, msg: JointTrajectory) -> None:
        try:
            with self._lock:
                setpoint, _ = self.arm.setpoint()
                timestep = self.arm.timestep
            command = parse_command(msg, setpoint, self.params.allow_partial_joints_goal, timestep)
        except MessageError as err:
            self._reject(str(err))
            return
        except Exception as err:  # noqa: BLE001 - never crash on input
            self._reject(f'malformed JointTrajectory ({type(err).__name__}: {err})')
            return
        with self._lock:
            ignored = ''
            if self._done_holding:
                self._counts['commands_ignored_done'] += 1
                ignored = 'is done: holding until ~/reset'
            elif self._episode > 1 and self.arm.sim_time < self.params.reset_settle_s:
                self._counts['commands_ignored_settling'] += 1
                ignored = f'was reset {self.arm.sim_time:.3f} s ago (reset_settle_s {self.params.reset_settle_s:g})'
            else:
                reason = self._execute(command)
        if ignored:
            self.get_logger().info(f'episode {self._episode} {ignored}, command ignored', throttle_duration_sec=5.0)
        elif reason:
            self._reject(reason)

    def _execute(self, command: ParsedCommand) -> str:
        """Hand a parsed command to the arm (lock held); returns a rejection reason or ''."""
        now = self.arm.sim_time
        start = None
        if command.stamp != 0.0:
            start = command.stamp - self._offset_ns * 1e-9
            if start < 0:
                return (f'stamped {command.stamp:.3f} s, before this episode started at '
                        f'{self._offset_ns * 1e-9:.3f} s (a command for the previous episode?)')
            if start - now > self.params.max_command_lead_s:
                return (f'stamped {command.stamp:.3f} s, {start - now:.1f} s ahead of sim time '
                        f'{self._clock_ns * 1e-9:.3f} s: does the publisher run with use_sim_time?')
        try:
            self.arm.command_trajectory(PANDA_JOINTS, command.points, start_time=start,
                                        time_from_start=command.time_from_start)
        except ValueError as err:
            return str(err)
        self._counts['commands_accepted'] += 1
        return ''

    # ------------------------------------------------------------------ reset (service -> sim thread)
    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        p = self.params
        reset = _ResetRequest(p.task, p.seed, p.episode_seconds)
        self._reset_request = reset
        self._wake.set()
        if not reset.done.wait(timeout=60.0):
            response.success, response.message = False, 'reset timed out: the sim thread did not answer in 60 s'
        elif reset.error:
            response.success, response.message = False, reset.error
        else:
            response.success = True
            response.message = f'episode {self._episode}: task {reset.task} seed {reset.seed}'
        return response

    def _serve_reset(self) -> None:
        request, self._reset_request = self._reset_request, None
        if request is None:
            return
        with self._lock:
            previous = (self.arm.task, self.arm.seed, self.arm.cfg.episode_seconds)
            try:
                self.arm.cfg.episode_seconds = request.episode_seconds or None
                self.arm.reset(request.task, request.seed)
            except Exception as err:  # noqa: BLE001 - e.g. no IK solution for a seed's start pose
                request.error = f'reset to {request.task} seed {request.seed} failed: {err}'
                self.arm.cfg.episode_seconds = previous[2]
                self.arm.reset(previous[0], previous[1])
            self._offset_ns = self._clock_ns + self._period_ns(self.params.physics_hz)
            self._clock_ns = self._offset_ns
            self._episode += 1
            self._done_holding = False
            self._next_due_ns = dict.fromkeys(self._periods_ns, 0)
            self._last_rejection = ''
        if request.error:
            self.get_logger().error(request.error + f'; restarted {previous[0]} seed {previous[1]} instead')
        else:
            self.get_logger().info(f'reset: episode {self._episode}, task {request.task}, seed {request.seed}')
        self._publish_scene()
        self._publish_status()
        request.done.set()

    # ------------------------------------------------------------------ the sim thread
    def _run(self) -> None:
        try:
            for camera in self.cameras:
                self.arm.render(camera)  # the GL context is created (and stays) on this thread
        except BaseException as err:  # noqa: BLE001 - reported by the constructor
            self._start_error = err
            self.arm.close()
            self._started.set()
            return
        self._started.set()
        self._publish_scene()
        self._publish_status()
        try:
            self._loop()
        except Exception as err:  # noqa: BLE001
            if not (self._stop.is_set() or not rclpy.ok(context=self.context)):  # else: shutting down
                self.get_logger().fatal(f'sim thread stopped: {type(err).__name__}: {err}')
                raise
        finally:
            self.arm.close()  # the GL context can only be released on the thread it is current on

    def _loop(self) -> None:
        wall_anchor, sim_anchor, rtf = time.monotonic(), 0.0, self.params.real_time_factor
        status_due = time.monotonic() + 1.0 / self.params.status_rate_hz
        rtf_window = (time.monotonic(), self._clock_ns)
        while not self._stop.is_set():
            self._wake.clear()
            if self._reset_request is not None:
                self._serve_reset()
                wall_anchor, sim_anchor = time.monotonic(), 0.0
                continue
            if self.params.real_time_factor != rtf:
                wall_anchor, sim_anchor, rtf = time.monotonic(), self.arm.sim_time, self.params.real_time_factor
            now = time.monotonic()
            if now >= status_due:
                status_due = now + 1.0 / self.params.status_rate_hz
                wall0, clock0 = rtf_window
                rtf_window = (now, self._clock_ns)
                self._measured_rtf = (self._clock_ns - clock0) * 1e-9 / max(now - wall0, 1e-9)
                self._publish_status()
            due_ns = min(self._next_due_ns.values())
            target = due_ns * 1e-9
            deadline = wall_anchor + (target - sim_anchor) / rtf if rtf > 0 else now
            if deadline > now:
                self._wake.wait(min(deadline, status_due) - now)
                continue
            if now - deadline > 0.25:
                # The CPU cannot keep up: drop the backlog instead of bursting to catch up.
                wall_anchor, sim_anchor = now, target
                self._lag_resyncs += 1
            self._advance(due_ns)

    def _advance(self, due_ns: int) -> None:
        """Step physics to `due_ns` of episode time and publish whatever is due there."""
        joint_state = images = None
        clock = scene = False
        became_done = False
        with self._lock:
            self.arm.step_until(due_ns * 1e-9)
            stamp_ns = self._offset_ns + int(round(self.arm.sim_time * 1e9))
            self._clock_ns = stamp_ns
            if not self._done_holding and self.arm.task_status().done:
                self.arm.hold()  # like a controller whose goal was cancelled: stay where the setpoint is
                self._done_holding = became_done = True
            for name, period in self._periods_ns.items():
                if self._next_due_ns[name] != due_ns:
                    continue
                self._next_due_ns[name] += period
                if name == 'joint_state':
                    joint_state = self.arm.joint_state()
                elif name == 'image':
                    images = {camera: self.arm.render(camera) for camera in self.cameras}
                elif name == 'scene':
                    scene = self.arm.moving_obstacle is not None
                else:
                    clock = True
        stamp = seconds_to_stamp(stamp_ns * 1e-9)
        if clock:
            self._clock_pub.publish(Clock(clock=stamp))
        if joint_state is not None:
            names, positions, velocities = joint_state
            self._joint_pub.publish(make_joint_state(names, positions, velocities, stamp))
        if images is not None:
            for camera, rgb in images.items():
                self._image_pubs[camera].publish(make_image(rgb, stamp, self._camera_frames[camera]))
        if scene:
            self._publish_scene()
        if became_done:
            status = self.arm.task_status()
            self.get_logger().info(f'episode {self._episode} done: '
                                   f'{"success" if status.success else "time limit"}; holding until ~/reset')
            self._publish_status()

    # ------------------------------------------------------------------ outputs
    def status_dict(self) -> dict[str, Any]:
        with self._lock:
            status = self.arm.task_status()
            values = {
                'task': self.arm.task, 'seed': self.arm.seed, 'episode': self._episode,
                'sim_time': self._clock_ns * 1e-9, 'episode_time': self.arm.sim_time,
                'time_limit': self.arm.cfg.time_limit, 'success': status.success, 'done': status.done,
                'holding': self._done_holding, 'info': status.info, **self._counts,
                'last_rejection': self._last_rejection, 'real_time_factor': self._measured_rtf,
                'lag_resyncs': self._lag_resyncs,
            }
        return to_json_value(values)

    def _publish_status(self) -> None:
        self._status_pub.publish(String(data=json.dumps(self.status_dict())))

    def _publish_scene(self) -> None:
        with self._lock:
            objects = self.arm.scene_objects()
            stamp = seconds_to_stamp(self._clock_ns * 1e-9)
        self._scene_pub.publish(scene_markers(objects, self.params.base_frame, stamp))

    def stop(self) -> None:
        """Stop the sim thread, which frees the renderer on its way out (idempotent)."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)


def main(args: list[str] | None = None) -> int:
    apply_dds_profile()
    rclpy.init(args=args)
    try:
        node = SimRobotNode()
    except (ValueError, RuntimeError) as err:
        rclpy.logging.get_logger(NODE_NAME).fatal(str(err))
        rclpy.try_shutdown()
        return 1
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        stop_taking_signals()
        node.stop()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
