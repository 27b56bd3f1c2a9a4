"""`sim_robot_node`: the MuJoCo simulator (`diffusion_policy_ros.sim.SimArm`) as a ROS 2 robot.

It speaks what a real Panda driver stack speaks, so the policy node and the collision guard cannot
tell it from hardware: camera images (rgb8) and `/joint_states` stamped in sim time, `/clock`, a
`JointTrajectory` subscription executed like ros2_control's joint_trajectory_controller, and the
collision scene as a latched `MarkerArray`. `~/reset` (std_srvs/Trigger) starts a new episode with the
node's current `task` and `seed` parameters; `~/task_status` reports progress as JSON.

Pacing, the episode clock (`/clock` never goes back), command gating and resets are ROS-free, in
`diffusion_policy_ros.sim.paced.PacedSim`: physics, rendering and every publication of sensor data run
on its sim thread; the executor thread only parses commands and hands them over.
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field
from typing import Any

import rclpy
from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory
from visualization_msgs.msg import MarkerArray

from diffusion_policy_ros.nodes.lifecycle import init_node_process, spin_until_stopped, stop_taking_signals
from diffusion_policy_ros.nodes.messages import (MessageError, make_image, make_joint_state, parse_command,
                                                 scene_markers, seconds_to_stamp)
from diffusion_policy_ros.nodes.params import declare_parameters, refuse_unknown_parameters
from diffusion_policy_ros.robot_description import PANDA_JOINTS
from diffusion_policy_ros.sim.arm import SimArm, SimConfig
from diffusion_policy_ros.sim.model import ALL_TASKS
from diffusion_policy_ros.sim.paced import PacedSim, PacingConfig, SimOutputs

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


# ---------------------------------------------------------------------- the node
class SimRobotNode(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self.params = declare_parameters(self, SimRobotParams)
        refuse_unknown_parameters(self, SimRobotParams)
        p = self.params
        cameras = ('scene', 'wrist') if p.wrist_camera else ('scene',)
        rates = {'joint_state': p.joint_state_rate_hz, 'image': p.camera_rate_hz, 'scene': p.scene_rate_hz}
        if p.publish_clock:
            rates['clock'] = p.clock_rate_hz
        self._joint_pub = self.create_publisher(JointState, p.joint_states_topic, 10)
        self._image_pubs = {'scene': self.create_publisher(Image, p.image_topic, 5)}
        if p.wrist_camera:
            self._image_pubs['wrist'] = self.create_publisher(Image, p.wrist_image_topic, 5)
        self._camera_frames = {'scene': p.camera_frame, 'wrist': p.wrist_camera_frame}
        self._clock_pub = self.create_publisher(Clock, '/clock', 10) if p.publish_clock else None
        self._scene_pub = self.create_publisher(MarkerArray, p.scene_topic, _LATCHED)
        self._status_pub = self.create_publisher(String, p.status_topic, _LATCHED)
        self.sim = PacedSim(
            SimArm(p.sim_config()), cameras,
            PacingConfig(rates, p.real_time_factor, p.status_rate_hz, p.reset_settle_s, p.max_command_lead_s),
            on_outputs=self._publish_outputs, on_scene=self._publish_scene, on_status=self._publish_status,
            log=lambda level, text: getattr(self.get_logger(), level)(text),
            adapter_alive=lambda: rclpy.ok(context=self.context))
        try:
            self.sim.start()
        except RuntimeError as err:
            raise RuntimeError(f'{NODE_NAME}: {err}') from err
        self.create_subscription(JointTrajectory, p.command_topic, self._on_command, 10)
        self.create_service(Trigger, '~/reset', self._on_reset)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.get_logger().info(
            f'simulating {p.task} seed {p.seed}: physics {p.physics_hz:g} Hz, real-time factor '
            f'{p.real_time_factor:g}, joint states {p.joint_state_rate_hz:g} Hz on {p.joint_states_topic}, '
            f'cameras {list(cameras)} {p.camera_width}x{p.camera_height} at {p.camera_rate_hz:g} Hz, '
            f'commands on {p.command_topic}')

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
            self.sim.set_real_time_factor(candidate.real_time_factor)
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------ commands and resets (executor thread)
    def _on_command(self, msg: JointTrajectory) -> None:
        try:
            setpoint, timestep = self.sim.setpoint()
            command = parse_command(msg, setpoint, self.params.allow_partial_joints_goal, timestep)
            outcome, why = self.sim.command(PANDA_JOINTS, command.points, command.time_from_start, command.stamp)
        except MessageError as err:
            self.sim.reject(str(err))
            outcome, why = 'rejected', str(err)
        except Exception as err:  # noqa: BLE001 - never crash on input
            why = f'malformed JointTrajectory ({type(err).__name__}: {err})'
            self.sim.reject(why)
            outcome = 'rejected'
        if outcome == 'ignored':
            self.get_logger().info(f'{why}, command ignored', throttle_duration_sec=5.0)
        elif outcome == 'rejected':
            self.get_logger().warning(f'rejected trajectory: {why}; the arm keeps its current command',
                                      throttle_duration_sec=2.0)

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        p = self.params
        response.success, response.message = self.sim.request_reset(p.task, p.seed, p.episode_seconds)
        return response

    # ------------------------------------------------------------------ outputs (sim thread)
    def _publish_outputs(self, outputs: SimOutputs) -> None:
        stamp = seconds_to_stamp(outputs.stamp_ns * 1e-9)
        if outputs.clock:
            self._clock_pub.publish(Clock(clock=stamp))
        if outputs.joint_state is not None:
            names, positions, velocities = outputs.joint_state
            self._joint_pub.publish(make_joint_state(names, positions, velocities, stamp))
        for camera, rgb in (outputs.images or {}).items():
            self._image_pubs[camera].publish(make_image(rgb, stamp, self._camera_frames[camera]))
        if outputs.scene:
            self._publish_scene()

    def _publish_status(self) -> None:
        self._status_pub.publish(String(data=json.dumps(self.sim.status())))

    def _publish_scene(self) -> None:
        objects, clock_ns = self.sim.scene()
        self._scene_pub.publish(scene_markers(objects, self.params.base_frame, seconds_to_stamp(clock_ns * 1e-9)))

    def stop(self) -> None:
        """Stop the sim thread, which frees the renderer on its way out (idempotent)."""
        self.sim.stop()


def main(args: list[str] | None = None) -> int:
    init_node_process(args)
    try:
        node = SimRobotNode()
    except (ValueError, RuntimeError) as err:
        rclpy.logging.get_logger(NODE_NAME).fatal(str(err))
        rclpy.try_shutdown()
        return 1
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        spin_until_stopped(executor)
    finally:
        stop_taking_signals()
        node.stop()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
